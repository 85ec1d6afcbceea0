"""Storage faults: the S3 endpoint returning 500s, slow, dying mid-upload or down, during
stage output sync (the run store), `dvc push` / `dvc pull` and MLflow artifact logging.

Every case runs against the real moto S3 server behind `FaultyProxy` (127.0.0.1 only):
transient faults are retried with back-off and the operation completes; a persistent fault
ends in one clear error naming the endpoint, and leaves nothing that looks finished (no
stage manifest in the run store, no registered model version, no alias).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from components.errors import AmaliaError, MissingInputError
from components.run_store import RunStore
from tests.reliability.faulty_s3 import FaultyProxy

BIN = Path(sys.executable).parent


@pytest.fixture()
def proxy(s3_endpoint):
    p = FaultyProxy(s3_endpoint)
    yield p
    try:
        p.stop()
    except OSError:
        pass


def _bucket(endpoint: str) -> str:
    name = f"faults-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def _stage(run: Path, name: str, files: dict[str, bytes]) -> None:
    from components.manifest import write_manifest

    stage = run / name
    stage.mkdir(parents=True)
    for rel, data in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    write_manifest(stage, name, inputs={}, counts={"n": len(files)}, metrics={},
                   config_digest="x", started="now")


FILES = {f"part-{i}.bin": os.urandom(4096 + i) for i in range(6)}


# --------------------------------------------------------------------------- run store

def test_run_store_retries_500s_then_completes(proxy, s3_endpoint, tmp_path):
    store = RunStore(f"s3://{_bucket(s3_endpoint)}/runs", endpoint_url=proxy.url)
    run = tmp_path / "r1"
    _stage(run, "validate", FILES)
    proxy.fail_next(3)
    store.push_stage(run, "validate")
    assert proxy.failed == 3  # the faults happened, and were retried through
    back = tmp_path / "back" / "r1"
    proxy.fail_next(2)
    store.pull_stage(back, "validate", run="r1")
    for rel, data in FILES.items():
        assert (back / "validate" / rel).read_bytes() == data, rel
    assert proxy.failed == 5


def test_run_store_slow_endpoint_completes(proxy, s3_endpoint, tmp_path):
    store = RunStore(f"s3://{_bucket(s3_endpoint)}/runs", endpoint_url=proxy.url)
    run = tmp_path / "r2"
    _stage(run, "mix", FILES)
    proxy.delay(0.3)
    t0 = time.monotonic()
    store.push_stage(run, "mix")
    assert time.monotonic() - t0 >= 0.3 * len(FILES)  # every upload waited
    assert store.has_stage("r2", "mix")


def test_endpoint_dying_mid_upload_leaves_no_stage_in_the_store(proxy, s3_endpoint, tmp_path):
    store = RunStore(f"s3://{_bucket(s3_endpoint)}/runs", endpoint_url=proxy.url, attempts=3)
    run = tmp_path / "r3"
    _stage(run, "sft", FILES)
    proxy.fail_after(4)  # a few objects go up, then every request fails
    with pytest.raises(AmaliaError) as err:
        store.push_stage(run, "sft")
    message = str(err.value)
    assert proxy.url.split("//")[1] in message and "\n" not in message.strip()
    proxy.heal()
    assert proxy.requests > 4  # it did get part of the way
    assert not store.has_stage("r3", "sft")  # the manifest goes last: nothing looks done
    with pytest.raises(MissingInputError):
        store.pull_stage(tmp_path / "elsewhere" / "r3", "sft", run="r3")
    store.push_stage(run, "sft")  # once healthy, the same push completes
    assert store.has_stage("r3", "sft")


def test_endpoint_down_is_one_clear_error(proxy, s3_endpoint, tmp_path):
    store = RunStore(f"s3://{_bucket(s3_endpoint)}/runs", endpoint_url=proxy.url, attempts=2)
    run = tmp_path / "r4"
    _stage(run, "dpo", FILES)
    proxy.stop()
    with pytest.raises(AmaliaError) as err:
        store.push_stage(run, "dpo")
    assert proxy.url.split("//")[1] in err.value.message
    assert "2 attempts" in err.value.message


# ------------------------------------------------------------------------------- DVC

def _dvc(*args: str, cwd: Path, check: bool = True,
         attempts: int | None = None) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `cwd`; `attempts` caps botocore's tries (a doomed call ends sooner)."""
    env = {**os.environ, **({"AWS_MAX_ATTEMPTS": str(attempts)} if attempts else {})}
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)
    if check:
        assert proc.returncode == 0, f"dvc {args}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture()
def dvc_repo(proxy, s3_endpoint, tmp_path):
    """A git + DVC repo tracking `data/` (FILES), its S3 remote behind `proxy`."""
    bucket = _bucket(s3_endpoint)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for rel, blob in FILES.items():
        (repo / "data" / rel).write_bytes(blob)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc("init", "-q", cwd=repo)
    _dvc("remote", "add", "-d", "s3", f"s3://{bucket}/store", cwd=repo)
    _dvc("remote", "modify", "s3", "endpointurl", proxy.url, cwd=repo)
    _dvc("config", "--local", "core.site_cache_dir", str(tmp_path / "site"), cwd=repo)
    _dvc("add", "-q", "data", cwd=repo)
    return repo


def _checkout(repo: Path, target: Path) -> Path:
    """A second checkout of `repo` (its DVC files, no data, no cache, own site cache)."""
    shutil.copytree(repo, target, ignore=shutil.ignore_patterns("cache", "tmp", "data"))
    _dvc("config", "--local", "core.site_cache_dir", str(target.parent / f"{target.name}-site"),
         cwd=target)
    return target


def test_dvc_push_fails_clearly_then_survives_500s(proxy, dvc_repo, tmp_path):
    proxy.fail_always()
    failed = _dvc("push", cwd=dvc_repo, check=False, attempts=2)
    assert failed.returncode != 0
    assert "reached max retries" in failed.stderr + failed.stdout
    proxy.heal()

    proxy.fail_next(3)
    _dvc("push", "-q", cwd=dvc_repo)
    assert proxy.failed >= 3 + 1  # the failed push's and these three
    clean = _checkout(dvc_repo, tmp_path / "clean")
    _dvc("pull", "-q", cwd=clean)  # healthy endpoint: what the retried push stored is whole
    assert {p.name: p.read_bytes() for p in (clean / "data").iterdir()} == FILES


def test_dvc_pull_against_a_failing_endpoint_is_a_clear_error(proxy, dvc_repo, tmp_path):
    _dvc("push", "-q", cwd=dvc_repo)
    clean = _checkout(dvc_repo, tmp_path / "clean")
    proxy.fail_always()
    failed = _dvc("pull", cwd=clean, check=False, attempts=2)
    assert failed.returncode != 0
    assert "reached max retries" in failed.stderr + failed.stdout
    assert not (clean / "data").exists() or not any((clean / "data").rglob("*.bin"))


def test_dvc_pull_survives_transient_500s(proxy, dvc_repo, tmp_path):
    _dvc("push", "-q", cwd=dvc_repo)
    clean = _checkout(dvc_repo, tmp_path / "clean")
    proxy.fail_next(3)
    _dvc("pull", "-q", cwd=clean)
    assert {p.name: p.read_bytes() for p in (clean / "data").iterdir()} == FILES


# ---------------------------------------------------------------------------- MLflow

def test_failed_artifact_upload_registers_no_version_and_sets_no_alias(proxy, s3_endpoint,
                                                                       tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from components.model.build import build_tiny_model, save_model
    from components.registry import log_and_register
    from components.settings import load_settings
    from tests.train_helpers import REPO, SMALL_MODEL

    settings = load_settings("tiny", REPO / "params.yaml", overrides={"model": SMALL_MODEL})
    model, processor = build_tiny_model(settings, ["Um círculo vermelho.", "De que cor é?"] * 4)
    model_dir = save_model(model, processor, tmp_path / "model")

    bucket = _bucket(s3_endpoint)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # keep the doomed upload short
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("faults", artifact_location=f"s3://{bucket}/mlflow")
    name = "amalia-vl-faults"
    proxy.fail_always()
    with mlflow.start_run(experiment_id=exp), pytest.raises(AmaliaError) as err:
        log_and_register(model_dir, name, "challenger", {"eval.mean_score": "0.5"})
    assert "no version was registered" in err.value.message
    assert "\n" not in err.value.message and proxy.failed > 0
    proxy.heal()
    client = MlflowClient(tracking_uri=uri)
    assert client.search_model_versions(f"name='{name}'") == []  # nothing registered

    # the same call once the store is back registers a complete, aliased version
    with mlflow.start_run(experiment_id=exp):
        reg = log_and_register(model_dir, name, "challenger", {"eval.mean_score": "0.5"})
    aliased = client.get_model_version_by_alias(name, "challenger")
    assert str(aliased.version) == str(reg["version"])
