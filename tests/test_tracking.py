"""A stage run through the shared tracked path lands in a real MLflow store: params,
counts, metrics, manifest, artifacts and the DVC hash of the raw data as a dataset input."""

from __future__ import annotations

import mlflow

from components.data.synthetic import generate
from components.pipeline import run_tracked_stage, stages_from
from components.settings import load_settings


def test_validate_stage_is_tracked_with_dvc_input(tmp_path, mlflow_uri):
    (tmp_path / "data.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  nfiles: 3\n  path: data\n")
    settings = load_settings("ci", overrides={
        "data_dir": str(tmp_path / "data"),
        "synthetic": {"train_per_task": 4, "test_per_task": 2, "seed_en_per_kind": 2}})
    generate(tmp_path / "data", settings)

    manifest = run_tracked_stage("validate", settings, tmp_path / "run", progress=False)

    run = mlflow.MlflowClient(mlflow_uri).get_run(manifest["mlflow_run_id"])
    assert run.data.tags["amalia.stage"] == "validate"
    assert run.data.tags["dvc.data_md5"] == "0123456789abcdef0123456789abcdef.dir"
    assert run.data.metrics["count.total"] == manifest["counts"]["total"] > 0
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest.startswith("0123456789abcdef")
    artifacts = {a.path for a in mlflow.MlflowClient(mlflow_uri).list_artifacts(run.info.run_id)}
    assert {"manifest.json", "report.json", "quarantine.jsonl"} <= artifacts


def test_stages_from_slices_the_chain():
    assert stages_from("sft", "evaluate") == ["sft", "dpo", "evaluate"]
    assert stages_from()[0] == "validate" and stages_from()[-1] == "register"


def _inputs(client, run_id: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """`name -> (digest, context, input tags)` of a run's dataset inputs."""
    out = {}
    for di in client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        out[di.dataset.name] = (di.dataset.digest, tags.get("mlflow.data.context"), tags)
    return out


def test_stage_runs_record_the_upstream_outputs_they_read(tmp_path, mlflow_uri):
    """Each nested stage run logs `<stage>-outputs` inputs with the manifests' digests."""
    from components.manifest import write_manifest
    from components.tracking import parent_run, stage_run

    run_dir = tmp_path / "run"
    digests = {}
    for stage in ("validate", "translate"):
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / "part.jsonl").write_text(f'{{"stage": "{stage}"}}\n')
        digests[stage] = write_manifest(run_dir / stage, stage, inputs={}, counts={},
                                        metrics={}, config_digest="c", started="t")[
            "outputs_digest"]
    settings = load_settings("ci", overrides={"data_dir": str(tmp_path / "data")})
    client = mlflow.MlflowClient(mlflow_uri)
    with parent_run(settings, run_dir) as parent_id:
        with stage_run(settings, "mix", run_dir, parent_id) as tracked:
            pass
    run = client.get_run(tracked.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent_id
    inputs = _inputs(client, tracked.run_id)
    assert set(inputs) == {"validate-outputs", "translate-outputs"}
    for stage, digest in digests.items():
        logged, context, tags = inputs[f"{stage}-outputs"]
        assert (logged, context) == (digest[:36], "upstream")
        assert tags["outputs_digest"] == digest == run.data.tags[f"amalia.input.{stage}"]


def test_validate_with_input_sources_records_the_specs_not_data_dvc(tmp_path, mlflow_uri):
    """`--input` sources are what validate read: each spec is logged (digest of the spec);
    the data.dvc md5 is not (it describes the default data dir, unused here)."""
    import hashlib

    from components.tracking import stage_run

    (tmp_path / "data.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  nfiles: 3\n  path: data\n")
    (tmp_path / "data").mkdir()
    specs = [f"llava:{tmp_path}/llava.json?source=l", "hf://HuggingFaceM4/FineVision?config=ai2d",
             "s3://bucket/ocr/shard-000.parquet"]
    settings = load_settings("ci", overrides={"data_dir": str(tmp_path / "data"),
                                              "ingest": {"inputs": specs}})
    client = mlflow.MlflowClient(mlflow_uri)
    with stage_run(settings, "validate", tmp_path / "run") as tracked:
        pass
    inputs = _inputs(client, tracked.run_id)
    assert set(inputs) == set(specs)
    for spec in specs:
        digest = hashlib.sha256(spec.encode()).hexdigest()
        assert inputs[spec][:2] == (digest[:36], "input")
        assert inputs[spec][2]["spec_sha256"] == digest
    assert "dvc.data_md5" not in client.get_run(tracked.run_id).data.tags
    # the default data dir (the folder data.dvc tracks): its md5, as before
    default = load_settings("ci", overrides={"data_dir": str(tmp_path / "data")})
    with stage_run(default, "validate", tmp_path / "run") as tracked:
        pass
    assert [(d, c) for d, c, _ in _inputs(client, tracked.run_id).values()] == [
        ("0123456789abcdef0123456789abcdef.dir"[:36], "raw-data")]


def test_a_killed_attempts_run_is_ended_when_the_stage_is_redone(tmp_path, mlflow_uri):
    """A stage killed mid-run leaves its MLflow run RUNNING; the next attempt on the same
    run directory marks it KILLED, and touches no other stage's or run directory's run."""
    from components.tracking import configure, stage_run

    (tmp_path / "data").mkdir()
    settings = load_settings("ci", overrides={"data_dir": str(tmp_path / "data")})
    run_dir = tmp_path / "run"
    client = mlflow.MlflowClient(mlflow_uri)
    exp = configure(settings.tracking.experiment)

    def abandoned(stage: str, where) -> str:  # what a SIGKILL leaves: never terminated
        return client.create_run(exp, tags={"amalia.stage": stage,
                                            "amalia.run_dir": str(where)}).info.run_id

    killed = abandoned("validate", run_dir)
    other_stage = abandoned("mix", run_dir)
    other_dir = abandoned("validate", tmp_path / "elsewhere")
    with stage_run(settings, "validate", run_dir) as tracked:
        assert client.get_run(tracked.run_id).info.status == "RUNNING"
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(other_stage).info.status == "RUNNING"
    assert client.get_run(other_dir).info.status == "RUNNING"
    assert client.get_run(tracked.run_id).info.status == "FINISHED"
