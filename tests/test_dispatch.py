"""Training stages dispatched to another worker with their data through S3
(components/dispatch.py) on a real S3 API (moto): the worker sees only what the store
holds, the flow gets back exactly what the worker wrote, and the cache remembers it."""

from __future__ import annotations

import json

import boto3

from components import stage_cache
from components.dispatch import after_dispatch, before_dispatch, run_from_store
from components.settings import load_settings
from tests.train_helpers import make_mix, overrides


def test_a_stage_runs_from_the_store_and_comes_back_verified(tmp_path, s3_endpoint,
                                                            monkeypatch):
    bucket = "dispatch-test"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data, run = make_mix(tmp_path / "flow", n=8)
    settings = load_settings("tiny", overrides={
        **overrides(data, align={"epochs": 1, "global_batch_size": 4}),
        "orchestration": {"training_deployment": "amalia-vl-stage-remote/{stage}-gpu",
                          "run_store": f"s3://{bucket}/runs", "s3_endpoint_url": s3_endpoint}})
    pushed = before_dispatch("align", settings, run)
    assert set(pushed) == {"mix"} and pushed["mix"]["uploaded"] > 0

    work = tmp_path / "worker"  # the worker's own disk: nothing of `run` is visible there
    work.mkdir()
    manifest = run_from_store("align", settings, run.name, work_dir=work)
    assert manifest["counts"]["train_samples"] == 8 and manifest["mlflow_run_id"]
    assert list(work.iterdir()) == []  # the local copy is gone once pushed
    assert not (run / "align").exists()  # the flow's run dir was never written by it

    key = stage_cache.stage_key("align", settings, run)
    back = after_dispatch("align", settings, run, key)
    assert back["outputs_digest"] == manifest["outputs_digest"]
    assert back["mlflow_run_id"] == manifest["mlflow_run_id"]
    assert (run / "align" / "model" / "config.json").exists()
    saved = json.loads((run / "align" / "manifest.json").read_text())
    assert saved["outputs_digest"] == manifest["outputs_digest"]
    hit = stage_cache.lookup("align", key, run)
    assert hit is not None and hit.mlflow_run_id == manifest["mlflow_run_id"]
