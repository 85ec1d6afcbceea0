"""Sequence packing with sample isolation: several whole samples per row, each attending
only to itself, so a batch holds real tokens instead of padding.

Rows (`pack_rows`): first-fit decreasing over the dataset's length index
(`ShardDataset.packed_lengths`, counted in the planning pass from the processor's
image-token arithmetic; nothing is decoded for it) into bins of `model.max_length`
tokens, within each source row group (a row's samples are read from one cached row
group). A row never splits a sample: samples are never truncated (the planning pass
skipped what cannot fit a row alone), and a preference pair (chosen + rejected: the
packing unit of dpo) longer than a row gets a row of its own. Rows are computed once;
the stage then measures samples per row, plans the step in rows from the recipe's
samples (`components.train.batching`) and equalises the launch's streams
(`PackedDataset.equalise_streams`): the row groups are dealt to the (rank, DataLoader
worker) streams once for the launch (seeded; never re-drawn per epoch) and rows of the
short streams are split in two, fullest first, until every stream holds the same whole
number of batches, so an epoch holds whole optimizer steps, every sample exactly once,
and every row group is read by one stream (bench/row_group_reads.py: at 128 ranks x 8
workers ~5% more rows, fill 0.985 -> 0.939, nothing left out or repeated). Only data too
small to split that far falls back to the sampler's balance (rows left out / repeated,
counted in the layout and the stage's packing record). One stream (one process, <= 1
worker): the number of rows is made a multiple of the rows per optimizer step
(`make_multiple`) by splitting the fullest rows. Per epoch the sampler re-draws only the
order of a stream's groups and of the rows inside them (`dataset.StreamSampler`).
Collated batches carry `packed_rows` (meta: rows in the micro-batch, for the step
metrics).

Isolation, by the attention implementation the language model runs (`attention_layout`):

- `mask` (sdpa, eager; CPU): rows padded to the longest, a 4-D mask `(B, 1, L, L)` that
  lets token i see token j only when both belong to the same sample and j <= i (bool for
  sdpa, additive float for eager; padding sees padding only, so no row is empty);
- `varlen` (flash_attention_2 / 3 on a GPU; `sdpa_varlen`, torch SDPA per segment, where
  flash-attn is missing: the default on CPU): the micro-batch's rows flattened into one
  `(1, T)` row without padding, with `cu_seq_lens_q/k` and `max_length_q/k` (the
  flash-attn varlen arguments transformers forwards to the attention function);
- anything else is refused (`ConfigError` naming `train.packing` and
  `model.attn_implementation`).

In both layouts `position_ids` restart at 0 for every sample, and the first label of
every sample is ignored, so no token is trained to predict the next sample's first
token: loss and gradients equal the unpacked batch's (the loss is normalised by the
label tokens of the global batch either way). A text-only sample's dummy image is
dropped (a padded row masks it out of attention and, with `dataset.position_ids`,
out of the positions, so nothing changes); a micro-batch with no real image at all gets
one blank dummy image as an isolated segment of its own, so every rank still calls the
vision tower (ZeRO-3). Images are ordered as their tokens are (rows, then samples), so
`masked_scatter` puts each image's features into its own sample.

Batches carry `segment_ids` (meta, `(B, L)`): 0 for padding and the dummy, else 1 + the
sample's index in the micro-batch in order (for dpo: chosen, rejected, chosen, ...),
which the engine's token statistics and the DPO log-prob sums read.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from components.errors import ConfigError
from components.train.chat import Tokenized
from components.train.data import IGNORE_INDEX
from components.train.dataset import (
    BlockShuffleSampler,
    Sample,
    ShardDataset,
    StreamSampler,
    lpt_assign,
    stream_step,
)

log = logging.getLogger(__name__)

# attention implementations that can isolate packed samples, and how
LAYOUTS: dict[str, str] = {
    "sdpa": "mask", "eager": "mask",
    "flash_attention_2": "varlen", "flash_attention_3": "varlen",
}


def text_attention(model) -> str:
    """The attention implementation the language model runs."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return str(getattr(text, "_attn_implementation", None) or "eager")


def attention_layout(model) -> str:
    """`mask` or `varlen` for the model's language-model attention (see the module
    docstring); `ConfigError` naming the settings for one that cannot isolate samples."""
    impl = text_attention(model)
    layout = LAYOUTS.get(impl)
    if layout is None:
        raise ConfigError(
            f"train.packing=true needs an attention implementation that keeps packed samples "
            f"apart, but the language model runs model.attn_implementation={impl!r}",
            "set model.attn_implementation to sdpa or eager (block-diagonal mask) or "
            "flash_attention_2 / flash_attention_3 (varlen), or train.packing: false")
    return layout


def register_layout(name: str, layout: str) -> None:
    """Declare an attention implementation registered with transformers'
    `AttentionInterface` as able to isolate samples in `layout` (`mask` or `varlen`)."""
    if layout not in ("mask", "varlen"):
        raise ValueError(f"layout must be mask or varlen, not {layout!r}")
    LAYOUTS[name] = layout


# ----------------------------------------------------------------------------- bins


def first_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int
                         ) -> list[list[int]]:
    """Bins of indices into `lengths`: longest first, each into the first bin it fits
    (a max segment tree over the bins' free space: O(n log n)). An item longer than
    `capacity` gets a bin of its own. Indices inside a bin are ascending."""
    lengths = [int(x) for x in lengths]
    n = len(lengths)
    if not n:
        return []
    size = 1
    while size < n:
        size *= 2
    free = [0] * (2 * size)  # free[node] = most free space of any bin below node
    for leaf in range(n):
        free[size + leaf] = capacity
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])
    bins: list[list[int]] = [[] for _ in range(n)]
    used = 0
    oversize: list[list[int]] = []
    for i in sorted(range(n), key=lambda k: (-lengths[k], k)):
        need = lengths[i]
        if need > capacity:
            oversize.append([i])
            continue
        node = 1
        while node < size:  # the leftmost bin with room: first fit
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        leaf = node - size
        bins[leaf].append(i)
        used = max(used, leaf + 1)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return oversize + [sorted(b) for b in bins[:used]]


def split_to_multiple(rows: list[list[int]], multiple: int, lengths: Sequence[int]
                      ) -> list[list[int]]:
    """`rows` with the fullest multi-sample rows split in two until their number is a
    multiple of `multiple` (as far as rows with two samples or more allow)."""
    rows = [list(r) for r in rows]
    while multiple > 1 and len(rows) % multiple:
        splittable = [k for k, r in enumerate(rows) if len(r) > 1]
        if not splittable:
            break
        k = max(splittable, key=lambda j: (sum(lengths[i] for i in rows[j]), -j))
        row = rows[k]
        rows[k], extra = row[: len(row) // 2], row[len(row) // 2:]
        rows.append(extra)
    return rows


def pack_rows(groups: Sequence[np.ndarray], lengths: np.ndarray, capacity: int,
              multiple: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(rows as arrays of sample indices, row indices per group): first-fit decreasing
    inside each group of sample indices, then `split_to_multiple` over all rows."""
    rows: list[list[int]] = []
    owner: list[int] = []
    for g, members in enumerate(groups):
        members = np.asarray(members)
        for b in first_fit_decreasing(lengths[members], capacity):
            rows.append(members[b].tolist())
            owner.append(g)
    before = len(rows)
    rows = split_to_multiple(rows, multiple, lengths)
    owner += [_group_of(rows[k][0], groups) for k in range(before, len(rows))]
    by_group: list[list[int]] = [[] for _ in groups]
    for k, g in enumerate(owner):
        by_group[g].append(k)
    return ([np.asarray(r, dtype=np.int64) for r in rows],
            [np.asarray(b, dtype=np.int64) for b in by_group if b])


@dataclass(frozen=True)
class StreamLayout:
    """Which rows each (rank, DataLoader worker) stream reads, fixed for one launch
    (`equalise_streams`). `launch`: (seed, world size, workers, batch size, accumulation)
    as the sampler is told them (workers >= 1); `streams[s]`: stream s's units (row
    indices, one array per row group it owns); `rows_per_stream`: the rows every stream
    yields per epoch; `rows_left_out` / `rows_repeated`: rows per epoch the fallback
    leaves out of long streams / repeats in short ones (0 and 0 unless the data is too
    small to equalise); `rows_added`: rows split off to equalise."""

    launch: tuple[int, int, int, int, int]
    streams: list[list[np.ndarray]]
    rows_per_stream: int
    rows_left_out: int
    rows_repeated: int
    rows_added: int


def equalise_streams(rows: list[np.ndarray], groups: Sequence[np.ndarray],
                     lengths: np.ndarray, *, seed: int, world_size: int, workers: int,
                     batch_size: int, accumulation: int
                     ) -> tuple[list[np.ndarray], StreamLayout, np.ndarray]:
    """(rows, layout, row -> index into `groups`): the row groups (`groups`: row indices
    into `rows`) dealt to the S = world size x max(1, workers) streams once, LPT over
    their row counts in a random order seeded by (seed, S, step), never the epoch, then
    rows of the short streams split in two, fullest first (`lengths`: tokens per
    sample), until every stream holds R rows, R = the longest stream's rows rounded up
    to the step, whole batches and whole accumulation steps per rank
    (`dataset.stream_step`): every row, so every sample, once per epoch, every group read
    by one stream. A stream whose rows
    are all single samples before reaching R cannot split further: then R is the length
    with the fewest rows left out plus repeated (ties: the longer), and those counts are
    recorded. With fewer groups than streams each group is first cut into ceil(S /
    groups) pieces (a group then has up to that many readers)."""
    workers = max(1, int(workers))
    n_streams = max(1, int(world_size)) * workers
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    owner = np.empty(len(rows), dtype=np.int64)
    for g, members in enumerate(groups):
        owner[members] = g
    row_group = owner.tolist()
    pieces = -(-n_streams // max(1, len(groups)))
    units = [p for g in groups for p in np.array_split(np.asarray(g, dtype=np.int64), pieces)
             if len(p)]
    # seeded by what the layout uses (streams, the step a stream's rows are a multiple
    # of), not (world size, workers, accumulation): launches with as many readers read the
    # same rows in the same order (1 process x 2 workers x 2 accumulation = 2 x 0 x 1)
    step = stream_step(batch_size, workers, accumulation)
    rng = np.random.default_rng([seed, n_streams, step])
    order = rng.permutation(len(units))
    owned = lpt_assign([len(units[k]) for k in order], n_streams)
    streams = [[units[order[i]].tolist() for i in mine] for mine in owned]
    loads = np.asarray([sum(len(u) for u in st) for st in streams], dtype=np.int64)
    caps = np.asarray([sum(len(rows[k]) for u in st for k in u) for st in streams],
                      dtype=np.int64)
    top = max(step, -(-int(loads.max(initial=0)) // step) * step)
    if caps.min(initial=0) >= top:
        target = top
    else:  # too little to split: the fewest rows left out + repeated, ties the longest
        sizes = np.arange(step, top + 1, step)
        cost = (np.clip(loads[None] - sizes[:, None], 0, None).sum(1)
                + np.clip(sizes[:, None] - caps[None], 0, None).sum(1))
        target = int(sizes[len(sizes) - 1 - int(np.argmin(cost[::-1]))])
    added = 0
    for st, load in zip(streams, loads.tolist(), strict=True):
        if load < target:
            added += _split_rows(rows, row_group, st, target - load, lengths)
    final = np.asarray([sum(len(u) for u in st) for st in streams], dtype=np.int64)
    layout = StreamLayout(
        launch=(int(seed), int(world_size), workers, int(batch_size), int(accumulation)),
        streams=[[np.asarray(u, dtype=np.int64) for u in st] for st in streams],
        rows_per_stream=target,
        rows_left_out=int(np.clip(final - target, 0, None).sum()),
        rows_repeated=int(np.clip(target - final, 0, None).sum()),
        rows_added=added)
    return rows, layout, np.asarray(row_group, dtype=np.int64)


def _split_rows(rows: list[np.ndarray], row_group: list[int], units: list[list[int]],
                wanted: int, lengths: np.ndarray) -> int:
    """Split the fullest multi-sample rows of `units` (one stream's) in two, the second
    half a new row of the same unit (so of the same row group), until `wanted` rows were
    added or none can split; `rows`, `row_group` (row -> group) and `units` grow in
    place. Returns the rows added."""
    heap = [(-int(lengths[rows[k]].sum()), k, u) for u, unit in enumerate(units)
            for k in unit if len(rows[k]) > 1]
    heapq.heapify(heap)
    added = 0
    while added < wanted and heap:
        _, k, u = heapq.heappop(heap)
        row = rows[k]
        first, second = row[: len(row) // 2], row[len(row) // 2:]
        rows[k] = first
        rows.append(second)
        new = len(rows) - 1
        row_group.append(row_group[k])
        units[u].append(new)
        added += 1
        for j, part in ((k, first), (new, second)):
            if len(part) > 1:
                heapq.heappush(heap, (-int(lengths[part].sum()), j, u))
    return added


def _group_of(index: int, groups: Sequence[np.ndarray]) -> int:
    return next(g for g, members in enumerate(groups) if index in set(members.tolist()))


class PackedDataset(Dataset):
    """Rows of whole samples of a `ShardDataset` (see the module docstring); item k is
    the list of row k's `Sample`s. `skipped` / `image_sizes_seen` are the base's."""

    batch_unit = "packed rows"  # what a global batch counts

    def __init__(self, base: ShardDataset, capacity: int, multiple: int = 1):
        self.base = base
        self.capacity = int(capacity)
        self.plan = None  # the BatchPlan resolved from these rows (stages.training_data)
        self.layout: StreamLayout | None = None  # rows per stream, fixed for the launch
        self.rows, self._groups = pack_rows(base.row_groups, base.packed_lengths,
                                            self.capacity, multiple)
        self.row_lengths = np.asarray([int(base.packed_lengths[r].sum()) for r in self.rows],
                                      dtype=np.int64)

    @property
    def skipped(self):
        return self.base.skipped

    @property
    def image_sizes_seen(self):
        return self.base.image_sizes_seen

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sample as attention sees them (the FLOPs' attention term)."""
        return self.base.packed_lengths

    @property
    def fill_ratio(self) -> float:
        """Real tokens of all rows over rows x capacity: the padded layout's real-token
        share at best (a batch pads to its longest row, not always to capacity)."""
        return float(self.row_lengths.sum() / (len(self.rows) * self.capacity)) \
            if self.rows else 0.0

    def __len__(self) -> int:
        return len(self.rows)

    def sampler(self, seed: int, *, world_size: int = 1, batch_size: int = 1,
                workers: int = 0, accumulation: int = 1) -> StreamSampler | BlockShuffleSampler:
        """The epoch order over the rows, rank-aware over their source row groups (each
        rank and DataLoader worker reads whole row groups): over the layout
        `equalise_streams` fixed when it was made for this launch (`StreamSampler`: every
        row once), else `BlockShuffleSampler` (its balance leaves rows out / repeats)."""
        launch = (int(seed), int(world_size), max(1, int(workers)), int(batch_size),
                  int(accumulation))
        if self.layout is not None and self.layout.launch == launch:
            return StreamSampler(self.layout.streams, self.layout.rows_per_stream, seed,
                                 batch_size=batch_size)
        if self.layout is not None:
            log.warning("packed rows were equalised for the launch %s (seed, world size, "
                        "workers, batch, accumulation) but are read by %s: rows may be left "
                        "out or repeated", self.layout.launch, launch)
        return BlockShuffleSampler(self._groups, seed, world_size=world_size,
                                   batch_size=batch_size, workers=workers,
                                   accumulation=accumulation)

    def equalise_streams(self, seed: int, *, world_size: int, workers: int, batch_size: int,
                         accumulation: int) -> StreamLayout | None:
        """Fix, for this launch, which rows each (rank, DataLoader worker) stream reads, and
        split rows of the short streams until every stream holds the same whole number of
        batches (`equalise_streams` the function): every row once per epoch, whole
        optimizer steps. One stream (one process, <= 1 worker): `make_multiple` of the
        global batch instead (no layout). Returns the layout (also kept as `layout`, which
        `sampler` uses when asked for the same launch)."""
        if int(world_size) * max(1, int(workers)) == 1:
            self.layout = None
            self.make_multiple(int(batch_size) * int(accumulation))
            return None
        rows, layout, row_group = equalise_streams(
            self.rows, self._groups, self.base.packed_lengths, seed=seed,
            world_size=world_size, workers=workers, batch_size=batch_size,
            accumulation=accumulation)
        order = np.argsort(row_group, kind="stable")
        bounds = np.searchsorted(row_group[order], np.arange(len(self._groups) + 1))
        self.rows = rows
        self._groups = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                        if b > a]
        self.row_lengths = np.asarray([int(self.base.packed_lengths[r].sum())
                                       for r in self.rows], dtype=np.int64)
        self.layout = layout
        return layout

    def make_multiple(self, multiple: int) -> None:
        """Split the fullest rows until their number is a multiple of `multiple` (the
        rows of one optimizer step, `stages.training_data`): whole global batches."""
        groups = self._groups
        rows = split_to_multiple([r.tolist() for r in self.rows], multiple,
                                 self.base.packed_lengths)
        before = len(self.rows)
        owner = np.empty(before, dtype=np.int64)  # row -> group, rows as packed
        for g, members in enumerate(groups):
            owner[members] = g
        of_sample = {int(i): int(owner[k]) for k in range(before) for i in self.rows[k]}
        owner = [*owner.tolist(), *(of_sample[rows[k][0]] for k in range(before, len(rows)))]
        by_group: list[list[int]] = [[] for _ in groups]
        for k, g in enumerate(owner):
            by_group[g].append(k)
        self.rows = [np.asarray(r, dtype=np.int64) for r in rows]
        self._groups = [np.asarray(b, dtype=np.int64) for b in by_group if b]
        self.row_lengths = np.asarray([int(self.base.packed_lengths[r].sum())
                                       for r in self.rows], dtype=np.int64)

    def __getitem__(self, k: int) -> list[Sample]:
        return [self.base[int(i)] for i in self.rows[k]]


# ----------------------------------------------------------------------------- collation


@dataclass
class _Segment:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixels: list[torch.Tensor]
    image_sizes: list[tuple[int, int]]
    real: bool  # a sample's tokens (not the dummy image)


def _segment(tokens: Tokenized, pixels: list[torch.Tensor]) -> _Segment:
    """A sample as a packed segment: its dummy image dropped, its first label ignored."""
    ids, labels = tokens.input_ids, tokens.labels.clone()
    images, sizes = list(pixels), list(tokens.image_sizes)
    if tokens.dummy_image:
        keep = tokens.attention_mask.bool()
        ids, labels = ids[keep], labels[keep]
        images, sizes = [], []
    labels[:1] = IGNORE_INDEX
    return _Segment(ids, labels, images, sizes, True)


class PackedCollator:
    """`collate_fn` for `PackedDataset` rows in the `mask` or `varlen` layout (see the
    module docstring); picklable for DataLoader workers. `dummy_tokens` / `dummy_tiles` /
    `tile_side`: the blank image a micro-batch without real images gets (one base tile:
    `ChatFormat.image_cost((tile_side, tile_side))`)."""

    def __init__(self, pad_token_id: int, image_token_id: int, layout: str, *,
                 dummy_tokens: int, dummy_tiles: int, tile_side: int,
                 mask_kind: str = "bool"):
        if layout not in ("mask", "varlen"):
            raise ValueError(f"layout must be mask or varlen, not {layout!r}")
        if mask_kind not in ("bool", "additive"):
            raise ValueError(f"mask_kind must be bool or additive, not {mask_kind!r}")
        self.pad_token_id = pad_token_id
        self.image_token_id = image_token_id
        self.layout = layout
        self.mask_kind = mask_kind
        self.dummy_tokens = dummy_tokens
        self.dummy_tiles = dummy_tiles
        self.tile_side = tile_side

    @classmethod
    def for_model(cls, model, chat, pad_token_id: int) -> PackedCollator:
        """The collator for `model`'s attention (`attention_layout`) and `chat`'s tiles."""
        layout = attention_layout(model)
        tiles, tokens = chat.image_cost((chat.tile_side, chat.tile_side))
        kind = "additive" if text_attention(model) == "eager" else "bool"
        return cls(pad_token_id, chat.image_token_id, layout, dummy_tokens=tokens,
                   dummy_tiles=tiles, tile_side=chat.tile_side, mask_kind=kind)

    def _dummy(self) -> _Segment:
        n = self.dummy_tokens
        return _Segment(torch.full((n,), self.image_token_id, dtype=torch.long),
                        torch.full((n,), IGNORE_INDEX, dtype=torch.long),
                        [torch.zeros(self.dummy_tiles, 3, self.tile_side, self.tile_side)],
                        [(self.tile_side, self.tile_side)], False)

    def __call__(self, rows: list[list[Sample]]) -> dict[str, torch.Tensor]:
        packed: list[list[_Segment]] = []
        for row in rows:
            segments = []
            for sample in row:
                segments.append(_segment(sample.tokens, sample.pixel_values))
                if sample.rejected is not None:
                    segments.append(_segment(sample.rejected, sample.pixel_values))
            packed.append(segments)
        samples = [s for row in rows for s in row]
        if not any(s.real_images for s in samples):  # every rank calls the vision tower
            shortest = min(range(len(packed)), key=lambda k: sum(len(g.input_ids)
                                                                  for g in packed[k]))
            packed[shortest].append(self._dummy())
        batch = self._varlen(packed) if self.layout == "varlen" else self._mask(packed)
        segments = [g for row in packed for g in row]
        flat = [t for g in segments for t in g.pixels]
        most = max(t.shape[0] for t in flat)
        pixel_values = torch.zeros((len(flat), most, *flat[0].shape[1:]), dtype=flat[0].dtype)
        for i, t in enumerate(flat):
            pixel_values[i, : t.shape[0]] = t
        batch["pixel_values"] = pixel_values
        batch["image_sizes"] = torch.tensor([hw for g in segments for hw in g.image_sizes],
                                            dtype=torch.long).reshape(-1, 2)
        batch["real_images"] = torch.tensor([s.real_images for s in samples])
        batch["sample_index"] = torch.tensor([s.index for s in samples])
        batch["packed_rows"] = torch.tensor(len(rows))  # rows per step, for the step metrics
        return batch

    @staticmethod
    def _ids(segments: list[_Segment], start: int) -> list[torch.Tensor]:
        """Per segment: 0 for the dummy, else 1 + its index among the real segments."""
        out, k = [], start
        for g in segments:
            if g.real:
                k += 1
            out.append(torch.full((len(g.input_ids),), k if g.real else 0, dtype=torch.long))
        return out

    def _varlen(self, packed: list[list[_Segment]]) -> dict[str, torch.Tensor]:
        segments = [g for row in packed for g in row]
        lengths = [len(g.input_ids) for g in segments]
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
        longest = max(lengths)
        return {
            "input_ids": torch.cat([g.input_ids for g in segments]).unsqueeze(0),
            "labels": torch.cat([g.labels for g in segments]).unsqueeze(0),
            "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
            "segment_ids": torch.cat(self._ids(segments, 0)).unsqueeze(0),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(),
            "max_length_q": longest, "max_length_k": longest,
        }

    def _mask(self, packed: list[list[_Segment]]) -> dict[str, torch.Tensor]:
        width = max(sum(len(g.input_ids) for g in row) for row in packed)
        b = len(packed)
        input_ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        segment_ids = torch.zeros((b, width), dtype=torch.long)
        blocks = torch.zeros((b, width), dtype=torch.long)  # 0 = padding, k = k-th segment
        start = 0
        for r, row in enumerate(packed):
            ids = self._ids(row, start)
            start += sum(g.real for g in row)
            at = 0
            for k, (g, seg) in enumerate(zip(row, ids, strict=True)):
                n = len(g.input_ids)
                input_ids[r, at: at + n] = g.input_ids
                labels[r, at: at + n] = g.labels
                positions[r, at: at + n] = torch.arange(n)
                segment_ids[r, at: at + n] = seg
                blocks[r, at: at + n] = k + 1
                at += n
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (blocks[:, :, None] == blocks[:, None, :]) & causal
        mask = allowed.unsqueeze(1)
        if self.mask_kind == "additive":
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
        return {"input_ids": input_ids, "labels": labels, "position_ids": positions,
                "segment_ids": segment_ids, "attention_mask": mask}


def segment_sums(values: torch.Tensor, segment_ids: torch.Tensor, n_segments: int
                 ) -> torch.Tensor:
    """(n_segments,) sums of `values` over the positions of segments 1..n_segments
    (`segment_ids` as the collator writes them, same shape as `values`; 0 is dropped)."""
    out = torch.zeros(n_segments + 1, dtype=values.dtype, device=values.device)
    out.index_add_(0, segment_ids.reshape(-1), values.reshape(-1))
    return out[1:]


# ----------------------------------------------------------------------------- attention

SDPA_VARLEN = "sdpa_varlen"


def sdpa_varlen_attention(module, query, key, value, attention_mask, scaling=None,
                          dropout=0.0, cu_seq_lens_q=None, **kwargs):
    """flash-attn varlen semantics with torch SDPA, on any device: causal attention inside
    each `cu_seq_lens_q` segment of the flattened `(1, T)` row, nothing across them, so
    attention costs the sum of the samples' squared lengths (a block-diagonal mask costs
    the row's). Registered as `sdpa_varlen` (`register_sdpa_varlen`): what packing runs
    where flash-attn is not installed (every CPU). Packed batches only."""
    if cu_seq_lens_q is None:
        raise ValueError(f"attention {SDPA_VARLEN!r} runs packed varlen batches only (no "
                         "cu_seq_lens_q in this batch): train unpacked with sdpa")
    gqa = query.shape[1] != key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    parts = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling,
        enable_gqa=gqa) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register_sdpa_varlen() -> str:
    """Register `sdpa_varlen_attention` with transformers' `AttentionInterface` (packing
    layout `varlen`) and return its name, `sdpa_varlen`."""
    from transformers import AttentionInterface

    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
    register_layout(SDPA_VARLEN, "varlen")
    return SDPA_VARLEN


def packing_attention(setting: str, runtime_choice: str) -> str:
    """The attention packing trains with: `model.attn_implementation` when set, else the
    runtime's choice (flash_attention_2 on a GPU with flash-attn), where that is plain sdpa
    the `sdpa_varlen` kernel (same results as sdpa's block-diagonal mask, without
    computing the masked blocks: bench/train_throughput.py)."""
    if setting != "auto":
        return register_sdpa_varlen() if setting == SDPA_VARLEN else setting
    return register_sdpa_varlen() if runtime_choice == "sdpa" else runtime_choice


@contextmanager
def training_attention(model, setting: str, packing: bool) -> Iterator[str]:
    """Run the language model with the attention training uses (`packing_attention` when
    packing, else `model.attn_implementation` / the runtime's) and yield its name; on exit
    restore the one it had, so scoring, evaluation and the saved model use plain attention.
    A packed run with one that cannot isolate samples raises `ConfigError`."""
    from components.model.build import set_text_attention

    before = text_attention(model)
    wanted = packing_attention(setting, before) if packing else setting
    chosen = set_text_attention(model, wanted)
    try:
        if packing:
            attention_layout(model)
        yield chosen
    finally:
        if chosen != before:
            set_text_attention(model, before)
