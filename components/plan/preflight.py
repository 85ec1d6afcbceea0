"""The pre-flight: plan every training stage of a recipe and refuse, in one line, what
cannot run, before any GPU hour is spent.

`plan_run(settings, ...)` returns a `StagePlan` per stage (memory parts and peak per GPU,
tokens / samples / rows per optimizer step, steps, hours, GPU-hours, cost, fits);
`check(plans)` raises the first refusal as a `ConfigError` naming the stage, the part
that overflows and the setting to change. Three callers:

- `amalia-vl plan` (the cluster of `plan:` settings or `--gpus/--gpu`, the configured
  `train.strategy`);
- `preflight_stage(settings, stage, run_dir)`: before a training stage's function runs
  (`components.stages.run_stage`), at this launch's world size on the detected GPU; on a
  CPU box the capacity is host RAM shared by the launch's processes, with the strategy
  and precision the engine falls back to there (ddp, fp32);
- `preflight_retrain(...)`: at the start of `retrain`, before validate and translate,
  for every training stage it will run (on the `plan:` cluster when the stages are
  dispatched to a GPU pool, else on this machine as `preflight_stage`).

Refusals: a stage whose peak exceeds its GPU's memory; a batch that does not resolve
(`resolve_batch`'s own error); `model.max_length` above the LM's
`max_position_embeddings`; `train.ddp_timeout_s` below the projected length-index time of
a stage whose index is not built yet (ranks would wait in a collective that long).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import ConfigError
from components.plan import gpus as gpu_table
from components.plan.flops import pair_flops, sample_flops
from components.plan.memory import MemoryPlan, plan_memory
from components.plan.schedule import Schedule, cost, hours, index_seconds, schedule
from components.plan.shapes import ModelShapes, max_tiles_per_image

log = logging.getLogger(__name__)
STAGES = ("align", "sft", "dpo")

# the setting that lowers each memory part, for the one-line refusal
FIXES = {
    "activations": "set train.gradient_checkpointing: true, or lower train.micro_batch_tokens "
                   "(packing) / <stage>.per_device_batch_size",
    "logits": "set train.loss_chunk_tokens (e.g. 4096), or lower train.micro_batch_tokens",
    "vision": "lower train.max_tiles or train.micro_batch_tokens, or set "
              "train.gradient_checkpointing: true",
    "weights": "use train.strategy: zero3 (shards weights), or more GPUs (--gpus)",
    "gradients": "use train.strategy: zero3, or more GPUs (--gpus)",
    "optimizer": "use train.strategy: zero3, or more GPUs (--gpus)",
    "overhead": "lower plan.overhead_gib only if you measured it",
}


@dataclass
class Target:
    """Where a stage is planned to run."""

    gpus: int
    gpu: gpu_table.Gpu | None  # None: CPU (or an unknown GPU: no peak)
    capacity_gib: float  # memory per process
    strategy: str
    precision: str
    label: str


@dataclass
class StagePlan:
    stage: str
    target: Target
    memory: MemoryPlan
    sched: Schedule
    model_flops_per_step: float
    hardware_flops_per_step: float
    hours: float | None
    tokens_per_sample: float
    samples: int
    index_seconds: float | None = None  # None: the run's index exists (measured)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.peak_gib <= self.target.capacity_gib

    @property
    def gpu_hours(self) -> float | None:
        return None if self.hours is None else self.hours * self.target.gpus

    def as_json(self, price: float) -> dict[str, Any]:
        r = lambda x, n=3: None if x is None else round(float(x), n)  # noqa: E731
        return {
            "peak_gib": r(self.memory.peak_gib),
            "parts_gib": {k: r(v) for k, v in self.memory.parts_gib.items()},
            "tokens_per_step": r(self.sched.tokens_per_step, 1),
            "samples_per_step": r(self.sched.samples_per_step, 2),
            "rows_per_step": r(self.sched.rows_per_step, 2),
            "steps_per_epoch": self.sched.steps_per_epoch,
            "hours": r(self.hours),
            "gpu_hours": r(self.gpu_hours, 1),
            "cost": cost(self.gpu_hours, price),
            "fits": self.fits,
        }


def host_ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / float(1 << 30)


def _precision(settings: Any, gpu: gpu_table.Gpu | None) -> str:
    p = settings.engine.precision
    if p == "auto":
        return "bf16" if gpu is not None else "fp32"
    return p


def planned_target(settings: Any, stage: str, gpus: int | None = None,
                   gpu: str | None = None) -> Target:
    """The cluster `plan:` (or the flags) names for `stage`."""
    ps = getattr(settings.plan, stage)
    n = gpus or ps.gpus
    key = gpu or ps.gpu
    if key is None:
        return local_target(settings, n)
    found = gpu_table.by_key(key)
    if found is None:
        raise ConfigError(f"plan.{stage}.gpu / --gpu {key!r} is not a known GPU type",
                          "use one of: " + ", ".join(g.key for g in gpu_table.GPUS))
    return Target(n, found, found.memory_gib, settings.engine.strategy,
                  _precision(settings, found), found.key)


def local_target(settings: Any, world: int) -> Target:
    """This machine at `world` processes: the detected GPU, else host RAM shared by the
    processes, with the strategy and precision the engine falls back to on a CPU."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        found = gpu_table.BY_NAME.get(name)
        capacity = torch.cuda.get_device_properties(0).total_memory / float(1 << 30)
        if found is None:
            log.warning("GPU %r has no peak FLOP/s in components.plan.gpus: no hours or MFU",
                        name)
        return Target(world, found, capacity, settings.engine.strategy,
                      _precision(settings, found or gpu_table.GPUS[0]), name)
    return Target(world, None, host_ram_gib() / max(world, 1), "ddp",
                  "fp32" if settings.engine.precision == "auto" else
                  settings.engine.precision, "cpu")


@dataclass(frozen=True)
class Measured:
    """What a run's length index says of a stage's data (kept samples only)."""

    samples: int
    tokens_per_sample: float
    tiles_per_sample: float
    samples_per_row: float | None  # packing: first-fit decreasing over a sample of rows


# packing's samples per row are estimated on at most this many samples (FFD is O(n log n)
# in Python; the mean over 200k samples is stable to well under 1%)
PACK_SAMPLE = 200_000


def measured_lengths(run_dir: Path | None, stage: str,
                     settings: Any | None = None) -> Measured | None:
    """The newest length index of `stage` in `<run>/length_index/<stage>/` (written by
    `components.train.length_index` beside the mix), or None when the run has none."""
    if run_dir is None:
        return None
    folder = Path(run_dir) / "length_index" / stage
    found = sorted(folder.glob("*.npz"), key=lambda f: f.stat().st_mtime) \
        if folder.is_dir() else []
    if not found:
        return None
    import numpy as np

    try:
        with np.load(found[-1], allow_pickle=False) as z:
            entries = z["entries"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    kept = entries[entries[:, 6] >= 0] if entries.ndim == 2 and entries.shape[1] >= 7 \
        else None
    if kept is None or not len(kept):
        return None
    spr = None
    if settings is not None and settings.engine.packing:
        from components.train.packing import first_fit_decreasing

        packed = kept[:, 4]
        if len(packed) > PACK_SAMPLE:
            packed = np.random.default_rng(0).choice(packed, PACK_SAMPLE, replace=False)
        rows = first_fit_decreasing(packed, settings.model.max_length)
        spr = len(packed) / max(len(rows), 1)
    return Measured(len(kept), float(kept[:, 3].mean()), float(kept[:, 5].mean()), spr)


def index_cached(run_dir: Path | None, stage: str) -> bool:
    """Whether `stage`'s length index already exists beside the run's shards."""
    return measured_lengths(run_dir, stage) is not None


def plan_stage(settings: Any, stage: str, target: Target, run_dir: Path | None = None,
               samples: int | None = None) -> StagePlan:
    """The plan of one training stage on `target` (see the module docstring)."""
    check_model(settings)
    ps = getattr(settings.plan, stage)
    train, e = settings.stage_train(stage), settings.engine
    shapes = ModelShapes.from_settings(settings)
    measured = measured_lengths(run_dir, stage, settings)
    tps = measured.tokens_per_sample if measured else ps.tokens_per_sample
    tiles = measured.tiles_per_sample if measured else ps.tiles_per_sample
    spr = measured.samples_per_row if measured else None
    n_samples = samples or (measured.samples if measured else ps.samples)
    sched = schedule(settings, stage, target.gpus, n_samples, tps, spr)
    dpo = stage == "dpo"
    # a micro-batch per GPU: tokens, and the most tiles those tokens can carry
    per_image = e.max_tiles or max_tiles_per_image(settings)
    if e.packing:
        mb_tokens = sched.batch.micro_batch_tokens or settings.model.max_length
        mb_tiles = max(1, mb_tokens // (shapes.vision.patches_per_tile + 1)) * per_image
        seq_tokens = settings.model.max_length
    else:
        seqs = sched.batch.per_device_batch_size * (2 if dpo else 1)
        mb_tokens = seqs * settings.model.max_length
        mb_tiles = seqs * per_image
        seq_tokens = settings.model.max_length
    memory = plan_memory(
        shapes, trainable=train.trainable, strategy=target.strategy, world=target.gpus,
        precision=target.precision, micro_batch_tokens=int(mb_tokens),
        micro_batch_tiles=int(mb_tiles), checkpointing=e.gradient_checkpointing,
        loss_chunk_tokens=int(getattr(e, "loss_chunk_tokens", 0) or 0),
        overhead_gib=settings.plan.overhead_gib if target.gpu or target.label != "cpu" else 0.0,
        attn_implementation=settings.model.attn_implementation, sequence_tokens=seq_tokens)
    if dpo and not train.precompute_ref_log_probs:  # a frozen reference copy beside
        ref = sum(shapes.part_params().values()) * (2 if target.strategy != "ddp" else 4)
        if target.strategy in ("zero3", "fsdp"):
            ref /= target.gpus
        memory.parts_gib["weights"] += ref / float(1 << 30)
    per = (pair_flops if dpo else sample_flops)(shapes, tps, tiles,
                                                train.trainable, e.gradient_checkpointing)
    step_model = per.model * sched.samples_per_step
    step_hw = per.hardware * sched.samples_per_step
    peak = target.gpu.peak_bf16_flops if target.gpu else None
    h = hours(step_model * sched.steps, ps.mfu, peak, target.gpus)
    idx = None if measured else index_seconds(
        n_samples, settings.plan.index_seconds_per_sample, settings.plan.index_cores)
    return StagePlan(stage, target, memory, sched, step_model, step_hw, h, tps, n_samples,
                     idx)


def plan_run(settings: Any, *, gpus: int | None = None, gpu: str | None = None,
             run_dir: Path | None = None,
             stages: tuple[str, ...] = STAGES) -> dict[str, StagePlan]:
    """Every stage's plan on its `plan:` cluster (or `gpus` / `gpu` for all)."""
    return {s: plan_stage(settings, s, planned_target(settings, s, gpus, gpu), run_dir)
            for s in stages}


def refusal(plan: StagePlan, settings: Any) -> ConfigError | None:
    """The one-line refusal of a stage plan, or None when it can run."""
    if not plan.fits:
        part = plan.memory.largest_part()
        t = plan.target
        return ConfigError(
            f"{plan.stage} cannot fit: {plan.memory.peak_gib:.1f} GiB per "
            f"{'process' if t.label == 'cpu' else 'GPU'} needed, {t.label} has "
            f"{t.capacity_gib:.1f} GiB; largest part {part} "
            f"{plan.memory.parts_gib[part]:.1f} GiB ({t.strategy}, {t.gpus} x {t.label})",
            FIXES[part].replace("<stage>", plan.stage))
    timeout = settings.engine.ddp_timeout_s
    if plan.index_seconds is not None and plan.target.gpus > 1 and \
            plan.index_seconds > timeout:
        return ConfigError(
            f"{plan.stage}: train.ddp_timeout_s={timeout} is below the projected "
            f"length-index time ({plan.index_seconds:.0f} s for "
            f"{plan.samples} samples on "
            f"{settings.plan.index_cores} cores): ranks would time out waiting for it",
            f"raise train.ddp_timeout_s above {int(plan.index_seconds * 1.5)}, or build the "
            "index before the launch")
    return None


def check(plans: dict[str, StagePlan], settings: Any) -> None:
    """Raise the first stage's refusal (`ConfigError`)."""
    for plan in plans.values():
        err = refusal(plan, settings)
        if err is not None:
            raise err


def check_model(settings: Any) -> None:
    """`model.max_length` must fit the LM's positions (`model.text.max_position_embeddings`:
    the built config, or the pretrained LM's stated one)."""
    m = settings.model
    if m.max_length > m.text.max_position_embeddings:
        raise ConfigError(
            f"model.max_length={m.max_length} exceeds the language model's "
            f"max_position_embeddings={m.text.max_position_embeddings} "
            f"(model.text.max_position_embeddings)",
            f"lower model.max_length to <= {m.text.max_position_embeddings}, or use an LM "
            "with longer positions")


def preflight_stage(settings: Any, stage: str, run_dir: Path | None = None,
                    world: int | None = None) -> StagePlan | None:
    """The pre-flight of one training stage at this launch (see the module docstring);
    raises the refusal, returns the plan (None when `plan.preflight` is off)."""
    if not settings.plan.preflight or stage not in STAGES:
        return None
    from components.train.distributed import world as this_world

    n = world or this_world().world_size
    plan = plan_stage(settings, stage, local_target(settings, n), run_dir,
                      samples=None)
    err = refusal(plan, settings)
    if err is not None:
        raise err
    log.info("%s pre-flight: peak %.2f GiB of %.1f (%s)", stage, plan.memory.peak_gib,
             plan.target.capacity_gib, plan.target.label)
    return plan


def preflight_retrain(settings: Any, stages: tuple[str, ...], run_dir: Path | None = None,
                      world: int = 1) -> dict[str, StagePlan]:
    """The pre-flight of `retrain`: every training stage among `stages`, on the `plan:`
    cluster when training is dispatched to a GPU pool, else on this machine."""
    wanted = tuple(s for s in stages if s in STAGES)
    if not settings.plan.preflight or not wanted:
        return {}
    check_model(settings)
    if settings.orchestration.training_deployment:
        plans = plan_run(settings, run_dir=run_dir, stages=wanted)
    else:
        plans = {s: plan_stage(settings, s, local_target(settings, world), run_dir)
                 for s in wanted}
    check(plans, settings)
    return plans
