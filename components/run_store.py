"""Stage outputs through S3, content-addressed: how a stage that runs on another machine
(a GPU pool worker) gets its inputs and hands back its outputs, with no shared disk.

Layout under the store URL (`s3://bucket/prefix`):

- `objects/<sha256[:2]>/<sha256>`: every output file once, by content (the sha256 the
  stage manifest already records), so an unchanged file (a reused stage, a model that
  did not move) is never uploaded twice;
- `runs/<run name>/<stage>/manifest.json`: the stage's manifest (its `outputs` map each
  relative path to its sha256), uploaded LAST, so a stage is either complete in the store
  or absent.

`push_stage` uploads what the store lacks, then the manifest; `pull_stage` downloads a
stage into a local run directory and verifies every file's sha256 (a corrupt download is
an error, never a silently wrong input). The client retries transient failures (boto3's
standard retry mode, `S3_ATTEMPTS` attempts); an endpoint still unreachable after that
is one `AmaliaError` naming the endpoint and the setting to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import AmaliaError, MissingInputError
from components.manifest import MANIFEST, sha256_file
from components.storage import parse_s3_uri

S3_ATTEMPTS = 5


def _client(endpoint_url: str | None, attempts: int = S3_ATTEMPTS):
    import os

    import boto3
    from botocore.config import Config

    endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    config = Config(retries={"max_attempts": attempts, "mode": "standard"},
                    connect_timeout=5, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint, config=config,
                        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


@dataclass
class RunStore:
    """A run store at `url` (`s3://bucket/prefix`); `endpoint_url` for MinIO / moto."""

    url: str
    endpoint_url: str | None = None
    attempts: int = S3_ATTEMPTS

    def __post_init__(self):
        self.bucket, self.prefix = parse_s3_uri(self.url)
        self.client = _client(self.endpoint_url, self.attempts)

    # -- keys

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def object_key(self, sha: str) -> str:
        return self._key("objects", sha[:2], sha)

    def manifest_key(self, run: str, stage: str) -> str:
        return self._key("runs", run, stage, MANIFEST)

    # -- calls, with one clear error when the endpoint is down

    def _call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        try:
            return fn(*args, **kwargs)
        except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
            where = self.client.meta.endpoint_url
            raise AmaliaError(
                f"run store {self.url}: cannot reach S3 at {where} to {what} after "
                f"{self.attempts} attempts ({type(exc).__name__})",
                "start the S3 endpoint or fix AWS_ENDPOINT_URL_S3 / the run store URL") \
                from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(what) from None
            if code == "NoSuchBucket":
                raise AmaliaError(f"run store {self.url}: bucket {self.bucket} does not exist",
                                  f"create it (aws s3 mb s3://{self.bucket})") from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or code in ("InternalError", "ServiceUnavailable", "SlowDown"):
                where = self.client.meta.endpoint_url
                raise AmaliaError(
                    f"run store {self.url}: S3 at {where} kept failing to {what} after "
                    f"{self.attempts} attempts (HTTP {status or code})",
                    "retry when the S3 endpoint is healthy; nothing was marked finished") \
                    from None
            raise

    def _exists(self, key: str) -> bool:
        try:
            self._call(f"read {key}", self.client.head_object, Bucket=self.bucket, Key=key)
            return True
        except KeyError:
            return False

    # -- stages

    def push_stage(self, run_dir: Path, stage: str) -> dict[str, Any]:
        """Upload `<run_dir>/<stage>` (finished: it has its manifest); returns
        {"uploaded": n, "skipped": n (already in the store), "bytes": uploaded bytes}."""
        folder = Path(run_dir) / stage
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            raise MissingInputError(f"stage '{stage}' has not finished in {run_dir}",
                                    f"run: amalia-vl stage {stage} --run-dir {run_dir}")
        manifest = json.loads(manifest_path.read_text())
        uploaded = skipped = size = 0
        for rel, meta in manifest.get("outputs", {}).items():
            key = self.object_key(meta["sha256"])
            if self._exists(key):
                skipped += 1
                continue
            self._call(f"upload {rel}", self.client.upload_file, str(folder / rel),
                       self.bucket, key)
            uploaded += 1
            size += int(meta.get("bytes", 0))
        self._call(f"upload the {stage} manifest", self.client.put_object, Bucket=self.bucket,
                   Key=self.manifest_key(Path(run_dir).name, stage),
                   Body=manifest_path.read_bytes())
        return {"uploaded": uploaded, "skipped": skipped, "bytes": size}

    def has_stage(self, run: str, stage: str) -> bool:
        return self._exists(self.manifest_key(run, stage))

    def pull_stage(self, run_dir: Path, stage: str, run: str | None = None) -> dict[str, Any]:
        """Download stage `stage` of run `run` (default: `run_dir`'s name) into
        `<run_dir>/<stage>`, every file checked against its sha256; returns its manifest."""
        run = run or Path(run_dir).name
        key = self.manifest_key(run, stage)
        try:
            body = self._call(f"read {key}", self.client.get_object, Bucket=self.bucket,
                              Key=key)["Body"].read()
        except KeyError:
            raise MissingInputError(f"run store {self.url}: stage '{stage}' of run '{run}' "
                                    "is not there", f"push it first (or run {stage})") from None
        manifest = json.loads(body)
        folder = Path(run_dir) / stage
        folder.mkdir(parents=True, exist_ok=True)
        for rel, meta in manifest.get("outputs", {}).items():
            target = folder / rel
            if target.is_file() and sha256_file(target) == meta["sha256"]:
                continue  # already here (a local earlier copy)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._call(f"download {rel}", self.client.download_file, self.bucket,
                           self.object_key(meta["sha256"]), str(target))
            except KeyError:
                raise AmaliaError(f"run store {self.url}: object {meta['sha256']} of "
                                  f"{stage}/{rel} is missing", f"push {stage} again") from None
            if sha256_file(target) != meta["sha256"]:
                target.unlink()
                raise AmaliaError(f"run store {self.url}: {stage}/{rel} does not match its "
                                  "sha256 after download", "push the stage again")
        (folder / MANIFEST).write_bytes(body)
        return manifest
