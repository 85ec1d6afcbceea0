"""Where inputs live and how their bytes are read: local disk, S3 (fsspec/s3fs for listing
and streaming files, boto3 for single objects) and the Hugging Face hub (`datasets`).

Endpoints and credentials follow boto3's conventions (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_DEFAULT_REGION), or
`settings.ingest.s3_endpoint_url`, so the same code reads AWS, MinIO or a local moto server.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import IO, Any

from components.errors import AmaliaError, MissingInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def endpoint_url(explicit: str | None = None) -> str | None:
    return (explicit or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


_FS: dict[str | None, Any] = {}
_CLIENTS: dict[tuple[int, str | None], Any] = {}


def s3_filesystem(endpoint: str | None = None):
    """An s3fs filesystem (one per endpoint and process)."""
    ep = endpoint_url(endpoint)
    if ep not in _FS:
        import s3fs

        _FS[ep] = s3fs.S3FileSystem(client_kwargs={"endpoint_url": ep} if ep else {},
                                    skip_instance_cache=True)
    return _FS[ep]


def s3_client(endpoint: str | None = None):
    """A boto3 S3 client, one per process (safe to use after a fork)."""
    ep = endpoint_url(endpoint)
    key = (os.getpid(), ep)
    if key not in _CLIENTS:
        import boto3

        _CLIENTS[key] = boto3.client(
            "s3", endpoint_url=ep, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return _CLIENTS[key]


def join(root: str, rel: str) -> str:
    """`rel` under `root` (a local folder or an s3:// prefix)."""
    if is_s3(root):
        return posixpath.join(root.rstrip("/"), rel)
    return str(Path(root) / rel)


def parent(uri: str) -> str:
    if is_s3(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).parent)


def exists_dir(uri: str, endpoint: str | None = None) -> bool:
    if is_s3(uri):
        return s3_filesystem(endpoint).isdir(uri)
    return Path(uri).is_dir()


def exists(uri: str, endpoint: str | None = None) -> bool:
    if is_s3(uri):
        return s3_filesystem(endpoint).exists(uri)
    return Path(uri).exists()


def open_binary(uri: str, endpoint: str | None = None) -> IO[bytes]:
    """A readable, seekable binary file (local, or s3 through s3fs)."""
    try:
        if is_s3(uri):
            return s3_filesystem(endpoint).open(uri, "rb")
        return Path(uri).open("rb")
    except FileNotFoundError:
        raise MissingInputError(f"input {uri} not found") from None


def open_text(uri: str, endpoint: str | None = None) -> IO[str]:
    import io

    return io.TextIOWrapper(open_binary(uri, endpoint), encoding="utf-8", errors="replace")


def list_files(uri: str, suffixes: tuple[str, ...], endpoint: str | None = None) -> list[str]:
    """Files under a folder or s3 prefix whose names end in `suffixes`, sorted."""
    if is_s3(uri):
        fs = s3_filesystem(endpoint)
        found = ["s3://" + k for k in fs.find(uri.rstrip("/"))]
    else:
        found = [str(p) for p in Path(uri).rglob("*") if p.is_file()]
    return sorted(f for f in found if f.lower().endswith(suffixes))


def read_bytes(uri: str, endpoint: str | None = None) -> bytes:
    """The bytes of one object or file; `FileNotFoundError` if absent."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        from components.storage import parse_s3_uri

        bucket, key = parse_s3_uri(uri)
        try:
            return s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise FileNotFoundError(uri) from None
            raise OSError(f"{uri}: {code or exc}") from None
    return Path(uri).read_bytes()


def read_text_maybe(uri: str, endpoint: str | None = None) -> str | None:
    try:
        return read_bytes(uri, endpoint).decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return None


def require(uri: str, endpoint: str | None = None) -> None:
    if not exists(uri, endpoint):
        raise MissingInputError(f"input {uri} not found")


def fail(display: str, line: int | None, why: str) -> AmaliaError:
    from components.redact import redact

    where = f"{display}:{line}" if line is not None else display
    return AmaliaError(redact(f"{where}: {why}"))
