"""What an optimizer step holds and how long a stage takes: tokens / samples / rows per
step, steps per epoch, hours, GPU-hours and cost.

Batch sizes come from `components.train.batching.resolve_batch` (the engine's own
resolution): unpacked, samples per step = `<stage>.global_batch_size` and a row is a
sample; packed, rows per step are derived from the samples per row (measured by a run's
length index, else `plan.pack_fill x model.max_length / tokens_per_sample`) and samples
per step = rows x samples per row. Steps per epoch drop the last partial batch (the
Trainer's `dataloader_drop_last`). Hours = model FLOPs of all steps / (MFU x peak x GPUs):
the MFU is the assumed share of peak that model FLOPs (`flops.Flops.model`) reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components.train.batching import BatchPlan, PackingShape, resolve_batch


@dataclass(frozen=True)
class Schedule:
    batch: BatchPlan
    samples_per_step: float
    rows_per_step: float
    tokens_per_step: float
    steps_per_epoch: int
    steps: int
    samples_per_row: float | None


def schedule(settings: Any, stage: str, world: int, samples: int, tokens_per_sample: float,
             samples_per_row: float | None = None) -> Schedule:
    """The step of `stage` on `world` processes over `samples` samples (pairs) of
    `tokens_per_sample` tokens; `ConfigError` where the batch cannot be resolved."""
    train = settings.stage_train(stage)
    e = settings.engine
    row = settings.model.max_length
    if e.packing:
        spr = samples_per_row or max(1.0, settings.plan.pack_fill * row / tokens_per_sample)
        mbt = getattr(e, "micro_batch_tokens", None) or row
        plan = resolve_batch(train, world, stage,
                             PackingShape(spr, row, mbt, e.packed_batch_tolerance))
        samples_step = float(plan.samples_per_step or plan.global_batch_size * spr)
        rows = float(plan.global_batch_size)
    else:
        spr = None
        plan = resolve_batch(train, world, stage)
        samples_step = rows = float(plan.global_batch_size)
    per_epoch = int(samples // samples_step) if samples_step else 0
    return Schedule(plan, samples_step, rows, samples_step * tokens_per_sample, per_epoch,
                    per_epoch * train.epochs, spr)


def hours(total_model_flops: float, mfu: float, peak_flops: float | None,
          gpus: int) -> float | None:
    """Wall-clock hours at `mfu` of `gpus` x `peak_flops`; None without a known peak."""
    if not peak_flops:
        return None
    return total_model_flops / (mfu * peak_flops * gpus) / 3600.0


def cost(gpu_hours: float | None, price_per_gpu_hour: float) -> float | None:
    return None if gpu_hours is None else round(gpu_hours * price_per_gpu_hour, 2)


def index_seconds(samples: int, seconds_per_sample: float, cores: int) -> float:
    """Projected time to build a stage's length index on `cores` cores."""
    return math.ceil(samples * seconds_per_sample / max(cores, 1))
