"""End to end: the whole retrain chain as a real Prefect flow with a real MLflow store.

Runs the `ci` profile on freshly generated data: validate (Great Expectations) ->
translate -> mix -> align -> sft -> dpo -> evaluate -> register, then `ask` through the
registry URI and a gated promotion. Minutes, not seconds: marked `e2e`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.stages import ORDER

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, prefect_server):
    """One full retrain shared by the tests of this module."""
    from components.data.synthetic import generate
    from components.settings import load_settings

    root = tmp_path_factory.mktemp("e2e")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "ci"
    params["base"]["data_dir"] = str(root / "data")
    params["base"]["runs_dir"] = str(root / "runs")
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))
    settings = load_settings(params_path=params_path)
    generate(root / "data", settings)

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with _in_store(uri, root):
        from flows.retrain import retrain_flow

        summary = retrain_flow(params_path=str(params_path), run_dir=str(root / "run"),
                               progress=False)
        yield {"root": root, "summary": summary, "uri": uri, "params": params_path}


@contextlib.contextmanager
def _in_store(uri: str, cwd: Path):
    """MLFLOW_TRACKING_URI = `uri` and the working directory `cwd` (MLflow's default
    artifact root ./mlruns lands there), both restored afterwards."""
    old_uri, old_cwd = os.environ.get("MLFLOW_TRACKING_URI"), Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def test_every_stage_left_a_manifest(retrained):
    run_dir = Path(retrained["summary"]["run_dir"])
    for stage in ORDER:
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage
        assert manifest["outputs"], f"{stage} wrote nothing"
        for rel, info in manifest["outputs"].items():
            assert (run_dir / stage / rel).stat().st_size == info["bytes"]


def test_validate_report_accounts_for_every_record(retrained):
    report = json.loads((Path(retrained["summary"]["run_dir"]) / "validate" / "report.json")
                        .read_text())
    assert report["total"] == report["kept"] + report["quarantined"]
    assert report["total"] > 0


def test_training_losses_fall_and_dpo_raises_margin(retrained):
    metrics = retrained["summary"]["metrics"]
    for stage in ("align", "sft", "dpo"):
        assert metrics[stage]["loss_last"] < metrics[stage]["loss_first"], stage
    assert metrics["dpo"]["margin_after"] > metrics["dpo"]["margin_before"]


def test_results_contract(retrained):
    results = json.loads((Path(retrained["summary"]["run_dir"]) / "evaluate" / "results.json")
                         .read_text())
    tasks = {k: v for k, v in results.items() if not k.startswith("_")}
    assert set(tasks) == {"count", "colour", "position", "chart", "document"}
    for r in tasks.values():
        assert set(r) == {"score", "chance", "n", "metric"}
        assert 0.0 <= r["score"] <= 1.0 and r["n"] > 0 and r["chance"] == pytest.approx(0.25)


def test_mlflow_parent_and_nested_stage_runs(retrained):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=retrained["uri"])
    parent_id = retrained["summary"]["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("dvc.data_md5") is None or parent.data.tags["dvc.data_md5"]
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.data.tags["amalia.stage"] for r in children) == sorted(ORDER)
    sft = next(r for r in children if r.data.tags["amalia.stage"] == "sft")
    assert "loss_last" in sft.data.metrics
    assert len(client.get_metric_history(sft.info.run_id, "loss")) > 1
    by_stage = {r.data.tags["amalia.stage"]: r.info.run_id for r in children}
    mix_files = {a.path for a in client.list_artifacts(by_stage["mix"])}
    assert {"mix_report.json", "mix_report.png"} <= mix_files
    gx_docs = {a.path for a in client.list_artifacts(by_stage["validate"], "gx_docs")}
    assert "gx_docs/index.html" in gx_docs
    eval_files = {a.path for a in client.list_artifacts(by_stage["evaluate"])}
    assert "results.png" in eval_files


def test_registered_challenger_and_ask_through_registry(retrained):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=retrained["uri"])
    version = client.get_model_version_by_alias("amalia-vl", "challenger")
    assert float(version.tags["eval.mean_score"]) >= 0.0

    image = next((retrained["root"] / "data" / "native" / "images").glob("colour-test-*.png"))
    proc = subprocess.run(
        [sys.executable, "-m", "amalia_vl", "ask", str(image), "De que cor é a forma?",
         "--model", "models:/amalia-vl@challenger"],
        capture_output=True, text=True, timeout=300, cwd=retrained["root"],
        env={**os.environ, "MLFLOW_TRACKING_URI": retrained["uri"],
             "AMALIA_PARAMS": str(retrained["params"])},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "empty answer"


def _retrain_again(retrained, run_name: str, **changes):
    """Another retrain on the same data into a new run dir (params with `changes`)."""
    from flows.retrain import retrain_flow

    params = yaml.safe_load(Path(retrained["params"]).read_text())
    for section, values in changes.items():
        params["base"].setdefault(section, {}).update(values)
    path = retrained["root"] / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    with _in_store(retrained["uri"], retrained["root"]):
        return retrain_flow(params_path=str(path), run_dir=str(retrained["root"] / run_name),
                            progress=False)


def test_an_unchanged_rerun_reuses_every_stage_and_a_changed_one_reruns_from_there(
        retrained):
    import time

    first = retrained["summary"]
    started = time.perf_counter()
    again = _retrain_again(retrained, "rerun")
    seconds = time.perf_counter() - started
    assert again["reused"] == sorted(ORDER), again["reused"]
    assert again["registration"]["version"] == first["registration"]["version"]
    rerun = Path(again["run_dir"])
    model = rerun / "dpo" / "model" / "model.safetensors"
    original = Path(first["run_dir"]) / "dpo" / "model" / "model.safetensors"
    assert model.stat().st_ino == original.stat().st_ino  # linked, not copied or retrained
    manifest = json.loads((rerun / "sft" / "manifest.json").read_text())
    assert manifest["cache"]["reused_from"] == str(Path(first["run_dir"]).resolve() / "sft")
    assert seconds < 120, f"an unchanged rerun took {seconds:.0f} s"

    # one DPO parameter changed: everything before dpo is reused, dpo onwards runs again
    # (another model name, so this module's registered versions stay as they were)
    changed = _retrain_again(retrained, "beta", dpo={"beta": 0.2},
                             register={"model_name": "amalia-vl-beta"})
    assert changed["reused"] == sorted(["validate", "translate", "mix", "align", "sft"])
    assert changed["registration"]["name"] == "amalia-vl-beta"
    assert not json.loads((Path(changed["run_dir"]) / "dpo" / "manifest.json").read_text()
                          ).get("cache")


def test_gated_promotion(retrained):
    from components.registry import promote

    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = retrained["uri"]
    try:
        first = promote("amalia-vl")
        assert first.promoted and "no champion" in first.reason
        again = promote("amalia-vl")
        assert not again.promoted and "already champion" in again.reason
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def test_prefect_recorded_the_flow_and_artifact(retrained):
    import asyncio

    from prefect.client.orchestration import get_client

    async def fetch():
        async with get_client() as client:
            runs = await client.read_flow_runs()
            arts = await client.read_artifacts()
            return runs, arts

    runs, artifacts = asyncio.run(fetch())
    assert any(r.state and r.state.is_completed() for r in runs)
    evaluations = [str(a.data) for a in artifacts if a.key == "amalia-vl-evaluation"]
    # the evaluation table links the MLflow parent run a person would open next
    assert any(retrained["summary"]["mlflow_parent_run_id"] in data for data in evaluations)

