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
