"""The training engine: every stage (align, sft, dpo) runs on the transformers `Trainer`.

`train_stage(...)` builds `TrainingArguments` from params.yaml (`train:` + the stage's
section), extends the Trainer only through its documented hooks, trains, and returns a
`TrainResult` (per-step history, resolved plan, resume point). Nothing here loops over
batches by hand: backward, accumulation, clipping, the optimizer/scheduler step,
DDP / DeepSpeed ZeRO / FSDP wrapping, checkpointing and exact resume are the Trainer's.

Contracts:

- **Global batch** = per-device batch x gradient accumulation x world size
  (`resolve_batch`, `components.train.batching`: under packing the items are packed rows,
  planned from the recipe's samples per step; the step metrics measure samples, rows and
  tokens per optimizer step); the objective normalises each micro-batch by the item count of the
  whole global batch (tokens for LM losses, pairs for DPO, counted over every
  accumulation micro-batch and every rank) and is scaled for the ranks' gradient
  averaging, so N processes at batch B/N train exactly like 1 process at batch B.
- **Precision** (`resolve_precision`): bf16/fp16 are autocast over fp32 master weights and
  fp32 AdamW state (the model is kept in fp32; DeepSpeed keeps its own fp32 master copy);
  never pure-bf16 AdamW, which rounds small updates away.
- **Learning rates**: one AdamW parameter group per trainable part, at
  `learning_rate x lr_multipliers[part]` (`freeze.parameter_groups`), cosine with linear
  warm-up down to `min_lr_ratio`.
- **Strategy** (`resolve_strategy`): `ddp`, DeepSpeed `zero2`/`zero3` (config generated into
  the stage folder by `deepspeed_config`, or the user's, checked against the plan), `fsdp`.
  Without CUDA, DeepSpeed and FSDP fall back to DDP over gloo with a logged reason.
- **Checkpoints** (`components.train.checkpoints`): every `train.save_steps` into
  `<stage>/checkpoints/checkpoint-N/` (model, optimizer, scheduler, RNG, data position,
  trainer state), sealed by `amalia_checkpoint.json`; a re-run resumes from the newest.
- **Metrics** (every step into the trainer state, every `train.logging_steps` to MLflow):
  loss, lr of the step just taken, grad-norm, tokens/s, images/s, padding ratio, the
  objective's own statistics (DPO rewards, margins, accuracy, log-probs) and MFU on GPUs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from components.accel import Runtime, detect_runtime
from components.errors import ConfigError
from components.model.freeze import parameter_groups
from components.plan import gpus as plan_gpus
from components.settings import EngineSettings, Settings, TrainSettings
from components.stages import MetricLogger
from components.train import checkpoints
from components.train.batching import BatchPlan, resolve_batch  # noqa: F401 (re-exported)
from components.train.data import IGNORE_INDEX, model_inputs
from components.train.distributed import world

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- plan


def resolve_precision(engine: EngineSettings, runtime: Runtime) -> str:
    """`fp32`, `bf16` or `fp16` for this box (`auto`: bf16 on a bf16-capable GPU)."""
    cuda = runtime.device == "cuda"
    if engine.precision == "auto":
        return "bf16" if cuda and runtime.dtype == torch.bfloat16 else "fp32"
    if engine.precision == "fp16" and not cuda:
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (fp16 loss scaling)",
                          "use train.precision: bf16 or fp32 on a CPU")
    return engine.precision


def resolve_strategy(engine: EngineSettings, runtime: Runtime) -> tuple[str, str | None]:
    """(strategy used, reason for a fallback or None)."""
    wanted = engine.strategy
    if wanted in ("zero2", "zero3", "fsdp") and runtime.device != "cuda":
        engine_name = "DeepSpeed ZeRO" if wanted.startswith("zero") else "FSDP"
        return "ddp", (f"train.strategy={wanted}: {engine_name} needs CUDA GPUs; CPU "
                       "fallback to DDP over gloo")
    if wanted.startswith("zero") and not runtime.deepspeed_available:
        raise ConfigError(f"train.strategy={wanted} needs deepspeed, which does not import",
                          "pip install deepspeed (docker/Dockerfile.gpu has it), or use ddp")
    return wanted, None


def deepspeed_config(stage_zero: int, plan: BatchPlan, precision: str,
                     train: TrainSettings) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO stage 2 or 3 with every batch value explicit.

    No `optimizer`/`scheduler` sections: the Trainer hands DeepSpeed its own AdamW (one
    group per trainable part) and cosine schedule, so all strategies train alike. bf16 in
    DeepSpeed keeps fp32 master weights and optimizer state, and (`data_types`) sums the
    micro-batches' gradients in fp32.
    """
    zero: dict[str, Any] = {
        "stage": stage_zero,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
        "allgather_bucket_size": 5e8,
    }
    if stage_zero == 3:
        zero.update({
            "stage3_prefetch_bucket_size": 5e8,
            "stage3_param_persistence_threshold": 1e6,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    config = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "gradient_clipping": train.max_grad_norm,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        # ZeRO otherwise sums micro-batch gradients in the bf16 of the module: 8 mantissa
        # bits, so over many accumulation steps small contributions round away
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def check_deepspeed_config(config: dict[str, Any], plan: BatchPlan, source: str,
                           strategy: str | None = None, precision: str | None = None) -> None:
    """Refuse a DeepSpeed config whose batch values contradict the resolved plan, whose ZeRO
    stage is not `strategy` (`zero2` / `zero3`), or whose bf16/fp16 switches contradict
    `precision`: the manifest must record what really ran."""
    expected = {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
    }
    for key, want in expected.items():
        have = config.get(key, "auto")
        if have == "auto":
            continue
        try:
            value = int(have)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key}={have!r} is not a number",
                              f'set "{key}": "auto" (or {want}) in {source}') from None
        if value != want:
            raise ConfigError(
                f"{source}: {key}={have} does not fit world size {plan.world_size} "
                f"(this launch resolves {key}={want}: per-device "
                f"{plan.per_device_batch_size} x accumulation "
                f"{plan.gradient_accumulation_steps} x {plan.world_size} processes)",
                f'set "{key}": "auto" (or {want}) in {source}, or change --nproc',
            )
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: zero_optimization.stage={stage} is not 0-3")
    if strategy and strategy.startswith("zero") and stage != int(strategy[-1]):
        raise ConfigError(
            f"{source}: zero_optimization.stage={stage} but train.strategy={strategy}",
            f"make them agree (stage {strategy[-1]} in {source}, or train.strategy: "
            f"zero{stage})")
    for half in ("bf16", "fp16"):
        enabled = (config.get(half) or {}).get("enabled", "auto")
        if precision and enabled != "auto" and bool(enabled) != (precision == half):
            raise ConfigError(
                f"{source}: {half}.enabled={enabled} but train.precision resolves to "
                f"{precision}", f'set "{half}": {{"enabled": "auto"}} in {source}')
    accumulate = (config.get("data_types") or {}).get("grad_accum_dtype")
    if precision == "bf16" and plan.gradient_accumulation_steps > 1 and accumulate != "fp32":
        # a warning, not a refusal: bf16 accumulation is a legitimate memory trade-off,
        # but it must be a choice the log shows, not an accident of a missing key
        log.warning("%s: bf16 with %d accumulation steps and data_types.grad_accum_dtype=%s: "
                    "ZeRO sums gradients in bf16; set \"data_types\": {\"grad_accum_dtype\": "
                    "\"fp32\"} to accumulate in fp32", source,
                    plan.gradient_accumulation_steps, accumulate)


FSDP_WRAP = ["LlamaDecoderLayer", "SiglipEncoderLayer"]


def fsdp_options(precision: str) -> dict[str, Any]:
    """TrainingArguments' `fsdp`/`fsdp_config` for full sharding of the decoder and tower
    layers (`use_orig_params` keeps the per-part groups and frozen parts working)."""
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {"transformer_layer_cls_to_wrap": FSDP_WRAP, "use_orig_params": True,
                        "mixed_precision": precision},
    }


# ----------------------------------------------------------------------------- objectives


class Objective(Protocol):
    """What a stage optimises. `count(batch)`: the items of a micro-batch the loss averages
    over (tokens, pairs); `__call__`: the micro-batch's share of the global-batch loss,
    `sum over its items / num_items` (num_items = the whole global batch), plus statistics
    to log as sums with their item count under `_n` (logged as means over `_n`, all ranks
    and micro-batches of the step together)."""

    def count(self, batch: dict[str, torch.Tensor]) -> int: ...

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor],
                 num_items: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class LMObjective:
    """Next-token cross-entropy on the label tokens (assistant turns), averaged over all
    label tokens of the global batch: the model's own loss with `num_items_in_batch`.
    With `chunk_tokens` > 0 (`train.loss_chunk_tokens`) the same loss over chunks of that
    many positions (`components.train.loss.lm_loss`: never the whole logits tensor)."""

    def __init__(self, chunk_tokens: int = 0):
        self.chunk_tokens = chunk_tokens

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def __call__(self, model, batch, num_items):
        if self.chunk_tokens > 0:
            from components.train.loss import lm_loss

            inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
            return lm_loss(model, inputs, batch["labels"], num_items, self.chunk_tokens), {}
        out = model(**model_inputs(batch), num_items_in_batch=num_items)
        return out.loss, {}


def real_tokens(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(tokens of samples, positions computed) of a micro-batch: a packed batch's
    `segment_ids` > 0 (padding and the dummy image excluded), else its 2-D attention mask."""
    if "segment_ids" in batch:
        seg = batch["segment_ids"]
        return int((seg > 0).sum()), int(seg.numel())
    mask = batch["attention_mask"]
    return int(mask.sum()), int(mask.numel())


# ----------------------------------------------------------------------------- trainer


class AmaliaTrainer(Trainer):
    """`Trainer` with our objective, per-part parameter groups, a reproducible block
    sampler and per-step throughput statistics, through the Trainer's hooks
    (`compute_loss`, `create_optimizer`, `get_batch_samples`, `_get_train_sampler`,
    `log`) and one fix (`_load_from_checkpoint`, see there)."""

    # compute_loss already divides by the global item count: no extra 1/accumulation
    loss_is_scaled_for_ga = True

    def __init__(self, *args, objective: Objective, train_settings: TrainSettings,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.train_settings = train_settings
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._stats: dict[str, float] = {}
        self._last_log = time.perf_counter()
        self._last_step: int | None = None

    # the dataset decides the order (seeded block shuffle: exact resume, sharded reads)
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if hasattr(dataset, "sampler"):  # rank-aware: each (rank, worker) owns row groups
            return dataset.sampler(self.args.seed, world_size=self.args.world_size,
                                   batch_size=self.args.per_device_train_batch_size,
                                   workers=self.args.dataloader_num_workers,
                                   accumulation=self.args.gradient_accumulation_steps)
        return super()._get_train_sampler(train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """transformers 5 writes checkpoints in the model's original key layout
        (`save_pretrained(save_original_format=True)`: `language_model.model.*` for
        LlavaNext) but the Trainer reloads them with `load_state_dict(strict=False)`, which
        then matches no key and silently resumes from the initial weights. Reload through
        `from_pretrained` (which converts the keys) and copy strictly, so a missing or
        renamed weight is an error, not a wrong model. DeepSpeed and FSDP checkpoints keep
        their own loaders."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        dtype = next(target.parameters()).dtype
        loaded = type(target).from_pretrained(resume_from_checkpoint, dtype=dtype)
        target.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            t = self.train_settings
            groups = parameter_groups(self.model if model is None else model, t.trainable,
                                      t.learning_rate, t.lr_multipliers, t.weight_decay)
            self.optimizer = torch.optim.AdamW(groups, lr=t.learning_rate,
                                               betas=(0.9, 0.999), eps=1e-8)
        return self.optimizer

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches: list[dict[str, torch.Tensor]] = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        local = torch.tensor(sum(self.objective.count(b) for b in batches), device=device)
        total = self.accelerator.gather(local).sum() if self.accelerator.num_processes > 1 \
            else local
        return batches, total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if num_items_in_batch is None:  # outside the training loop (not used by us)
            num_items_in_batch = torch.tensor(self.objective.count(inputs))
        loss, stats = self.objective(model, inputs, num_items_in_batch)
        self._add_stats(inputs, stats)
        # DDP / DeepSpeed / FSDP average gradients over ranks: undo it, so the gradient is
        # that of the global-batch mean
        loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _add_stats(self, inputs: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]):
        real, positions = real_tokens(inputs)
        samples = int(inputs["sample_index"].numel()) if "sample_index" in inputs else 0
        add = {
            "tokens": float(real),
            "positions": float(positions),
            "samples": float(samples),
            # packed rows of the micro-batch (the collator counts them), else its samples
            "rows": float(inputs["packed_rows"]) if "packed_rows" in inputs else float(samples),
            "images": float(inputs["real_images"].sum()) if "real_images" in inputs else 0.0,
        }
        add.update({k: float(v.detach()) for k, v in stats.items()})
        for key, value in add.items():
            self._stats[key] = self._stats.get(key, 0.0) + value

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "train_runtime" not in logs:
            logs.update(self._step_metrics())
        super().log(logs, start_time)

    def _step_metrics(self) -> dict[str, float]:
        now = time.perf_counter()
        seconds, self._last_log = max(now - self._last_log, 1e-9), now
        keys = sorted(self._stats)
        values = torch.tensor([self._stats[k] for k in keys], dtype=torch.float64,
                              device=self.args.device)
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        total = dict(zip(keys, values.tolist(), strict=True))
        self._stats = {}
        tokens = total.pop("tokens", 0.0)
        positions = total.pop("positions", 0.0)
        # optimizer steps since the last log (1 with logging_steps=1; None: first log)
        steps = max(self.state.global_step - self._last_step, 1) \
            if self._last_step is not None else 1
        self._last_step = self.state.global_step
        out = {
            # what an optimizer step held, measured over all ranks and micro-batches
            "samples_per_step": total.pop("samples", 0.0) / steps,
            "rows_per_step": total.pop("rows", 0.0) / steps,
            "tokens_per_step": tokens / steps,
            "tokens_per_s": tokens / seconds,
            "images_per_s": total.pop("images", 0.0) / seconds,
            "padding_ratio": 1.0 - tokens / positions if positions else 0.0,
            "step_seconds": seconds,
        }
        n = total.pop("_n", 0.0)  # the objective's own statistics are means over its items
        out.update({key: value / n for key, value in total.items() if n})
        if self.flops_per_token and self.peak_flops:
            out["mfu"] = tokens / seconds * self.flops_per_token / (
                self.peak_flops * self.accelerator.num_processes)
        return out


# ----------------------------------------------------------------------------- callbacks


class MetricsToSink(TrainerCallback):
    """Every `every` optimizer steps (and the last), the step's metrics to the stage's
    metric sink (MLflow on rank 0), as `train/<name>`-free flat names: loss, lr, ..."""

    RENAME = {"learning_rate": "lr"}
    SKIP = ("epoch", "step_seconds")

    def __init__(self, sink: MetricLogger, every: int):
        self.sink, self.every = sink, every

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or "train_runtime" in logs:
            return
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        if state.is_world_process_zero:
            self.sink({self.RENAME.get(k, k): float(v) for k, v in logs.items()
                       if k not in self.SKIP and isinstance(v, int | float)}, step)


class RichProgress(TrainerCallback):
    """One rich progress bar on rank 0: steps done of all, last loss, elapsed time."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                            TimeRemainingColumn())
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=state.max_steps,
                                      completed=state.global_step, loss=float("nan"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(self.task, completed=state.global_step, loss=float(logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ----------------------------------------------------------------------------- entry


@dataclass
class TrainResult:
    """What a stage's training did (everything JSON-able goes into metrics/manifest)."""

    loss_history: list[float]
    step_logs: list[dict[str, float]]
    plan: BatchPlan
    precision: str
    strategy: str
    steps: int
    seconds: float
    samples: int
    resumed_from_step: int | None
    fallback: str | None = None
    strategy_config: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def engine_record(self) -> dict[str, Any]:
        """The resolved engine settings, as the manifest records them."""
        return {"world_size": self.plan.world_size,
                "per_device_batch_size": self.plan.per_device_batch_size,
                "gradient_accumulation_steps": self.plan.gradient_accumulation_steps,
                "global_batch_size": self.plan.global_batch_size,
                "batch_unit": self.plan.unit,
                # planned per optimizer step (measured ones: the step metrics)
                "samples_per_step": self.plan.samples_per_step or self.plan.global_batch_size,
                "rows_per_step": self.plan.global_batch_size,
                "micro_batch_tokens": self.plan.micro_batch_tokens,
                "precision": self.precision, "strategy": self.strategy,
                "strategy_fallback": self.fallback, "resumed_from_step": self.resumed_from_step}


def flops_per_token(model: nn.Module, seq_len: int, tiles_per_token: float = 0.0) -> float:
    """Model FLOPs per LM token (MFU's numerator) of training `model` on samples of
    `seq_len` tokens with `tiles_per_token` image tiles through the vision tower, counting
    what is computed (`components.plan.flops`): 2N forward for every part, backward 4N
    where weights train and 2N where a gradient only passes through a frozen part, the
    attention term, no checkpointing recompute."""
    from components.plan.flops import model_flops_per_token

    return model_flops_per_token(model, seq_len, tiles_per_token)


def _mean_length(dataset, settings: Settings) -> int:
    """Mean tokens per sample (the attention term of the FLOPs), else `max_length`."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None and len(lengths):
        return int(lengths.mean())
    return settings.model.max_length


def tiles_per_token(dataset) -> float:
    """Anyres tiles through the vision tower per LM token of `dataset` (a `ShardDataset`,
    or a `PackedDataset` over one) from its length index, so MFU counts the tower's
    FLOPs too; 0 when the dataset carries no tile counts."""
    base = getattr(dataset, "base", dataset)
    tiles = getattr(base, "tiles", None)
    lengths = getattr(dataset, "lengths", None)
    if tiles is None or lengths is None or not len(lengths) or not lengths.sum():
        return 0.0
    return float(tiles.sum()) / float(lengths.sum())


def peak_flops(runtime: Runtime) -> float | None:
    """Dense bf16 peak FLOP/s of this GPU, looked up by its exact name (None on a CPU or
    for a GPU not in `components.plan.gpus`, which logs why MFU is not reported)."""
    if runtime.device != "cuda":
        return None
    return plan_gpus.peak_flops(torch.cuda.get_device_name(0))


def training_arguments(settings: Settings, stage: str, out_dir: Path, plan: BatchPlan,
                       precision: str, strategy: str, runtime: Runtime,
                       strategy_config: Path | None) -> TrainingArguments:
    """The `TrainingArguments` of one stage (see the module docstring)."""
    e, t = settings.engine, settings.stage_train(stage)
    cuda = runtime.device == "cuda"
    extra: dict[str, Any] = {}
    if strategy.startswith("zero"):
        extra["deepspeed"] = str(strategy_config)
    elif strategy == "fsdp":
        extra.update(fsdp_options(precision))
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=plan.per_device_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio},
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        logging_strategy="steps",
        logging_steps=1,  # every step into the trainer state: exact loss history
        save_strategy="steps",
        save_steps=e.save_steps,
        save_total_limit=e.save_total_limit,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=True,
        log_level="warning",
        remove_unused_columns=False,
        dataloader_drop_last=True,  # equal global batches on any world size
        dataloader_num_workers=e.dataloader_workers,
        dataloader_persistent_workers=e.dataloader_workers > 0,
        dataloader_pin_memory=cuda,
        activation_checkpointing=e.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if e.gradient_checkpointing
        else None,
        ddp_backend=("nccl" if cuda else "gloo") if plan.world_size > 1 else None,
        ddp_find_unused_parameters=False,
        ddp_timeout=e.ddp_timeout_s,
        average_tokens_across_devices=True,
        **extra,
    )


def resolve_user_path(value: str) -> Path:
    """A path from params.yaml: absolute, else relative to the working directory when it
    exists there, else relative to params.yaml (DVC and Prefect workers may start
    elsewhere)."""
    from components.settings import default_params_path

    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    beside = default_params_path().resolve().parent / path
    return beside if beside.exists() else path


def user_deepspeed_config(settings: Settings, plan: BatchPlan, precision: str
                          ) -> tuple[Path, dict[str, Any]] | None:
    """The user's `train.deepspeed_config`, read and checked against this launch (batch
    sizes, `train.strategy`, precision), or None when there is none. Checked even where
    DeepSpeed falls back to DDP (a CPU box), so a config that cannot fit the cluster's
    world size fails on a laptop, before a GPU hour is spent."""
    user = settings.engine.deepspeed_config
    if not user or not settings.engine.strategy.startswith("zero"):
        return None
    path = resolve_user_path(user)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"train.deepspeed_config {path}: cannot read it ({exc})",
                          "point train.deepspeed_config at a DeepSpeed JSON file") from None
    check_deepspeed_config(config, plan, str(path), settings.engine.strategy, precision)
    return path, config


def write_strategy_config(settings: Settings, stage: str, out_dir: Path, plan: BatchPlan,
                          precision: str, strategy: str) -> Path | None:
    """The DeepSpeed / FSDP config of this launch as JSON in the stage folder (or None for
    DDP, `strategy` being the one resolved): generated from params.yaml, or the user's
    `train.deepspeed_config`, checked (`user_deepspeed_config`)."""
    user = user_deepspeed_config(settings, plan, precision)
    if strategy.startswith("zero"):
        config = user[1] if user else deepspeed_config(int(strategy[-1]), plan, precision,
                                                        settings.stage_train(stage))
        target = out_dir / "deepspeed_config.json"
    elif strategy == "fsdp":
        config = fsdp_options(precision)
        target = out_dir / "fsdp_config.json"
    else:
        return None
    target.write_text(json.dumps(config, indent=2))
    return target


def train_stage(
    settings: Settings,
    stage: str,
    out_dir: Path,
    model: nn.Module,
    dataset,
    collator: Callable,
    objective: Objective,
    *,
    config_digest: str,
    log_metrics: MetricLogger,
    progress: bool,
    runtime: Runtime | None = None,
    callbacks: list[TrainerCallback] | None = None,
    plan: BatchPlan | None = None,
) -> TrainResult:
    """Train `model` on `dataset` with the Trainer; resumes from the newest valid checkpoint
    in `<out_dir>/checkpoints/` made with the same `config_digest` (see checkpoints).
    `plan`: the caller's resolved batch plan, else the dataset's `plan` (packed rows carry
    the plan `stages.training_data` resolved from them), else `resolve_batch` unpacked."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars at every checkpoint
    rt = runtime or detect_runtime()
    ws = world()
    t = settings.stage_train(stage)
    plan = plan or getattr(dataset, "plan", None) or resolve_batch(t, ws.world_size, stage)
    if plan.world_size != ws.world_size:
        raise ConfigError(f"{stage}: batch plan for {plan.world_size} processes, launched on "
                          f"{ws.world_size}", "resolve the plan on the launch's world size")
    precision = resolve_precision(settings.engine, rt)
    strategy, fallback = resolve_strategy(settings.engine, rt)
    if fallback:
        log.warning("%s: %s", stage, fallback)
    if len(dataset) < plan.global_batch_size:
        raise ConfigError(
            f"{stage}: {len(dataset)} {getattr(dataset, 'batch_unit', 'samples')} are fewer "
            f"than one global batch ({plan.global_batch_size})",
            f"lower {stage}.global_batch_size or add data")
    config_path = write_strategy_config(settings, stage, out_dir, plan, precision, strategy) \
        if ws.is_main else (out_dir / ("deepspeed_config.json" if strategy.startswith("zero")
                                       else "fsdp_config.json"))
    ws.barrier()
    args = training_arguments(settings, stage, out_dir, plan, precision, strategy, rt,
                              config_path)
    # collective: every rank gets the same resume point or the same one-line refusal
    resume = checkpoints.resume_point(out_dir / "checkpoints", config_digest,
                                      world_size=ws.world_size, strategy=strategy)
    trainer = AmaliaTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        objective=objective, train_settings=t,
        flops_per_token=flops_per_token(model, _mean_length(dataset, settings),
                                        tiles_per_token(dataset))
        if rt.device == "cuda" else None,
        peak_flops=peak_flops(rt),
    )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    trainer.add_callback(checkpoints.SealCheckpoint(config_digest, ws.world_size, strategy))
    trainer.add_callback(MetricsToSink(log_metrics, settings.engine.logging_steps))
    if progress:
        trainer.add_callback(RichProgress(stage))
    for callback in callbacks or []:
        trainer.add_callback(callback)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    seconds = time.perf_counter() - started
    steps_logs = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    result = TrainResult(
        loss_history=[float(e["loss"]) for e in steps_logs],
        step_logs=steps_logs,
        plan=plan, precision=precision, strategy=strategy, fallback=fallback,
        steps=trainer.state.global_step, seconds=seconds,
        samples=round((trainer.state.global_step - (resume.step if resume else 0))
                      * (plan.samples_per_step or plan.global_batch_size)),
        resumed_from_step=resume.step if resume else None,
        strategy_config=config_path.name if config_path and strategy != "ddp" else None,
    )
    result.extra["trainer"] = trainer
    return result


def mean_of(logs: list[dict[str, float]], key: str) -> float | None:
    values = [e[key] for e in logs if key in e and math.isfinite(e[key])]
    return sum(values) / len(values) if values else None
