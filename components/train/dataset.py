"""Training samples streamed from the mix's parquet shards (`<run>/mix/shards/<stage>/`).

`ShardDataset` is a map-style dataset whose memory does not grow with the images: it
keeps three integers per sample (shard, row group, row) and reads a row group only when
a sample of it is asked for (one cached row group per DataLoader worker). Images are
decoded, scaled to the sample's budget and tiled in `__getitem__`, i.e. in the
DataLoader workers (`train.dataloader_workers`).

Building the dataset is a planning pass over the shards that reads every record and the
header of every image (no pixel decoding) and encodes the sample's tokens
(`ChatFormat`), done once per mix output and settings key, in parallel, and stored in
`index_dir` for every rank and restart (`components.train.length_index`): a sample that
cannot fit `model.max_length` / `train.max_tiles` even with its images scaled down is
skipped, with its reason, into `skipped` (the stage writes `skipped.jsonl` and fails
past `train.max_skip_ratio`). Every remaining sample is known to fit before a GPU second
is spent. The pass leaves the length index packing needs (`components.train.packing`),
from the processor's image-token arithmetic, without decoding a pixel: `lengths` (tokens
per sample as padded batches hold it; chosen + rejected for a preference pair),
`packed_lengths` (the same without a text-only sample's dummy image, which a packed row
does not carry) and `tiles`.

`sampler(seed, world_size=, batch_size=, workers=)` is a seeded, rank-aware block
shuffle (`BlockShuffleSampler`): row groups in a random order, each group's rows
shuffled, re-drawn per epoch (`set_epoch`), laid out so that every (rank, DataLoader
worker) reads whole row groups of its own (one read per group per epoch, not one per
interleaved batch). The order depends only on (seed, epoch, world size, workers, batch
size), so a resumed run skips exactly the batches it had seen; Accelerate shards the
batches of this one order across ranks. Its balance leaves samples out / repeats some
(`BlockShuffleSampler.remainder`, recorded by the stage); packed rows avoid that with a
layout fixed for the launch (`packing.equalise_streams`) read by `StreamSampler`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from components.errors import AmaliaError
from components.records import Record, record_from_row, shard_paths
from components.train import length_index
from components.train.chat import (
    Budget,
    ChatFormat,
    SkipSample,
    Tokenized,
    collate_tokenized,
    pixel_inputs,
)
from components.train.data import MAX_IMAGE_SIDE, load_image
from components.train.length_index import packed_length  # noqa: F401 (public here too)

EXIF_ORIENTATION = 0x0112
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF rotations by 90 degrees: width <-> height
MAX_SIZES_KEPT = 4096  # distinct image sizes remembered for the image-token agreement check


@dataclass
class Sample:
    """One encoded sample and its images' tiles (a preference sample: both answers)."""

    index: int
    tokens: Tokenized
    rejected: Tokenized | None
    pixel_values: list[torch.Tensor]  # one (tiles, 3, side, side) per image, in order
    real_images: int  # images of the record (a text-only sample's dummy is not one)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only attended tokens (`cumsum(mask) - 1`, 0 where nothing is
    attended yet): what `generate` gives a prompt, so a text-only sample's masked dummy
    image takes no positions in training either, as in a packed row, which drops it."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def image_source(record: Record, blobs: list[bytes | None] | None, data_dir: Path,
                 k: int) -> bytes | Path:
    """Image `k` of a record: its embedded bytes, else its path (relative to data_dir)."""
    if blobs and k < len(blobs) and blobs[k] is not None:
        return blobs[k]
    loc = record.image_list()[k]
    return Path(loc) if Path(loc).is_absolute() else Path(data_dir) / loc


def image_size(source: bytes | Path) -> tuple[int, int]:
    """(height, width) `load_image` will give, read from the header only (EXIF rotation
    and the `MAX_IMAGE_SIDE` cap applied, as `load_image` applies them)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION, 1) in SWAPPING_ORIENTATIONS:
                width, height = height, width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SkipSample("image_unreadable", str(exc) or type(exc).__name__) from None
    if max(width, height) > MAX_IMAGE_SIDE:
        scale = MAX_IMAGE_SIDE / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return height, width


def read_image(source: bytes | Path, size: tuple[int, int], name: str) -> Image.Image:
    """The decoded RGB image, resized to `size` (height, width) when the budget says so.
    An image whose header read but whose pixels do not (a truncated file) raises an
    `AmaliaError` naming the record `name` and where its image came from."""
    where = "its embedded image bytes" if isinstance(source, bytes) else str(source)
    try:
        image = load_image(io.BytesIO(source) if isinstance(source, bytes) else source)
    except AmaliaError as exc:
        reason = exc.message.split(": ", 1)[-1]
        raise AmaliaError(f"record {name}: cannot decode {where}: {reason}",
                          "re-run validate (it quarantines unreadable images) and mix") from None
    if (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return image


class ShardDataset(Dataset):
    """Samples of one mix output (see the module docstring).

    `preference=True` yields (chosen, rejected) samples of `preference` records; else
    every record kind `ChatFormat` trains (caption, qa, multiple_choice, conversation,
    grounding, text-only).
    """

    def __init__(self, folder: Path, data_dir: Path, processor, chat: ChatFormat,
                 budget: Budget, *, preference: bool = False, index_dir: Path | None = None,
                 workers: int | None = None):
        self.shards = [str(p) for p in shard_paths(Path(folder))]
        if not self.shards:
            raise AmaliaError(f"no parquet shards in {folder}",
                              "re-run the mix stage (it writes mix/shards/<stage>/)")
        self.data_dir = Path(data_dir)
        self.processor = processor
        self.chat = chat
        self.budget = budget
        self.preference = preference
        # the planning pass: once per key, in parallel, shared by every rank and restart
        index = length_index.load_or_compute(self.shards, self.data_dir, chat, budget,
                                             preference, index_dir, workers)
        self.index_key, self.index_computed = index.key, index.computed
        kept = index.entries[:, 6] >= 0
        self.skipped: list[dict[str, Any]] = index.skipped
        self.rows = np.ascontiguousarray(index.entries[kept, :3], dtype=np.int32)
        self.lengths = np.ascontiguousarray(index.entries[kept, 3], dtype=np.int32)
        self.packed_lengths = np.ascontiguousarray(index.entries[kept, 4], dtype=np.int32)
        self.tiles = np.ascontiguousarray(index.entries[kept, 5], dtype=np.int32)
        self.image_sizes_seen: set[tuple[int, int]] = set()  # (height, width), capped
        at = 0
        for n in index.entries[kept, 6].tolist():
            if len(self.image_sizes_seen) < MAX_SIZES_KEPT:
                self.image_sizes_seen.update(map(tuple, index.sizes[at: at + n].tolist()))
            at += n

    def _encode(self, record: Record, sizes: list[tuple[int, int]]
                ) -> tuple[Tokenized, Tokenized | None]:
        return length_index.encode(self.chat, record, sizes, self.budget, self.preference)

    # -- reading

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def row_groups(self) -> list[np.ndarray]:
        """Sample indices per (shard, row group), in file order."""
        if not len(self.rows):
            return []
        keys = self.rows[:, 0].astype(np.int64) * (1 << 31) + self.rows[:, 1]
        _, starts = np.unique(keys, return_index=True)
        bounds = [*sorted(starts.tolist()), len(keys)]
        return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def sampler(self, seed: int, *, world_size: int = 1, batch_size: int = 1,
                workers: int = 0, accumulation: int = 1) -> BlockShuffleSampler:
        """The epoch order over this dataset's row groups (`BlockShuffleSampler`: each
        rank and DataLoader worker of the launch reads whole row groups)."""
        return BlockShuffleSampler(self.row_groups, seed, world_size=world_size,
                                   batch_size=batch_size, workers=workers,
                                   accumulation=accumulation)

    def __getitem__(self, i: int) -> Sample:
        s, g, r = (int(v) for v in self.rows[i])
        row = _row_group(self.shards[s], g)[r]
        record = record_from_row(row)
        blobs = row.get("image_bytes")
        sources = [image_source(record, blobs, self.data_dir, k)
                   for k in range(len(record.image_list()))]
        sizes = [image_size(src) for src in sources]
        tokens, rejected = self._encode(record, sizes)
        if tokens.dummy_image:  # a text-only sample: blank tiles, masked out of attention
            images: list[Image.Image | None] = [None]
        else:
            images = [read_image(src, size, record.id)
                      for src, size in zip(sources, tokens.image_sizes, strict=True)]
        pixels, _ = pixel_inputs(self.processor, images, tokens.image_sizes)
        real = 0 if tokens.dummy_image else len(images)
        return Sample(i, tokens, rejected, pixels, real)


@lru_cache(maxsize=2)
def _row_group(path: str, group: int) -> list[dict[str, Any]]:
    """One row group's rows (cached per process: each DataLoader worker has its own)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group).to_pylist()


class BlockShuffleSampler(Sampler[int]):
    """The seeded, rank-aware order of one epoch over `groups` (index arrays, one per
    parquet row group: samples, or packed rows of one group), re-drawn per epoch by
    `set_epoch(e)`; it depends only on (seed, epoch, world size, workers, batch size,
    accumulation), so a resumed run skips exactly the batches it had seen.

    Who reads what: Accelerate cuts this order into batches of `batch_size` and gives
    batch b to rank b % W; each rank's DataLoader gives its j-th batch to worker j % w
    (w = max(1, workers)). So batch b is read by stream b % S, S = W x w (stream
    r + W x k = rank r, worker k). The order is laid out so that every stream owns whole
    row groups: the groups (in a seeded random order, rows shuffled inside each) go to
    streams largest first onto the least-loaded one (LPT), and the order interleaves the
    streams' batches (batch m x S + s is stream s's m-th). Each row group is then read
    once per epoch by one (rank, worker), not once per interleaved batch.

    Balance (every stream must yield the same number of batches, or ranks would wait
    for each other, and an epoch must cost what the data holds, no more GPU time): each
    stream yields B batches, B = the samples over S streams in whole batches (ceil),
    rounded up so that a rank's batches (B x w) are whole `accumulation` steps. LPT
    keeps every stream within one row group of that share. A stream holding more than
    B x `batch_size` samples leaves the tail of its groups (this epoch's shuffled order:
    other samples each epoch) out of the epoch; a stream holding fewer repeats samples
    of its own last group, still in its reader's cache (no extra read). Both are zero
    when the groups balance (one stream, or groups of equal size in a multiple of S) and
    at most about one row group per stream otherwise (bench/row_group_reads.py measures
    both shares; `remainder` counts them; packed rows are equalised by splitting rows
    instead: `packing.equalise_streams`, `StreamSampler`). Rejected alternatives:
    splitting a group between streams (it is read twice), or padding every stream to
    the longest (costs GPU time). With fewer groups than streams, each group is cut into
    ceil(S / groups) pieces first (so one group is read by up to that many readers).
    With one stream (1 process, 0 or 1 worker) the order is the plain block shuffle:
    groups in a random order, rows shuffled inside each, every sample exactly once.
    After a resume mid-epoch the DataLoader restarts its round-robin at worker 0, so
    until the epoch ends workers may read each other's groups (same batches, in the
    same order; more reads)."""

    def __init__(self, groups: list[np.ndarray], seed: int, *, world_size: int = 1,
                 batch_size: int = 1, workers: int = 0, accumulation: int = 1):
        self.groups = groups
        self.seed = seed
        self.epoch = 0
        self.world_size = max(1, int(world_size))
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers))
        self.accumulation = max(1, int(accumulation))

    @property
    def streams(self) -> int:
        return self.world_size * self.workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        total = int(sum(len(g) for g in self.groups))
        if self.streams == 1:
            return total
        return self.streams * self._batches_per_stream(total) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.groups))
        shuffled = [rng.permutation(self.groups[k]) for k in order]
        if self.streams == 1:
            for rows in shuffled:
                yield from rows.tolist()
            return
        pieces = -(-self.streams // max(1, len(shuffled)))  # > 1 only: fewer groups than S
        units = [p for rows in shuffled for p in np.array_split(rows, pieces) if len(p)]
        if not units:
            return
        per = self.batch_size
        need = self._batches_per_stream(sum(len(u) for u in units)) * per
        streams = []
        for s, mine in enumerate(self._assign([len(u) for u in units])):
            mine = mine or [s % len(units)]  # more streams than samples' pieces: borrow
            samples = np.concatenate([units[k] for k in mine])[:need]
            if len(samples) < need:  # repeat the stream's own last group (cached: no read)
                samples = np.concatenate([samples, np.resize(units[mine[-1]],
                                                             need - len(samples))])
            streams.append(samples.reshape(-1, per))
        for m in range(need // per):
            for batches in streams:
                yield from batches[m].tolist()

    def _assign(self, sizes: list[int]) -> list[list[int]]:
        return lpt_assign(sizes, self.streams)

    def _batches_per_stream(self, total: int) -> int:
        batches = max(1, -(-total // (self.streams * self.batch_size)))
        step = self.accumulation // math.gcd(self.accumulation, self.workers)
        return -(-batches // step) * step

    def remainder(self, epoch: int | None = None) -> tuple[int, int]:
        """(left out, repeated) items of epoch `epoch` (default: the current one) by the
        balance above, counted without drawing the order: (0, 0) with one stream."""
        if self.streams == 1 or not self.groups:
            return 0, 0
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        order = rng.permutation(len(self.groups))
        sizes = [len(self.groups[k]) for k in order]
        pieces = -(-self.streams // len(sizes))
        units = [len(p) for n in sizes for p in np.array_split(np.arange(n), pieces) if len(p)]
        need = self._batches_per_stream(sum(units)) * self.batch_size
        loads = np.asarray([sum(units[k] for k in mine)
                            for mine in self._assign(units)])
        # a stream with no unit of its own repeats a borrowed one for all its items
        return int(np.clip(loads - need, 0, None).sum()), int(np.clip(need - loads, 0, None).sum())


def stream_step(batch_size: int, workers: int, accumulation: int) -> int:
    """Items a stream's length must be a multiple of: whole batches, and (its rank holding
    `workers` streams) whole `accumulation` steps per rank."""
    workers = max(1, workers)
    return max(1, batch_size) * (max(1, accumulation) // math.gcd(max(1, accumulation),
                                                                  workers))


def lpt_assign(sizes: list[int], streams: int) -> list[list[int]]:
    """Unit indices per stream: LPT, the largest first (ties: the lower index, i.e. the
    caller's random order) onto the least-loaded stream (ties: the lowest); each stream's
    units then in index order."""
    import heapq

    heap = [(0, s) for s in range(streams)]
    owned: list[list[int]] = [[] for _ in range(streams)]
    for k in sorted(range(len(sizes)), key=lambda k: (-sizes[k], k)):
        load, s = heapq.heappop(heap)
        owned[s].append(k)
        heapq.heappush(heap, (load + sizes[k], s))
    return [sorted(g) for g in owned]


class StreamSampler(Sampler[int]):
    """The seeded epoch order over a layout fixed for the launch (`streams[s]`: stream s's
    units, arrays of item indices, one per row group; `packing.equalise_streams` builds
    it): each stream yields `per_stream` items, its units in a random order and each
    unit's items shuffled, re-drawn per epoch (`set_epoch`); batch m x S + s of the order
    is stream s's m-th, so stream s = rank s % W, worker s // W reads only its own units
    (see `BlockShuffleSampler` for the dealing). The order depends only on (seed, epoch,
    layout). A stream holding exactly `per_stream` items (the equalised case) yields each
    once: nothing left out or repeated. Otherwise (the layout's recorded fallback) a
    longer one leaves its tail (this epoch's order) out, a shorter one repeats items of
    its own last unit (cached: no read), one with no unit those of unit s % units."""

    def __init__(self, streams: list[list[np.ndarray]], per_stream: int, seed: int, *,
                 batch_size: int = 1):
        self.streams = streams
        self.per_stream = int(per_stream)
        self.seed = seed
        self.epoch = 0
        self.batch_size = max(1, int(batch_size))
        if self.per_stream % self.batch_size:
            raise ValueError(f"{self.per_stream} items per stream are not whole batches "
                             f"of {self.batch_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.streams) * self.per_stream

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        every = [u for units in self.streams for u in units if len(u)]
        if not every:
            return
        need, per = self.per_stream, self.batch_size
        laid = []
        for s, units in enumerate(self.streams):
            shuffled = [rng.permutation(units[k]) for k in rng.permutation(len(units))]
            shuffled = [u for u in shuffled if len(u)]
            items = np.concatenate(shuffled) if shuffled else np.zeros(0, dtype=np.int64)
            if len(items) < need:
                fill = shuffled[-1] if shuffled else every[s % len(every)]
                items = np.concatenate([items, np.resize(fill, need - len(items))])
            laid.append(items[:need].reshape(-1, per))
        for m in range(need // per):
            for batches in laid:
                yield from batches[m].tolist()


# ----------------------------------------------------------------------------- collation


class SampleCollator:
    """`collate_fn` for `ShardDataset` samples (picklable, for DataLoader workers): one
    padded row per sample, `position_ids` from `position_ids(attention_mask)`.
    Preference samples become 2B rows: the B chosen, then the B rejected (same images)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        tokens = [s.tokens for s in samples]
        pixels = [s.pixel_values for s in samples]
        if samples[0].rejected is not None:
            tokens += [s.rejected for s in samples]
            pixels += pixels
        batch = collate_tokenized(tokens, pixels, self.pad_token_id, self.padding_side)
        batch["position_ids"] = position_ids(batch["attention_mask"])
        batch["real_images"] = torch.tensor([s.real_images for s in samples])
        batch["sample_index"] = torch.tensor([s.index for s in samples])
        return batch


# ----------------------------------------------------------------------------- reads


def row_group_reads(sampler: Sampler[int], group_of: np.ndarray, world_size: int,
                    workers: int, batch_size: int, cache: int = 2) -> np.ndarray:
    """Reads of each row group in one epoch of `sampler` (a simulation, for the tests and
    bench/row_group_reads.py): the order cut into batches of `batch_size` and dealt to
    ranks by Accelerate's own `BatchSamplerShard`, each rank's j-th batch to DataLoader
    worker j % workers, each worker keeping `cache` row groups (`_row_group`'s LRU).
    `group_of[i]`: the row group index `i` of the order reads (a sample's, or a packed
    row's source group)."""
    from collections import OrderedDict

    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    order = list(sampler)  # one epoch, drawn once for every simulated rank
    batches = BatchSampler(order, batch_size, drop_last=True)
    reads = np.zeros(int(group_of.max()) + 1 if len(group_of) else 0, dtype=np.int64)
    lanes = max(1, workers)
    for rank in range(world_size):
        shard = BatchSamplerShard(batches, num_processes=world_size, process_index=rank,
                                  split_batches=False, even_batches=True)
        caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(lanes)]
        for j, batch in enumerate(shard):
            lru = caches[j % lanes]
            for i in batch:
                g = int(group_of[i])
                if g in lru:
                    lru.move_to_end(g)
                    continue
                reads[g] += 1
                lru[g] = None
                if len(lru) > cache:
                    lru.popitem(last=False)
    return reads
