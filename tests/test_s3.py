"""S3 paths against a real S3 API served locally (moto server on 127.0.0.1):
DVC push/pull through an S3 remote, MLflow artifacts on S3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3

from components.storage import parse_s3_uri

BIN = Path(sys.executable).parent


def make_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


def test_parse_s3_uri():
    assert parse_s3_uri("s3://b/x/y/") == ("b", "x/y")
    assert parse_s3_uri("s3://b") == ("b", "")


def _run(*cmd: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"


def test_dvc_push_wipe_pull_is_byte_identical(tmp_path, s3_endpoint):
    make_bucket(s3_endpoint, "dvc-remote")
    repo = tmp_path / "repo"
    data = repo / "data"
    (data / "images").mkdir(parents=True)
    for i in range(5):
        (data / "images" / f"{i}.bin").write_bytes(os.urandom(2048 + i))
    (data / "records.jsonl").write_text('{"id": "1"}\n')
    originals = {p.relative_to(repo): p.read_bytes() for p in data.rglob("*") if p.is_file()}

    _run("git", "init", "-q", cwd=repo)
    _run("dvc", "init", "-q", cwd=repo)
    _run("dvc", "remote", "add", "-d", "s3", "s3://dvc-remote/store", cwd=repo)
    _run("dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint, cwd=repo)
    _run("dvc", "add", "-q", "data", cwd=repo)
    _run("dvc", "push", "-q", cwd=repo)

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _run("dvc", "pull", "-q", cwd=repo)
    restored = {p.relative_to(repo): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert restored == originals


def test_mlflow_artifacts_land_on_s3(tmp_path, s3_endpoint, monkeypatch):
    import mlflow

    make_bucket(s3_endpoint, "mlflow-artifacts")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = mlflow.create_experiment("s3-test",
                                      artifact_location="s3://mlflow-artifacts/experiments")
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_dict({"ok": True}, "report.json")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="mlflow-artifacts")["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/report.json") for k in keys), keys
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.json",
                                                dst_path=str(tmp_path / "dl"))
    assert Path(local).read_text().strip().startswith("{")
