"""Training samples streamed from the mix's parquet shards (`<run>/mix/shards/<stage>/`).

`ShardDataset` is a map-style dataset whose memory does not grow with the images: it
keeps three integers per sample (shard, row group, row) and reads a row group only when
a sample of it is asked for (one cached row group per DataLoader worker). Images are
decoded, scaled to the sample's budget and tiled in `__getitem__`, i.e. in the
DataLoader workers (`train.dataloader_workers`).

Building the dataset is a planning pass over the shards that reads every record and the
header of every image (no pixel decoding) and encodes the sample's tokens
(`ChatFormat`): a sample that cannot fit `model.max_length` / `train.max_tiles` even with
its images scaled down is skipped, with its reason, into `skipped` (the stage writes
`skipped.jsonl` and fails past `train.max_skip_ratio`). Every remaining sample is known
to fit before a GPU second is spent. The pass leaves the length index packing needs
(`components.train.packing`), from the processor's image-token arithmetic, without
decoding a pixel: `lengths` (tokens per sample as padded batches hold it; chosen +
rejected for a preference pair) and `packed_lengths` (the same without a text-only
sample's dummy image, which a packed row does not carry).

`sampler(seed)` is a seeded block shuffle: the row groups in a random order, each
group's rows shuffled, re-drawn per epoch (`set_epoch`). Consecutive samples come from the
same row group (one read per group and worker, not one per sample), the order depends
only on (seed, epoch), so a resumed run skips exactly the batches it had seen, and
Accelerate shards the batches of this one order across ranks.
"""

from __future__ import annotations

import io
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
from components.records import RECORD_FIELDS, Record, record_from_row, shard_paths
from components.train.chat import (
    Budget,
    ChatFormat,
    SkipSample,
    Tokenized,
    collate_tokenized,
    pixel_inputs,
)
from components.train.data import MAX_IMAGE_SIDE, load_image

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


def packed_length(tokens: Tokenized) -> int:
    """Tokens a sample takes in a packed row: all of them, less a dummy image's."""
    return len(tokens) - (tokens.n_image_tokens if tokens.dummy_image else 0)


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
                 budget: Budget, *, preference: bool = False):
        self.shards = [str(p) for p in shard_paths(Path(folder))]
        if not self.shards:
            raise AmaliaError(f"no parquet shards in {folder}",
                              "re-run the mix stage (it writes mix/shards/<stage>/)")
        self.data_dir = Path(data_dir)
        self.processor = processor
        self.chat = chat
        self.budget = budget
        self.preference = preference
        self.skipped: list[dict[str, Any]] = []
        self.image_sizes_seen: set[tuple[int, int]] = set()  # (height, width), capped
        rows, lengths, packed = [], [], []
        for s, g, r, record, blobs in self._scan():
            try:
                sizes = [image_size(image_source(record, blobs, self.data_dir, k))
                         for k in range(len(record.image_list()))]
                tokens = self._encode(record, sizes)
            except SkipSample as skip:
                self.skipped.append({"id": record.id, "reason": skip.reason,
                                     "detail": str(skip)})
                continue
            rows.append((s, g, r))
            if len(self.image_sizes_seen) < MAX_SIZES_KEPT:
                self.image_sizes_seen.update(sizes)
            lengths.append(sum(len(t) for t in tokens if t is not None))
            packed.append(sum(packed_length(t) for t in tokens if t is not None))
        self.rows = np.asarray(rows, dtype=np.int32).reshape(-1, 3)
        self.lengths = np.asarray(lengths, dtype=np.int32)
        self.packed_lengths = np.asarray(packed, dtype=np.int32)

    # -- planning

    def _scan(self) -> Iterator[tuple[int, int, int, Record, list[bytes | None] | None]]:
        import pyarrow.parquet as pq

        for s, path in enumerate(self.shards):
            pf = pq.ParquetFile(path)
            columns = [c for c in (*RECORD_FIELDS, "image_bytes") if c in pf.schema_arrow.names]
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=columns)
                for r, row in enumerate(table.to_pylist()):
                    try:
                        record = record_from_row(row)
                    except ValueError as exc:
                        self.skipped.append({"id": row.get("id"), "reason": "bad_record",
                                             "detail": str(exc).splitlines()[0]})
                        continue
                    yield s, g, r, record, row.get("image_bytes")

    def _encode(self, record: Record, sizes: list[tuple[int, int]]
                ) -> tuple[Tokenized, Tokenized | None]:
        if self.preference:
            if record.kind != "preference":
                raise SkipSample("not_preference", f"record {record.id}: kind {record.kind}")
            chosen, rejected = self.chat.encode_preference(record, sizes, self.budget)
            return chosen, rejected
        if record.kind == "preference":
            raise SkipSample("preference_in_sft", f"record {record.id}: preference records "
                             "train in the dpo stage")
        return self.chat.encode(record, sizes, self.budget), None

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

    def sampler(self, seed: int) -> BlockShuffleSampler:
        return BlockShuffleSampler(self.row_groups, seed)

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
    """Row groups in a seeded random order, rows shuffled inside each (see the module
    docstring). `set_epoch(e)` re-draws the order for epoch e, deterministically."""

    def __init__(self, groups: list[np.ndarray], seed: int):
        self.groups = groups
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(sum(len(g) for g in self.groups))

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for k in rng.permutation(len(self.groups)):
            yield from rng.permutation(self.groups[k]).tolist()


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
