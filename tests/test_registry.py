"""The promotion gate against a real (SQLite) MLflow registry: `champion` moves to the
`challenger` version only when its `eval.mean_score` tag is better."""

from __future__ import annotations

import pytest

from components.errors import MissingInputError

NAME = "amalia-vl-gate"


@pytest.fixture()
def registry(mlflow_uri, tmp_path):
    """A helper that adds a model version tagged with a score and points `challenger` at it."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    client.create_registered_model(NAME)
    payload = tmp_path / "weights.txt"
    payload.write_text("tiny")

    def add(score: float | None) -> str:
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(payload), artifact_path="model")
        version = client.create_model_version(NAME, f"runs:/{run.info.run_id}/model",
                                              run_id=run.info.run_id).version
        if score is not None:
            client.set_model_version_tag(NAME, version, "eval.mean_score", f"{score:.4f}")
        client.set_registered_model_alias(NAME, "challenger", version)
        return str(version)

    add.client = client
    return add


def champion_version(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_worse_challenger_is_not_promoted_and_better_one_is(registry):
    from components.registry import promote

    first = registry(0.60)
    assert promote(NAME).promoted
    assert champion_version(registry.client) == first

    registry(0.55)  # worse: champion stays
    decision = promote(NAME)
    assert not decision.promoted and "does not beat" in decision.reason
    assert champion_version(registry.client) == first

    better = registry(0.70)
    decision = promote(NAME)
    assert decision.promoted and decision.champion_version_before == first
    assert champion_version(registry.client) == better


def test_min_improvement_and_force(registry):
    from components.registry import promote

    registry(0.60)
    promote(NAME)
    slightly = registry(0.61)
    assert not promote(NAME, min_improvement=0.05).promoted
    assert promote(NAME, force=True).promoted
    assert champion_version(registry.client) == slightly


def test_challenger_without_score_is_refused(registry):
    from components.registry import promote

    first = registry(0.5)
    promote(NAME)
    registry(None)
    decision = promote(NAME)
    assert not decision.promoted and "no 'eval.mean_score' tag" in decision.reason
    assert champion_version(registry.client) == first


def test_no_challenger_is_a_clear_error(mlflow_uri):
    from components.registry import promote

    with pytest.raises(MissingInputError, match="no 'challenger' alias"):
        promote("never-registered")
