"""Checkpoints of a training stage: sealed when complete, verified before a resume.

The Trainer writes `<stage>/checkpoints/checkpoint-<step>/` (model, optimizer, scheduler,
RNG states, `trainer_state.json` with the data position and the per-step log). Once all
of it is on disk, `SealCheckpoint` (rank 0, after a barrier) adds `amalia_checkpoint.json`:
the stage's config digest, the step, and the size and sha256 of every file.

`resume_point(folder, digest)` picks the newest sealed checkpoint and proves it whole:

- an unsealed checkpoint-N (the process died while writing it) is skipped with a warning;
  the sealed one before it is used, and nothing is deleted;
- a sealed one whose files are missing, truncated or changed raises `CheckpointError`
  naming the file and the fix (delete that folder to resume from the previous one, or
  `--restart`); earlier checkpoints stay untouched;
- a checkpoint sealed under another config digest is refused (`CheckpointError`), never
  silently reused: resuming someone else's optimizer state is a wrong model.

`mlflow_run_id` / `remember_mlflow_run` keep the stage's MLflow run id beside the
checkpoints, so a resumed stage continues the same MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from components.errors import AmaliaError

log = logging.getLogger(__name__)

SEAL = "amalia_checkpoint.json"
MLFLOW_RUN = "mlflow_run.json"
PATTERN = re.compile(r"^checkpoint-(\d+)$")
FULL_HASH_LIMIT = 1 << 30  # files above 1 GiB: size + hash of the first and last 16 MiB


class CheckpointError(AmaliaError):
    """A checkpoint cannot be resumed from (corrupt, or from another config)."""


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int


def _digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= FULL_HASH_LIMIT:
            while block := fh.read(1 << 20):
                h.update(block)
        else:
            h.update(fh.read(16 << 20))
            fh.seek(size - (16 << 20))
            h.update(fh.read())
    return h.hexdigest()


def file_table(folder: Path) -> dict[str, dict[str, int | str]]:
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}


def seal(folder: Path, config_digest: str, step: int) -> None:
    """Mark `folder` complete: digest, step and every file's size and hash."""
    record = {"config_digest": config_digest, "step": step, "files": file_table(folder)}
    tmp = folder / (SEAL + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / SEAL)  # atomic: a seal is either whole or absent


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every `checkpoint-N` folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := PATTERN.match(p.name))]
    return sorted(found)


def verify(path: Path, config_digest: str, previous: Path | None) -> int:
    """The step of sealed checkpoint `path`, or `CheckpointError` (see the module doc)."""
    try:
        record = json.loads((path / SEAL).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint seal {path / SEAL} is unreadable ({exc})",
                              _fix(path, previous)) from None
    if record.get("config_digest") != config_digest:
        raise CheckpointError(
            f"checkpoints in {path.parent} were made by another configuration (digest "
            f"{record.get('config_digest')}, this run {config_digest}): resuming them "
            "would continue a different training",
            "re-run with --restart to discard them, or restore the params.yaml/inputs they "
            "were made with",
        )
    for rel, meta in record.get("files", {}).items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing", _fix(path, previous))
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt ({size} bytes, {meta['bytes']} when "
                "saved: truncated?)", _fix(path, previous))
        if _digest(file) != meta["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt (content changed since "
                                  "it was saved)", _fix(path, previous))
    return int(record["step"])


def _fix(path: Path, previous: Path | None) -> str:
    if previous is not None:
        return f"delete {path} to resume from {previous.name}, or re-run with --restart"
    return f"delete {path} (or re-run with --restart) to start the stage afresh"


def resume_point(folder: Path, config_digest: str) -> ResumePoint | None:
    """The newest sealed, verified checkpoint under `folder`, or None to start afresh."""
    found = checkpoints(folder)
    sealed = [(s, p) for s, p in found if (p / SEAL).exists()]
    for step, path in found:
        if not (path / SEAL).exists() and (not sealed or step > sealed[-1][0]):
            log.warning("checkpoint %s is incomplete (no %s: the process stopped while "
                        "saving it); resuming from the one before", path, SEAL)
    if not sealed:
        return None
    step, path = sealed[-1]
    previous = sealed[-2][1] if len(sealed) > 1 else None
    return ResumePoint(path, verify(path, config_digest, previous))


def discard(folder: Path) -> None:
    """Remove every checkpoint (and the remembered MLflow run) of a stage."""
    shutil.rmtree(folder, ignore_errors=True)


def remember_mlflow_run(folder: Path, run_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MLFLOW_RUN).write_text(json.dumps({"run_id": run_id}))


def mlflow_run_id(folder: Path) -> str | None:
    """The MLflow run of the stage whose checkpoints are in `folder`, when resumable."""
    path = folder / MLFLOW_RUN
    if not path.exists() or not any((p / SEAL).exists() for _, p in checkpoints(folder)):
        return None
    try:
        run_id = json.loads(path.read_text())["run_id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return run_id if isinstance(run_id, str) else None


class SealCheckpoint(TrainerCallback):
    """Seal each checkpoint once every rank has written its part of it."""

    def __init__(self, config_digest: str):
        self.config_digest = config_digest

    def on_save(self, args, state, control, **kwargs):
        from components.train.distributed import world

        ws = world()
        ws.barrier()  # DeepSpeed ranks write their own optimizer shards
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                seal(folder, self.config_digest, state.global_step)
        ws.barrier()
