"""The length index of one mix output: computed once, in parallel, reused by every rank.

Per record of the shards, in file order: (shard, row group, row), tokens as a padded
batch holds the sample (`length`; chosen + rejected for a preference pair), tokens as a
packed row holds it (`packed_length`: without a text-only sample's dummy image), anyres
tiles, the images' sizes as read from their headers (EXIF rotation and the load cap
applied; no pixel decoded), and for a record that cannot train its skip reason and
detail (`SkipSample`: too long for `model.max_length` / `train.max_tiles` even with its
images scaled down, unreadable image, wrong kind, bad record). This is the planning pass
`ShardDataset` needs before a GPU second is spent; at paper scale (5M samples) it is
hours of single-threaded work, so:

- **once per key**: `index_key` hashes what the index depends on: the shards (name, size,
  mtime), the tokenizer (its serialised vocabulary and merges), the chat template, the
  image processor (grid pinpoints, tile and patch sizes), the processor's image-token
  arithmetic, the system prompt, the budget and the preference flag, and
  `INDEX_VERSION`. Any of them changed: a new index. Images referenced by path are
  keyed by `data_dir`'s path only (the mix embeds its images);
- **in parallel**: a fork process pool over row groups (`workers`, default: this
  process's CPUs; torch limited to one thread per worker); small outputs (fewer than
  `PARALLEL_MIN_ROWS` rows) are indexed in-process. The result equals the serial one;
- **stored** as `<index_dir>/<key>.npz` (no pickle), written to a temporary file and
  renamed, so a reader sees a whole index or none; an unreadable or foreign file
  (truncated, another key) is recomputed. The stages keep it in
  `<run>/length_index/<output>/`: beside the mix, outside its DVC output;
- **shared without a collective**: the first process to take the `fcntl` lock on
  `<key>.lock` computes; the others block on the lock (no process-group call, so no
  timeout can fire however long the pass takes), then load the file. Every rank, every
  stage restart and every resume reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.records import RECORD_FIELDS, Record, record_from_row
from components.train.chat import Budget, ChatFormat, SkipSample, Tokenized

INDEX_VERSION = 1
PARALLEL_MIN_ROWS = 4096  # below this, forking a pool costs more than it saves
# per entry: shard, group, row, length, packed_length, tiles, images (-1: skipped)
COLUMNS = ("shard", "group", "row", "length", "packed_length", "tiles", "images")


@dataclass
class LengthIndex:
    """Every record of the shards, in file order (see the module docstring).

    `entries` (n, 7) int32 as `COLUMNS`; `sizes` (m, 2) int32: (height, width) of every
    kept entry's images, in order (`entries[:, 6]` of them per entry); `skipped`: for the
    entries with `images == -1`, in order, {"id", "reason", "detail"}. `computed`: this
    process computed it (False: loaded)."""

    entries: np.ndarray
    sizes: np.ndarray
    skipped: list[dict[str, Any]]
    key: str = ""
    computed: bool = False


def encode(chat: ChatFormat, record: Record, sizes: list[tuple[int, int]], budget: Budget,
           preference: bool) -> tuple[Tokenized, Tokenized | None]:
    """The sample's tokens (and a preference pair's rejected answer); `SkipSample` when the
    record cannot train in this stage or cannot fit the budget."""
    if preference:
        if record.kind != "preference":
            raise SkipSample("not_preference", f"record {record.id}: kind {record.kind}")
        chosen, rejected = chat.encode_preference(record, sizes, budget)
        return chosen, rejected
    if record.kind == "preference":
        raise SkipSample("preference_in_sft", f"record {record.id}: preference records "
                         "train in the dpo stage")
    return chat.encode(record, sizes, budget), None


def packed_length(tokens: Tokenized) -> int:
    """Tokens a sample takes in a packed row: all of them, less a dummy image's."""
    return len(tokens) - (tokens.n_image_tokens if tokens.dummy_image else 0)


# ----------------------------------------------------------------------------- key


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True,
                         default=str)
    return hashlib.sha256((blob + special).encode()).hexdigest()


def index_key(shards: list[str], data_dir: Path, chat: ChatFormat, budget: Budget,
              preference: bool) -> str:
    """The digest naming an index (see the module docstring for what it covers)."""
    processor = chat.processor
    image = processor.image_processor
    stats = [(Path(p).name, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in shards]
    blob = json.dumps({
        "version": INDEX_VERSION,
        "shards": stats,
        "data_dir": str(Path(data_dir).resolve()),
        "tokenizer": _tokenizer_digest(chat.tokenizer),
        "template": chat.template,
        "image_processor": json.loads(image.to_json_string()),
        "processor": {k: getattr(processor, k, None) for k in (
            "patch_size", "vision_feature_select_strategy", "num_additional_image_tokens",
            "image_token")},
        "system_prompt": chat.system_prompt,
        "budget": [budget.max_length, budget.max_tiles],
        "preference": preference,
    }, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


# ----------------------------------------------------------------------------- compute

# what a forked pool worker indexes with (set in the parent before forking)
_JOB: dict[str, Any] = {}


def _index_group(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(entries, sizes, skipped) of one row group: header reads and tokenisation only."""
    import pyarrow.parquet as pq

    from components.train.dataset import image_size, image_source

    s, g = task
    chat, budget, preference = _JOB["chat"], _JOB["budget"], _JOB["preference"]
    data_dir = _JOB["data_dir"]
    pf = pq.ParquetFile(_JOB["shards"][s])
    columns = [c for c in (*RECORD_FIELDS, "image_bytes") if c in pf.schema_arrow.names]
    entries: list[tuple[int, ...]] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[dict[str, Any]] = []
    for r, row in enumerate(pf.read_row_group(g, columns=columns).to_pylist()):
        try:
            record = record_from_row(row)
        except ValueError as exc:
            skipped.append({"id": row.get("id"), "reason": "bad_record",
                            "detail": str(exc).splitlines()[0]})
            entries.append((s, g, r, 0, 0, 0, -1))
            continue
        blobs = row.get("image_bytes")
        try:
            seen = [image_size(image_source(record, blobs, data_dir, k))
                    for k in range(len(record.image_list()))]
            tokens = encode(chat, record, seen, budget, preference)
        except SkipSample as skip:
            skipped.append({"id": record.id, "reason": skip.reason, "detail": str(skip)})
            entries.append((s, g, r, 0, 0, 0, -1))
            continue
        kept = [t for t in tokens if t is not None]
        tiles = sum(chat.image_cost(size)[0] for size in kept[0].image_sizes)
        entries.append((s, g, r, sum(len(t) for t in kept), sum(packed_length(t) for t in kept),
                        tiles, len(seen)))
        sizes.extend(seen)
    return (np.asarray(entries, dtype=np.int32).reshape(-1, len(COLUMNS)),
            np.asarray(sizes, dtype=np.int32).reshape(-1, 2), skipped)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: no oversubscription


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def compute(shards: list[str], data_dir: Path, chat: ChatFormat, budget: Budget,
            preference: bool, workers: int | None = None,
            min_parallel_rows: int = PARALLEL_MIN_ROWS) -> LengthIndex:
    """The index of `shards`, over a fork pool of `workers` processes (serial below
    `min_parallel_rows` rows or for `workers` <= 1)."""
    import multiprocessing

    import pyarrow.parquet as pq

    tasks, rows = [], 0
    for s, path in enumerate(shards):
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        tasks += [(s, g) for g in range(meta.num_row_groups)]
    _JOB.update(shards=list(shards), data_dir=Path(data_dir), chat=chat, budget=budget,
                preference=preference)
    workers = default_workers() if workers is None else workers
    workers = min(workers, len(tasks))
    try:
        if workers <= 1 or rows < min_parallel_rows:
            parts = [_index_group(t) for t in tasks]
        else:
            with multiprocessing.get_context("fork").Pool(workers, _init_worker) as pool:
                parts = pool.map(_index_group, tasks, chunksize=1)
    finally:
        _JOB.clear()
    entries = np.concatenate([p[0] for p in parts]) if parts else \
        np.zeros((0, len(COLUMNS)), np.int32)
    sizes = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 2), np.int32)
    return LengthIndex(entries, sizes, [s for p in parts for s in p[2]], computed=True)


# ----------------------------------------------------------------------------- store


def save(index: LengthIndex, path: Path) -> None:
    """Write `index` to `path` atomically (temporary file in the folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.asarray(index.key), entries=index.entries, sizes=index.sizes,
                     skipped_id=np.asarray([str(s["id"]) for s in index.skipped], dtype=str),
                     skipped_reason=np.asarray([s["reason"] for s in index.skipped],
                                               dtype=str),
                     skipped_detail=np.asarray([s["detail"] for s in index.skipped],
                                               dtype=str))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, key: str) -> LengthIndex | None:
    """The index stored at `path` for `key`, or None when there is none, or it is
    unreadable, partial or for another key (then it is recomputed)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            entries, sizes = z["entries"], z["sizes"]
            ids, reasons, details = z["skipped_id"], z["skipped_reason"], z["skipped_detail"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if entries.ndim != 2 or entries.shape[1] != len(COLUMNS) \
            or int((entries[:, 6] == -1).sum()) != len(ids) \
            or int(entries[:, 6].clip(min=0).sum()) != len(sizes):
        return None
    skipped = [{"id": None if i == "None" else str(i), "reason": str(r), "detail": str(d)}
               for i, r, d in zip(ids, reasons, details, strict=True)]
    return LengthIndex(entries, sizes, skipped, key=key)


def load_or_compute(shards: list[str], data_dir: Path, chat: ChatFormat, budget: Budget,
                    preference: bool, index_dir: Path | None,
                    workers: int | None = None) -> LengthIndex:
    """The index from `<index_dir>/<key>.npz`, computed by the first process to take the
    lock when missing or unusable (see the module docstring); `index_dir=None` computes it
    in memory without storing it."""
    key = index_key(shards, data_dir, chat, budget, preference)
    if index_dir is None:
        index = compute(shards, data_dir, chat, budget, preference, workers)
        index.key = key
        return index
    index_dir = Path(index_dir)
    path = index_dir / f"{key}.npz"
    found = load(path, key)
    if found is not None:
        return found
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process computes it
        try:
            found = load(path, key)  # computed by the process that held the lock
            if found is not None:
                return found
            index = compute(shards, data_dir, chat, budget, preference, workers)
            index.key = key
            save(index, path)
            return index
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
