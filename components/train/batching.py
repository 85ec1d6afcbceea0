"""What one optimizer step holds: the batch plan of a training launch.

`train.<stage>.global_batch_size` is the recipe's batch: samples (dpo: preference pairs)
per optimizer step, all processes together. `resolve_batch` turns it into what the
Trainer runs, a `BatchPlan` (recorded in the stage manifest):

- **unpacked**: per-device batch x gradient accumulation x world size = the global batch
  exactly; `per_device_batch_size: null` = global / world size (no accumulation); a batch
  that does not divide is a `ConfigError` naming the setting.
- **packed** (`train.packing`): a micro-batch item is a whole packed row of up to
  `model.max_length` tokens, so a micro-batch is bounded by tokens, not items: rows per
  micro-batch = max(1, `train.micro_batch_tokens` // row tokens) (null = one row). The
  recipe's samples per step become rows per step through the samples per row the packing
  measured (`PackingShape.samples_per_row`): accumulation = max(1, round(rows wanted /
  (rows per micro-batch x world size))). The plan then counts rows (`unit="rows"`,
  `global_batch_size` = rows per optimizer step) and `samples_per_step` = rows x samples
  per row, the recipe's batch as nearly as whole rows allow. A set
  `per_device_batch_size` under packing is a `ConfigError` (set it to null). So is a plan
  whose samples per step miss the recipe's by more than `PackingShape.tolerance`
  (`train.packed_batch_tolerance`): e.g. the paper's sft batch of 128 samples on 128 GPUs,
  where one 16k row per GPU already holds ~620 samples per step (~5x the recipe, at the
  recipe's learning rate and warm-up). The error names the world sizes that would keep
  the recipe and the settings that would change it instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from components.errors import ConfigError
from components.settings import TrainSettings


@dataclass(frozen=True)
class BatchPlan:
    """The batch sizes as resolved for this launch (recorded in the stage manifest).

    `per_device_batch_size` / `global_batch_size` count `unit` items: samples (pairs), or
    packed rows under packing, where `samples_per_step` is the planned samples (pairs) per
    optimizer step and `micro_batch_tokens` the token bound of a micro-batch."""

    world_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int
    unit: str = "samples"
    samples_per_step: float | None = None
    micro_batch_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PackingShape:
    """What packing measured: samples (pairs) per packed row on average, the row length
    (`model.max_length`) and the tokens of one micro-batch per device."""

    samples_per_row: float
    row_tokens: int
    micro_batch_tokens: int
    tolerance: float | None = 0.25  # refuse a plan this far from the recipe (None: never)


def resolve_batch(train: TrainSettings, world_size: int, stage: str,
                  packing: PackingShape | None = None) -> BatchPlan:
    """The `BatchPlan` giving `train.global_batch_size` on `world_size` processes (see the
    module docstring); `ConfigError` naming the setting when it cannot."""
    if packing is not None:
        return _packed(train, world_size, stage, packing)
    g = train.global_batch_size
    per = train.per_device_batch_size
    if per is None:
        if g % world_size:
            raise ConfigError(
                f"{stage}.global_batch_size={g} does not split over {world_size} processes",
                f"set {stage}.per_device_batch_size, or a global batch that is a multiple "
                f"of {world_size}",
            )
        per = g // world_size
    if g % (per * world_size):
        raise ConfigError(
            f"{stage}.global_batch_size={g} is not a multiple of per_device_batch_size={per} "
            f"x world size {world_size}",
            f"choose a global batch that is a multiple of {per * world_size}, or another "
            f"{stage}.per_device_batch_size",
        )
    return BatchPlan(world_size, per, g // (per * world_size), g)


def _packed(train: TrainSettings, world_size: int, stage: str,
            shape: PackingShape) -> BatchPlan:
    if train.per_device_batch_size is not None:
        raise ConfigError(
            f"{stage}.per_device_batch_size={train.per_device_batch_size} is set, but with "
            "train.packing a micro-batch item is a whole packed row: the micro-batch is "
            "bounded by tokens (train.micro_batch_tokens)",
            f"set {stage}.per_device_batch_size: null (and train.micro_batch_tokens for more "
            "than one row per micro-batch)")
    if shape.samples_per_row <= 0 or shape.row_tokens <= 0:
        raise ConfigError(f"{stage}: packing produced no rows to plan a batch from",
                          "add data to the mix, or train with train.packing: false")
    per = max(1, shape.micro_batch_tokens // shape.row_tokens)
    rows_wanted = train.global_batch_size / shape.samples_per_row
    accumulation = max(1, round(rows_wanted / (per * world_size)))
    rows = per * world_size * accumulation
    samples = rows * shape.samples_per_row
    drift = samples / train.global_batch_size - 1
    if shape.tolerance is not None and abs(drift) > shape.tolerance:
        raise ConfigError(
            f"{stage}: {rows} packed rows per step ({per} per micro-batch x {world_size} "
            f"processes x {accumulation} accumulation) hold ~{samples:.0f} samples "
            f"({shape.samples_per_row:.2f} per {shape.row_tokens}-token row), not "
            f"{stage}.global_batch_size={train.global_batch_size}: {drift:+.0%}, beyond "
            f"train.packed_batch_tolerance={shape.tolerance}",
            _batch_fix(train, world_size, stage, shape))
    return BatchPlan(world_size, per, accumulation, rows, unit="rows",
                     samples_per_step=round(samples, 3),
                     micro_batch_tokens=per * shape.row_tokens)


def _within(train: TrainSettings, world: int, shape: PackingShape) -> float | None:
    """Samples per step of a packed plan on `world` processes, when within tolerance."""
    per = max(1, shape.micro_batch_tokens // shape.row_tokens)
    rows_wanted = train.global_batch_size / shape.samples_per_row
    rows = per * world * max(1, round(rows_wanted / (per * world)))
    samples = rows * shape.samples_per_row
    tolerance = shape.tolerance if shape.tolerance is not None else float("inf")
    return samples if abs(samples / train.global_batch_size - 1) <= tolerance else None


def _batch_fix(train: TrainSettings, world_size: int, stage: str, shape: PackingShape) -> str:
    """How to bring a packed plan back to the recipe: the world sizes (up to this one) that
    come closest to it, the closest whole node of 8 GPUs among them, else the settings that
    change the recipe instead."""
    fits = {w: _within(train, w, shape) for w in range(1, world_size + 1)}
    fits = {w: n for w, n in fits.items() if n is not None}
    options = []
    if fits:
        def drift(w: int) -> tuple[float, int]:
            return abs(fits[w] / train.global_batch_size - 1), -w

        best = min(fits, key=drift)
        options.append(f"run {stage} on {best} processes (~{fits[best]:.0f} samples per step)")
        nodes = [w for w in fits if w % 8 == 0 and w != best]
        if nodes:
            w = min(nodes, key=drift)
            options.append(f"or on {w} (~{fits[w]:.0f})")
    rows = max(1, shape.micro_batch_tokens // shape.row_tokens) * world_size
    options.append(f"or set {stage}.global_batch_size to ~{rows * shape.samples_per_row:.0f} "
                   "(a recipe change: scale the learning rate with it)")
    options.append("or raise train.packed_batch_tolerance")
    return "; ".join(options)
