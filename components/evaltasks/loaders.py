"""Load a task's documents: hub dataset, local parquet/JSON, S3, or the run's own eval set.

`load_docs(spec, ...)` returns a sized iterable of dict rows (a `datasets.Dataset` or a
list), decoded lazily by `datasets`, so a 5 000-image benchmark is never held in memory at
once. A dataset that cannot be reached (offline hub, missing file, unknown split, no
credentials) raises `TaskUnavailable` with the reason in one line: the harness reports the
task as skipped instead of failing the whole evaluation.

Locations (`dataset.path`, or `settings.evaluate.datasets[task]` which overrides it):
- a hub id (`amalia-llm/ChartQA-PT`): `datasets.load_dataset(id, name, split=split)`;
- a local folder (e.g. a downloaded hub snapshot): `datasets.load_dataset(folder, ...)`,
  which finds the split files by name;
- a local `.parquet` / `.jsonl` / `.json` file, or an `s3://` file or prefix: read with
  the `parquet` / `json` builder (S3 through fsspec/s3fs; endpoint from
  `ingest.s3_endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL);
- `run_mix`: `<run>/mix/<file>` records of `task_family` (the embedded held-out set).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.evaltasks.spec import TaskSpec


class TaskUnavailable(AmaliaError):
    """The task's dataset cannot be read here; the message is the reason."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def location_kind(path: str, declared: str = "auto") -> str:
    """`hub`, `folder`, `parquet` or `json` for a dataset location (`declared` wins unless
    it is `auto`; a declared `hub` id that is a local folder reads as a folder)."""
    if declared in ("parquet", "json"):
        return declared
    if declared == "hub":
        return "folder" if Path(path).is_dir() else "hub"
    lower = path.lower()
    if lower.endswith((".jsonl", ".json")):
        return "json"
    if lower.endswith(".parquet") or lower.startswith("s3://"):
        return "parquet"
    return "folder" if Path(path).is_dir() else "hub"


def _s3_download(uri: str, kind: str, target: Path, endpoint: str | None) -> Path:
    """Copy the `s3://` file or every `kind` file under the prefix into `target`."""
    import s3fs

    ep = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": ep} if ep else {})
    key = uri[len("s3://"):].rstrip("/")
    suffixes = (".parquet",) if kind == "parquet" else (".jsonl", ".json")
    files = [key] if fs.isfile(key) else sorted(
        f for f in fs.find(key) if f.endswith(suffixes))
    if not files:
        raise FileNotFoundError(f"no {kind} files at {uri}")
    local = target / key
    for f in files:
        dest = target / f
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get(f, str(dest))
    return local


def load_docs(
    spec: TaskSpec,
    *,
    location: str | None = None,
    run_dir: Path | None = None,
    limit: int | None = None,
    s3_endpoint: str | None = None,
    download_dir: Path | None = None,
) -> Sequence[dict[str, Any]]:
    """The documents of `spec` (at most `limit`); `TaskUnavailable` if unreachable.
    `s3://` data is copied to `download_dir` (default: a new temporary folder) first, so
    the hub's offline switches do not block our own bucket."""
    ds = spec.dataset
    if ds.kind == "run_mix" and location is None:
        return _run_mix_docs(spec, run_dir, limit)
    path = location or ds.path or ""
    kind = location_kind(path, "auto" if location else ds.kind)
    split = f"{ds.split}[:{limit}]" if limit else ds.split
    import datasets

    try:
        if path.startswith("s3://"):
            target = Path(download_dir or tempfile.mkdtemp(prefix="amalia-eval-s3-"))
            local = _s3_download(path, kind, target, s3_endpoint)
            files = str(local) if local.is_file() else [
                str(p) for p in sorted(local.rglob("*")) if p.is_file()]
            data = datasets.load_dataset(kind, data_files={ds.split: files}, split=split)
        elif kind in ("hub", "folder"):
            data = datasets.load_dataset(path, ds.name, split=split, revision=ds.revision)
        else:
            data = datasets.load_dataset(kind, data_files={ds.split: path}, split=split)
    except Exception as exc:  # datasets raises many types; the reason is what matters here
        where = path + (f" [{ds.name}]" if ds.name else "") + f" split {ds.split}"
        raise TaskUnavailable(f"dataset {where} not reachable: {_first_line(exc)}") from None
    return data


def _run_mix_docs(spec: TaskSpec, run_dir: Path | None,
                  limit: int | None) -> list[dict[str, Any]]:
    from components.records import read_records

    if run_dir is None:
        raise TaskUnavailable("run_mix task outside a run (no run directory given)")
    path = Path(run_dir) / "mix" / spec.dataset.file
    if not path.exists():
        raise TaskUnavailable(f"{path} not found (run the mix stage first)")
    family = spec.dataset.task_family
    docs = [r.model_dump(exclude_none=True) for r in read_records(path)
            if family is None or r.task_family == family]
    if not docs:
        raise TaskUnavailable(f"no '{family}' records in {path}")
    return docs[:limit] if limit else docs
