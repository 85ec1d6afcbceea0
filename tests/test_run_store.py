"""Stage outputs through S3 (components/run_store.py) on a real S3 API (moto server):
content-addressed upload, verified download, and one clear error when S3 is down."""

from __future__ import annotations

import socket

import boto3
import pytest

from components.errors import AmaliaError, MissingInputError
from components.manifest import write_manifest
from components.run_store import RunStore


def _stage(run, name, files):
    folder = run / name
    folder.mkdir(parents=True)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return write_manifest(folder, name, inputs={}, counts={}, metrics={},
                          config_digest="t", started="now")


@pytest.fixture
def store(s3_endpoint, tmp_path):
    bucket = f"runs-{tmp_path.name.replace('_', '-').lower()[:40]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return RunStore(f"s3://{bucket}/amalia", endpoint_url=s3_endpoint)


def test_a_stage_goes_up_once_by_content_and_comes_back_verified(store, tmp_path):
    run = tmp_path / "here" / "r1"
    _stage(run, "sft", {"model/weights.bin": "w" * 1000, "metrics.json": "{}",
                        "copy.json": "{}"})
    first = store.push_stage(run, "sft")
    assert first["uploaded"] == 2 and first["skipped"] == 1  # two files share one content
    assert store.push_stage(run, "sft") == {"uploaded": 0, "skipped": 3, "bytes": 0}
    assert store.has_stage("r1", "sft") and not store.has_stage("r1", "dpo")

    there = tmp_path / "worker" / "r1"
    manifest = store.pull_stage(there, "sft")
    assert (there / "sft" / "model" / "weights.bin").read_text() == "w" * 1000
    assert (there / "sft" / "manifest.json").exists()
    assert set(manifest["outputs"]) == {"model/weights.bin", "metrics.json", "copy.json"}


def test_a_corrupt_object_or_a_missing_stage_is_an_error_not_a_wrong_input(store, tmp_path):
    run = tmp_path / "r2"
    manifest = _stage(run, "mix", {"shard.parquet": "rows"})
    store.push_stage(run, "mix")
    sha = manifest["outputs"]["shard.parquet"]["sha256"]
    store.client.put_object(Bucket=store.bucket, Key=store.object_key(sha), Body=b"tampered")
    with pytest.raises(AmaliaError, match="does not match its sha256"):
        store.pull_stage(tmp_path / "elsewhere" / "r2", "mix")
    assert not (tmp_path / "elsewhere" / "r2" / "mix" / "shard.parquet").exists()
    with pytest.raises(MissingInputError, match="stage 'dpo' of run 'r2' is not there"):
        store.pull_stage(tmp_path / "elsewhere" / "r2", "dpo")
    with pytest.raises(MissingInputError, match="has not finished"):
        store.push_stage(run, "dpo")


def test_s3_down_is_one_clear_error_after_retries(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    store = RunStore("s3://bucket/x", endpoint_url=f"http://127.0.0.1:{port}", attempts=2)
    run = tmp_path / "r3"
    _stage(run, "validate", {"report.json": "{}"})
    with pytest.raises(AmaliaError) as err:
        store.push_stage(run, "validate")
    assert f"127.0.0.1:{port}" in err.value.message and "2 attempts" in err.value.message
