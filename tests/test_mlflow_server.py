"""A real `mlflow server` as the pipeline's registry: artifacts proxied to S3 (a moto
server), metadata in SQLite or in a real PostgreSQL (`postgres_server` in conftest).

For each backend a tiny LlavaNext is registered by the real `log_and_register` through
`MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`, then: the version, its tags and the
`challenger` alias are in the server's registry (and in its backend database), every file of
the save_pretrained folder is an object in the bucket (and nothing was written to local
disk: the client has no S3 endpoint at all, so it can only go through the server's
`mlflow-artifacts:` proxy), `resolve_model_dir("models:/NAME@challenger")` downloads the
folder back byte for byte, and `mlflow.pyfunc.load_model` answers a photo like the folder
itself does. Servers and PostgreSQL are stopped (whole process groups) in teardown.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import servers
from tests.test_serving import QUESTION, make_photo
from tests.train_helpers import REPO, SMALL_MODEL

NAME = "amalia-vl-server"
PREFIX = "mlartifacts"
START_TIMEOUT_S = 180.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """One tiny save_pretrained folder, registered against each backend."""
    from components.model.build import build_tiny_model, save_model
    from components.settings import load_settings

    settings = load_settings("tiny", REPO / "params.yaml", overrides={"model": SMALL_MODEL})
    model, processor = build_tiny_model(settings, [QUESTION, "Uma casa e o sol.",
                                                   "céu azul"] * 4)
    return save_model(model, processor, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> str:
    """The server's `--backend-store-uri`: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return request.getfixturevalue("postgres_db")


@pytest.fixture()
def mlflow_server(backend, s3_endpoint, tmp_path, monkeypatch) -> Iterator[dict]:
    """`mlflow server` on a free port of 127.0.0.1 with `backend` and
    `--artifacts-destination s3://BUCKET/mlartifacts` (a fresh bucket on the moto server);
    this process then tracks to it over HTTP only (no S3 endpoint of its own)."""
    import boto3
    import mlflow

    bucket = f"mlflow-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cwd = tmp_path / "server"
    cwd.mkdir()
    log_path = tmp_path / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(port), "--backend-store-uri", backend, "--artifacts-destination",
             f"s3://{bucket}/{PREFIX}", "--workers", "1"],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # own group: teardown ends the workers too
    previous_uri = mlflow.get_tracking_uri()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not servers.healthy("mlflow", url):
            assert proc.poll() is None, f"mlflow server exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, \
                f"mlflow server not healthy in {START_TIMEOUT_S:.0f} s: " \
                f"{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        client_dir = tmp_path / "client"
        client_dir.mkdir()
        monkeypatch.chdir(client_dir)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)  # only the server has S3
        mlflow.set_tracking_uri(url)
        mlflow.set_experiment(f"server-{uuid.uuid4().hex[:6]}")
        yield {"url": url, "bucket": bucket, "s3": s3, "backend": backend, "cwd": cwd,
               "client_dir": client_dir, "log": log_path}
    finally:
        servers._kill_group(proc.pid)
        proc.wait(timeout=10)
        mlflow.set_tracking_uri(previous_uri)


def _backend_versions(backend: str) -> set[tuple[str, int]]:
    """(name, version) rows of the backend database's `model_versions` table, read
    directly (not through the server)."""
    query = "SELECT name, version FROM model_versions"
    if backend.startswith("sqlite:///"):
        with sqlite3.connect(backend[len("sqlite:///"):]) as conn:
            return {(n, int(v)) for n, v in conn.execute(query)}
    import psycopg2

    conn = psycopg2.connect(backend.replace("postgresql+psycopg2://", "postgresql://", 1))
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return {(n, int(v)) for n, v in cur.fetchall()}
    finally:
        conn.close()


def _local_artifact_dirs(*roots: Path) -> list[Path]:
    """Folders MLflow writes when artifacts go to local disk instead of the proxy."""
    return [p for root in roots for name in ("mlartifacts", "mlruns") for p in root.rglob(name)]


def test_register_resolve_and_serve_through_a_real_server(mlflow_server, model_dir,
                                                          backend) -> None:
    import mlflow
    from mlflow import MlflowClient

    from components.inference import ask
    from components.registry import TAG_STATUS, log_and_register, resolve_model_dir

    with mlflow.start_run(run_name="register-server") as run:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        reg = log_and_register(model_dir, NAME, "challenger", {"test.backend": backend[:10]},
                               sample_scores={"format": 1, "model": "dpo", "tasks": {},
                                              "scores": []})

    # the registry on the server: version, tags and alias
    client = MlflowClient(tracking_uri=mlflow_server["url"])
    version = client.get_model_version(NAME, reg["version"])
    assert version.tags[TAG_STATUS] == "complete"
    assert version.tags["test.backend"] == backend[:10]
    assert client.get_model_version_by_alias(NAME, "challenger").version == version.version
    assert (NAME, int(reg["version"])) in _backend_versions(backend)

    # every file of the folder is an S3 object of the same size; nothing on local disk
    s3, bucket = mlflow_server["s3"], mlflow_server["bucket"]
    objects = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{PREFIX}/") for o in page.get("Contents", [])}
    assert any(key.endswith("/MLmodel") for key in objects), sorted(objects)
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    for path in files:
        rel = f"/{model_dir.name}/{path.relative_to(model_dir).as_posix()}"
        sizes = [size for key, size in objects.items() if key.endswith(rel)]
        assert sizes == [path.stat().st_size], (rel, sorted(objects))
    assert any(key.endswith("/eval/sample_scores.json") for key in objects)
    assert not _local_artifact_dirs(mlflow_server["cwd"], mlflow_server["client_dir"])

    # downloaded back through the server, byte for byte
    local = resolve_model_dir(f"models:/{NAME}@challenger")
    for path in files:
        assert (local / path.relative_to(model_dir)).read_bytes() == path.read_bytes()

    # the pyfunc loaded through the server answers a photo like the folder itself
    photo = make_photo(mlflow_server["client_dir"] / "photo.jpg")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    answers = pyfunc.predict([{"image": str(photo), "question": QUESTION}])
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert answers == [ask(model_dir, photo, QUESTION, max_new_tokens=16)]
    assert not _local_artifact_dirs(mlflow_server["cwd"], mlflow_server["client_dir"])
