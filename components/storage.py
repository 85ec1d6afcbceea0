"""S3 storage through boto3: parse `s3://` URIs, upload and download folders.

Endpoint and credentials follow boto3's own conventions (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION), so the
same code talks to AWS, MinIO or a local moto server. MLflow artifacts reach S3 through
MLFLOW_S3_ENDPOINT_URL and DVC through `dvc remote modify NAME endpointurl URL`.
"""

from __future__ import annotations

import os
from pathlib import Path

from components.errors import AmaliaError


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    if not uri.startswith("s3://"):
        raise AmaliaError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise AmaliaError(f"s3 URI without a bucket: {uri}")
    return bucket, key.strip("/")


def s3_client(endpoint_url: str | None = None):
    import boto3

    endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    return boto3.client("s3", endpoint_url=endpoint,
                        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def upload_dir(local: Path, uri: str, endpoint_url: str | None = None) -> int:
    """Upload every file under `local` to `uri` (multipart for large files); returns count."""
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(endpoint_url)
    n = 0
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix, path.relative_to(local).as_posix()]))
        client.upload_file(str(path), bucket, key)
        n += 1
    return n


def download_dir(uri: str, local: Path, endpoint_url: str | None = None) -> int:
    """Download every object under `uri` into `local`; returns count."""
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(endpoint_url)
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/") if prefix else obj["Key"]
            target = Path(local) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
            n += 1
    if n == 0:
        raise AmaliaError(f"nothing found under {uri}")
    return n
