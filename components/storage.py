"""`s3://` URIs: one parser shared by every S3 path of the platform.

Folders do not travel through here: stage outputs move between the flow and remote workers
through `components.run_store` (content-addressed, per file, sha256-verified, retried),
raw inputs are read by `components.ingest.sources` (s3fs / boto3), evaluation data by
`components.evaltasks.loaders`, MLflow artifacts through MLFLOW_S3_ENDPOINT_URL and DVC
through its own remote (`dvc remote modify NAME endpointurl URL`). Endpoint and credentials
follow boto3's conventions (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL /
AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION), so the same code talks to AWS, MinIO or moto.
"""

from __future__ import annotations

from components.errors import AmaliaError


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    if not uri.startswith("s3://"):
        raise AmaliaError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise AmaliaError(f"s3 URI without a bucket: {uri}")
    return bucket, key.strip("/")
