"""Run directories and stage manifests.

A run directory holds one sub-directory per stage (`<run-dir>/<stage>/`). Each finished
stage leaves `manifest.json`: its inputs (the manifests of the stages it read, by hash),
its outputs (relative path -> sha256 and size), counts, the config digest and the code
version. A stage whose manifest is present is complete; later stages check for it. The
manifest is the last thing a stage writes, and it is written atomically (a temporary file
renamed into place), so a stage killed at any moment leaves either no manifest or a whole
one; `read_manifest` also refuses one whose listed outputs are missing or changed in size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from components.errors import MissingInputError

MANIFEST = "manifest.json"


def new_run_dir(runs_dir: Path) -> Path:
    """A fresh, timestamped run directory under `runs_dir` (not yet created)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = runs_dir / stamp
    n = 1
    while path.exists():
        path = runs_dir / f"{stamp}-{n}"
        n += 1
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, dict[str, Any]]:
    """`relative path -> {sha256, bytes}` for every file under `root`, sorted."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def tree_digest(files: dict[str, dict[str, Any]]) -> str:
    blob = json.dumps({k: v["sha256"] for k, v in files.items()}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def code_version() -> str:
    """Package version plus the git commit (and `-dirty`) when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("amalia-vl")
    except PackageNotFoundError:
        pkg = "0+unknown"
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return f"{pkg}+g{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return pkg


def write_manifest(
    stage_dir: Path,
    stage: str,
    *,
    inputs: dict[str, str],
    counts: dict[str, int],
    metrics: dict[str, float],
    config_digest: str,
    started: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash the stage's outputs and write `<stage_dir>/manifest.json`; returns it."""
    files = hash_tree(stage_dir)
    manifest = {
        "stage": stage,
        "started": started,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": inputs,
        "outputs": files,
        "outputs_digest": tree_digest(files),
        "counts": counts,
        "metrics": metrics,
        "config_digest": config_digest,
        "code_version": code_version(),
        **(extra or {}),
    }
    _write_atomic(stage_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _write_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary file, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_manifest_file(stage_dir: Path, manifest: dict[str, Any]) -> None:
    """Rewrite `<stage_dir>/manifest.json` with `manifest` (e.g. with the MLflow run id
    added after the stage finished; the outputs it lists are unchanged)."""
    _write_atomic(Path(stage_dir) / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))


def read_manifest(run_dir: Path, stage: str, needed_by: str | None = None) -> dict[str, Any]:
    """The manifest of a finished stage, or a `MissingInputError` naming the fix."""
    path = run_dir / stage / MANIFEST
    if not path.exists():
        who = f" (needed by '{needed_by}')" if needed_by else ""
        raise MissingInputError(
            f"stage '{stage}' has not run in {run_dir}{who}",
            f"run: amalia-vl stage {stage} --run-dir {run_dir}",
        )
    rerun = f"run: amalia-vl stage {stage} --run-dir {run_dir}"
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MissingInputError(f"manifest of stage '{stage}' in {run_dir} is unreadable "
                                f"({exc})", rerun) from None
    stage_dir = path.parent
    for rel, meta in manifest.get("outputs", {}).items():
        out = stage_dir / rel
        if not out.is_file() or out.stat().st_size != meta.get("bytes"):
            raise MissingInputError(
                f"stage '{stage}' in {run_dir} is incomplete: {rel} is "
                f"{'missing' if not out.is_file() else 'not the size its manifest lists'}",
                rerun)
    return manifest
