"""Cross-run stage cache: a retrain whose stage inputs did not change reuses that stage's
finished outputs (and its MLflow run) instead of running it again.

A stage's **key** is the sha256 of:

- the stage name and the code version: a digest of every source file of the project
  (`components/`, `flows/`, `amalia_vl/`, task YAMLs included), so any code change
  re-runs everything;
- the settings that can affect it: every section except those of later stages
  (`LATER_SECTIONS`: changing `dpo.beta` re-runs dpo, evaluate and register, not
  validate) and except logging-only fields;
- the `outputs_digest` of each upstream stage in this run directory (so a stage whose
  upstream changed misses, and so does everything after it);
- for validate, the fingerprint of its data: every file under `data_dir` and every local
  `ingest.inputs` path by (relative path, size, mtime); remote inputs (s3://, hf://) by
  their URI only: version them by URI, or run with `--no-cache`;
- for evaluate, the champion's version (its report compares the candidate with it).

The index lives beside the run directories (`<runs>/.stage-cache/<stage>-<key>.json`: the
finished stage folder and its MLflow run id), written only after the stage's manifest (the
last file a stage writes), so a stage that crashed half-way is never an entry. A hit is
used only when the recorded folder still holds its manifest and every output file with
its recorded size and sha256; it is then materialised into the new run directory with
hard links (a copy across file systems), its manifest marked
`"cache": {"reused_from", "key", "mlflow_run_id"}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from components.manifest import MANIFEST, read_manifest, sha256_file, write_manifest_file
from components.settings import Settings

INDEX = ".stage-cache"
SOURCE_DIRS = ("components", "flows", "amalia_vl")
REPO = Path(__file__).resolve().parent.parent
# sections of params.yaml owned by stages AFTER the key's stage (they cannot affect it)
_AFTER = {
    "validate": ("translate", "mix", "model", "train", "align", "sft", "dpo", "evaluate",
                 "register"),
    "translate": ("mix", "model", "train", "align", "sft", "dpo", "evaluate", "register"),
    "mix": ("model", "train", "align", "sft", "dpo", "evaluate", "register"),
    "align": ("sft", "dpo", "evaluate", "register"),
    "sft": ("dpo", "evaluate", "register"),
    "dpo": ("evaluate", "register"),
    "evaluate": ("register",),
    "register": (),
}
LATER_SECTIONS = _AFTER
# fields that change how a stage runs or reports, not what it produces
_REPORTING = {
    "train": {"logging_steps", "dataloader_workers", "ddp_timeout_s"},
    "validate": {"workers", "start_method", "shards", "task_runner", "dask_workers"},
    "translate": {"shards", "task_runner", "dask_workers"},
}


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the project's source files (path + bytes), computed once per process."""
    h = hashlib.sha256()
    for top in SOURCE_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(str(path.relative_to(REPO)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _fingerprint(root: Path) -> list[tuple[str, int, int]]:
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = path.stat()
            out.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def data_fingerprint(settings: Settings) -> dict[str, Any]:
    """What validate reads: the data folder and local ingest inputs by (path, size, mtime),
    remote inputs by URI."""
    out: dict[str, Any] = {}
    data_dir = Path(settings.data_dir)
    if data_dir.exists():
        out["data_dir"] = hashlib.sha256(json.dumps(_fingerprint(data_dir)).encode()
                                         ).hexdigest()
    from components.ingest import parse_spec

    for text in settings.ingest.inputs:
        try:
            location = parse_spec(text).location
        except Exception:  # noqa: BLE001 - an unparsable spec fails in validate itself
            location = text
        local = Path(location)
        out[text] = hashlib.sha256(json.dumps(_fingerprint(local)).encode()).hexdigest() \
            if "://" not in location and local.exists() else location
    return out


def stage_key(name: str, settings: Settings, run_dir: Path) -> str:
    """The cache key of stage `name` in `run_dir` (see the module docstring); raises
    `MissingInputError` when an upstream stage has no manifest there."""
    from components.stages import get_spec

    dump = settings.model_dump(mode="json", by_alias=True)
    for section in _AFTER[name]:
        dump.pop(section, None)
    for section, fields in _REPORTING.items():
        for f in fields:
            (dump.get(section) or {}).pop(f, None)
    if name != "register":  # only register writes to the tracking server
        dump.pop("tracking", None)
    dump.pop("orchestration", None)  # where a stage runs, not what it produces
    upstream = {req: read_manifest(run_dir, req, needed_by=name)["outputs_digest"]
                for req in get_spec(name).requires}
    blob = {"stage": name, "code": code_digest(), "settings": dump, "upstream": upstream}
    if name == "validate":
        blob["data"] = data_fingerprint(settings)
    if name == "evaluate":  # its report compares with the champion of the moment
        blob["champion"] = _champion(settings)
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _champion(settings: Settings) -> str | None:
    from components.registry import alias_version

    try:
        version = alias_version(settings.register_.model_name,
                                settings.evaluate.champion_alias)
    except Exception:  # noqa: BLE001 - no tracking server: no champion to compare with
        return None
    return str(version.version) if version is not None else None


def index_dir(run_dir: Path) -> Path:
    return Path(run_dir).resolve().parent / INDEX


@dataclass(frozen=True)
class Hit:
    stage_dir: Path
    mlflow_run_id: str | None
    key: str


def lookup(name: str, key: str, run_dir: Path) -> Hit | None:
    """The recorded finished stage for `key`, if its folder is still intact."""
    entry = index_dir(run_dir) / f"{name}-{key}.json"
    if not entry.exists():
        return None
    try:
        record = json.loads(entry.read_text())
        stage_dir = Path(record["stage_dir"])
        manifest = json.loads((stage_dir / MANIFEST).read_text())
    except (OSError, ValueError, KeyError):
        return None
    for rel, meta in (manifest.get("outputs") or {}).items():
        path = stage_dir / rel
        if not path.is_file() or path.stat().st_size != meta.get("bytes") \
                or sha256_file(path) != meta.get("sha256"):
            return None
    return Hit(stage_dir, record.get("mlflow_run_id"), key)


def record(name: str, key: str, run_dir: Path, mlflow_run_id: str | None) -> None:
    """Remember `<run_dir>/<name>` (finished: its manifest is written) under `key`."""
    folder = index_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / f"{name}-{key}.json"
    tmp = entry.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"stage": name, "key": key,
                               "stage_dir": str((Path(run_dir) / name).resolve()),
                               "mlflow_run_id": mlflow_run_id}))
    tmp.replace(entry)


def materialise(hit: Hit, name: str, run_dir: Path) -> dict[str, Any]:
    """`hit`'s folder as `<run_dir>/<name>` (hard links; copies across file systems) with
    its manifest marked as reused; returns that manifest."""
    target = Path(run_dir) / name
    if target.resolve() != hit.stage_dir.resolve():
        if target.exists():
            shutil.rmtree(target)
        for src in sorted(hit.stage_dir.rglob("*")):
            dst = target / src.relative_to(hit.stage_dir)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name == MANIFEST:
                continue
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    manifest = json.loads((hit.stage_dir / MANIFEST).read_text())
    manifest["cache"] = {"reused_from": str(hit.stage_dir), "key": hit.key,
                         "mlflow_run_id": hit.mlflow_run_id}
    target.mkdir(parents=True, exist_ok=True)
    write_manifest_file(target, manifest)  # atomically, and last
    return manifest
