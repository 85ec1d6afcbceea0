"""Checkpoints of a training stage: sealed when complete, verified before a resume, with the
hashing split over the ranks.

The Trainer writes `<stage>/checkpoints/checkpoint-<step>/` (model, optimizer, scheduler,
RNG states, `trainer_state.json` with the data position and the per-step log). Once every
rank has written its part, `SealCheckpoint` (a barrier, then `seal` on every rank) adds
`amalia_checkpoint.json`: the stage's config digest, the step, the launch's identity
(world size and strategy) and the size and sha256 of every file.

Hashing is split over the ranks, so its cost per rank does not grow with the world:

- every file is cut into pieces of `PIECE_BYTES` (a small file is one piece, whose hash is
  the file's plain sha256); every byte is hashed, none sampled;
- rank 0 lists the folder and broadcasts the listing, so every rank derives the same
  assignment (`assign`: pieces by size, each to the least loaded rank); each rank hashes
  its pieces, the tables are gathered (`all_gather_object`) and rank 0 alone writes the
  seal, with `hashed_by` (which rank hashed which pieces) and `hashed_bytes`;
- a rank therefore reads about `total bytes / world size` (+ at most one piece) at a save
  and at a resume: constant in the world size for a fixed per-rank shard (ZeRO), falling
  with it for DDP (where rank 0 writes everything). The checkpoints folder is shared
  storage (as a resume on any node already needs): rank 0's listing is every rank's.

`resume_point(folder, digest, world_size, strategy)` is collective under torchrun: every
rank calls it and every rank gets the same answer, a `ResumePoint`, None, or the same
one-line `CheckpointError` (no rank resumes while another raises). Rank 0 picks the
newest sealed checkpoint and checks its identity (`identity_problem`, no hashing); the
decision is broadcast; each rank verifies its share of the pieces; the verdicts are
gathered and every rank takes the first problem in piece order.

- an unsealed checkpoint-N (the process died while writing it) is skipped with a warning;
  the sealed one before it is used, and nothing is deleted;
- a sealed one whose files are missing, truncated or changed (even at the same size)
  raises `CheckpointError` naming the file and the fix (delete that folder to resume from
  the previous one, or `--restart`); earlier checkpoints stay untouched;
- a checkpoint sealed under another config digest is refused, never silently reused:
  resuming someone else's optimizer state is a wrong model;
- a checkpoint saved by another world size or strategy is refused before training starts
  (naming the folder, both world sizes and `--nproc N` / `--restart`), not resharded:
  DeepSpeed ZeRO optimizer shards belong to their ranks and the sampler's order (exact
  resume) depends on the world size. World size is part of the checkpoint's identity
  but not of the config digest (`stage_digest`), so this error can say what to relaunch.

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
from typing import Any

from transformers import TrainerCallback

from components.errors import AmaliaError

log = logging.getLogger(__name__)

SEAL = "amalia_checkpoint.json"
MLFLOW_RUN = "mlflow_run.json"
PATTERN = re.compile(r"^checkpoint-(\d+)$")
SEAL_FORMAT = 2  # 2: pieces, world size and strategy recorded
PIECE_BYTES = 64 << 20  # the unit of hashing work: large files are split over the ranks
READ_BYTES = 1 << 20


class CheckpointError(AmaliaError):
    """A checkpoint cannot be resumed from (corrupt, from another config or world size)."""


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int


@dataclass(frozen=True)
class Piece:
    """`length` bytes of file `rel` from `offset`: piece `index` of that file."""

    rel: str
    index: int
    offset: int
    length: int

    @property
    def name(self) -> str:
        return f"{self.rel}#{self.index}"


# ----------------------------------------------------------------------------- collectives


def _group() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if _group()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    import torch.distributed as dist

    size = _group()[1]
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- hashing


def listing(folder: Path) -> dict[str, int]:
    """`{relative path: bytes}` of every file under `folder` but the seal, sorted."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}


def pieces(sizes: dict[str, int], piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    """The pieces of the files `sizes` (an empty file is one empty piece)."""
    out = []
    for rel, size in sorted(sizes.items()):
        count = max(1, -(-size // piece_bytes))
        out += [Piece(rel, i, i * piece_bytes, min(piece_bytes, size - i * piece_bytes))
                for i in range(count)]
    return out


def assign(work: list[Piece], world_size: int) -> list[list[Piece]]:
    """Each rank's pieces: largest first, each to the rank with the fewest bytes so far
    (ties: the lowest rank). Deterministic, so every rank derives the same split."""
    shares: list[list[Piece]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for piece in sorted(work, key=lambda p: (-p.length, p.rel, p.index)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(piece)
        loads[rank] += piece.length
    return shares


def hash_piece(folder: Path, piece: Piece) -> str:
    h = hashlib.sha256()
    with (folder / piece.rel).open("rb") as fh:
        fh.seek(piece.offset)
        left = piece.length
        while left > 0 and (block := fh.read(min(READ_BYTES, left))):
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def seal(folder: Path, config_digest: str, step: int, *, world_size: int | None = None,
         strategy: str = "ddp", piece_bytes: int = PIECE_BYTES) -> None:
    """Mark `folder` complete: digest, step, world size, strategy and every file's size and
    piece hashes. Collective under torchrun (every rank calls it after its part of the
    checkpoint is on disk); rank 0 alone writes. A folder rank 0 cannot see is skipped."""
    rank, size = _group()
    sizes = _broadcast(listing(folder) if rank == 0 and folder.is_dir() else None)
    if sizes is None:
        return
    work = pieces(sizes, piece_bytes)
    mine = assign(work, size)[rank]
    done = _all_gather({p.name: hash_piece(folder, p) for p in mine})
    if rank != 0:
        return
    hashes = {name: digest for table in done for name, digest in table.items()}
    lengths = {p.name: p.length for p in work}
    files: dict[str, dict[str, Any]] = {rel: {"bytes": n, "pieces": []}
                                        for rel, n in sizes.items()}
    for p in work:
        files[p.rel]["pieces"].append(hashes[p.name])
    record = {
        "format": SEAL_FORMAT, "config_digest": config_digest, "step": step,
        "world_size": world_size if world_size is not None else size, "strategy": strategy,
        "piece_bytes": piece_bytes, "files": files,
        "hashed_by": {str(r): sorted(table) for r, table in enumerate(done)},
        "hashed_bytes": {str(r): sum(lengths[n] for n in table) for r, table in enumerate(done)},
    }
    tmp = folder / (SEAL + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / SEAL)  # atomic: a seal is either whole or absent


# ----------------------------------------------------------------------------- resume


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every `checkpoint-N` folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := PATTERN.match(p.name))]
    return sorted(found)


def _fix(path: Path, previous: Path | None) -> str:
    if previous is not None:
        return f"delete {path} to resume from {previous.name}, or re-run with --restart"
    return f"delete {path} (or re-run with --restart) to start the stage afresh"


def identity_problem(path: Path, record: dict[str, Any] | None, config_digest: str,
                     world_size: int, strategy: str, previous: Path | None,
                     ) -> CheckpointError | None:
    """Why sealed checkpoint `path` (its seal `record`, None when unreadable) cannot be
    resumed by this launch without reading its files, or None."""
    if record is None:
        return CheckpointError(f"checkpoint seal {path / SEAL} is unreadable",
                               _fix(path, previous))
    if record.get("config_digest") != config_digest:
        return CheckpointError(
            f"checkpoints in {path.parent} were made by another configuration (digest "
            f"{record.get('config_digest')}, this run {config_digest}): resuming them "
            "would continue a different training",
            "re-run with --restart to discard them, or restore the params.yaml/inputs they "
            "were made with",
        )
    if record.get("format") != SEAL_FORMAT:
        return CheckpointError(
            f"checkpoint {path} was sealed by an earlier amalia-vl (seal format "
            f"{record.get('format', 1)}, without world size or piece hashes)",
            "re-run with --restart to discard the stage's checkpoints")
    saved = record.get("world_size")
    if saved != world_size:
        return CheckpointError(
            f"checkpoint {path} was saved by {saved} processes and this launch has "
            f"{world_size}: its optimizer shards and data order belong to {saved} ranks",
            f"relaunch with {saved} processes in all (--nproc {saved}, or --nproc x --nnodes "
            f"= {saved}) to resume it, or re-run with --restart to discard the stage's "
            "checkpoints")
    if record.get("strategy") != strategy:
        return CheckpointError(
            f"checkpoint {path} was saved with train.strategy {record.get('strategy')} and "
            f"this launch runs {strategy}: the optimizer state is laid out for the former",
            f"relaunch where {record.get('strategy')} runs, or re-run with --restart to "
            "discard the stage's checkpoints")
    return None


def _read_seal(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((path / SEAL).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _check_piece(path: Path, piece: Piece, meta: dict[str, Any], want: str) -> str | None:
    """What is wrong with `piece` of checkpoint `path`, or None."""
    file = path / piece.rel
    if not file.is_file():
        return f"checkpoint file {file} is missing"
    size = file.stat().st_size
    if size != meta["bytes"]:
        return (f"checkpoint file {file} is corrupt ({size} bytes, {meta['bytes']} when "
                "saved: truncated?)")
    if hash_piece(path, piece) != want:
        return f"checkpoint file {file} is corrupt (content changed since it was saved)"
    return None


def _verify_share(path: Path, record: dict[str, Any]) -> tuple[int, str] | None:
    """This rank's first problem among its pieces of `path`: (piece order, message)."""
    rank, size = _group()
    files = record["files"]
    work = pieces({rel: meta["bytes"] for rel, meta in files.items()},
                  int(record["piece_bytes"]))
    order = {p.name: i for i, p in enumerate(work)}
    for piece in sorted(assign(work, size)[rank], key=lambda p: order[p.name]):
        problem = _check_piece(path, piece, files[piece.rel],
                               files[piece.rel]["pieces"][piece.index])
        if problem:
            return order[piece.name], problem
    return None


def verify(path: Path, record: dict[str, Any], previous: Path | None) -> int:
    """The step of sealed checkpoint `path` (seal `record`), or the same `CheckpointError`
    on every rank when any piece is missing, truncated or changed. Collective."""
    problems = [p for p in _all_gather(_verify_share(path, record)) if p is not None]
    if problems:
        raise CheckpointError(min(problems)[1], _fix(path, previous))
    return int(record["step"])


def _decide(folder: Path, config_digest: str, world_size: int, strategy: str
            ) -> dict[str, Any]:
    """Rank 0's decision: nothing to resume, an identity error, or a checkpoint to verify."""
    found = checkpoints(folder)
    sealed = [(s, p) for s, p in found if (p / SEAL).exists()]
    for step, path in found:
        if not (path / SEAL).exists() and (not sealed or step > sealed[-1][0]):
            log.warning("checkpoint %s is incomplete (no %s: the process stopped while "
                        "saving it); resuming from the one before", path, SEAL)
    if not sealed:
        return {"resume": None}
    path = sealed[-1][1]
    previous = sealed[-2][1] if len(sealed) > 1 else None
    record = _read_seal(path)
    problem = identity_problem(path, record, config_digest, world_size, strategy, previous)
    if problem is not None:
        return {"error": (problem.message, problem.hint)}
    return {"resume": str(path), "previous": str(previous) if previous else None,
            "record": record}


def resume_point(folder: Path, config_digest: str, *, world_size: int | None = None,
                 strategy: str = "ddp") -> ResumePoint | None:
    """The newest sealed, verified checkpoint under `folder`, or None to start afresh
    (see the module doc). Collective under torchrun: every rank calls it, every rank gets
    the same answer or the same `CheckpointError`."""
    rank, size = _group()
    decision = _broadcast(_decide(folder, config_digest, world_size or size, strategy)
                          if rank == 0 else None)
    if "error" in decision:
        raise CheckpointError(*decision["error"])
    if decision["resume"] is None:
        return None
    path = Path(decision["resume"])
    previous = Path(decision["previous"]) if decision["previous"] else None
    return ResumePoint(path, verify(path, decision["record"], previous))


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
    """Seal each checkpoint once every rank has written its part of it: every rank hashes
    its share (`seal`), rank 0 writes the seal, and no rank goes on before it exists."""

    def __init__(self, config_digest: str, world_size: int = 1, strategy: str = "ddp"):
        self.config_digest = config_digest
        self.world_size = world_size
        self.strategy = strategy

    def on_save(self, args, state, control, **kwargs):
        from components.train.distributed import world

        ws = world()
        ws.barrier()  # DeepSpeed ranks write their own optimizer shards
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        seal(folder, self.config_digest, state.global_step, world_size=self.world_size,
             strategy=self.strategy)
        ws.barrier()
