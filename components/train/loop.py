"""One small, honest training loop shared by align, sft and dpo.

AdamW over the given parameters, linear warm-up then cosine decay (to 10% of the peak
rate), gradient-norm clipping, a fixed seed, a rich progress bar showing the loss, and
`log_metrics({"loss", "lr"}, step)` every optimiser step. It returns the loss history.

The loop owns no data or model logic: `loss_fn(model, batch) -> scalar tensor` (default:
the model's own LM loss on `labels`) makes the same loop run DPO. Everything that a
DeepSpeed/accelerate engine would replace (backward, clipping, optimiser and scheduler
step) sits in `_step`, so such an engine can slot in without touching the stages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field

import torch
from torch import nn

from components.accel import configure_threads
from components.settings import TrainSettings
from components.stages import MetricLogger

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]

WARMUP_RATIO = 0.1
MIN_LR_RATIO = 0.1
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 0.0


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose label is not -100."""
    return model(**batch).loss


def lr_lambda(total_steps: int, warmup_ratio: float = WARMUP_RATIO,
              min_ratio: float = MIN_LR_RATIO) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at step `s`: linear warm-up, cosine decay."""
    warmup = max(1, round(total_steps * warmup_ratio))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class TrainHistory:
    """What a run of the loop did: per-step losses (floats) and its throughput."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def to_device(batch: dict[str, torch.Tensor], device, dtype) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def train_loop(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    batches: Iterable[dict[str, torch.Tensor]],
    train: TrainSettings,
    *,
    seed: int,
    loss_fn: LossFn = lm_loss,
    batch_size_of: Callable[[dict[str, torch.Tensor]], int] | None = None,
    log_metrics: MetricLogger | None = None,
    progress: bool = False,
    description: str = "train",
) -> TrainHistory:
    """Train `params` of `model` for `train.epochs` passes over `batches` (re-iterable,
    e.g. a DataLoader; a `len()` is needed for the schedule) at peak `train.learning_rate`.
    """
    configure_threads()
    torch.manual_seed(seed)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    if not isinstance(batches, Sized):
        batches = list(batches)
    per_epoch = len(batches)
    total = per_epoch * train.epochs
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total))
    count = batch_size_of or (lambda b: int(b["input_ids"].shape[0]))
    history = TrainHistory()
    first = next(model.parameters())
    model.train()
    started = time.perf_counter()
    bar = _progress(progress)
    task = bar.add_task(description, total=total, loss=float("nan")) if bar else None
    try:
        for _epoch in range(train.epochs):
            for batch in batches:
                loss = loss_fn(model, to_device(batch, first.device, first.dtype))
                _step(loss, params, optimizer, scheduler)
                value = float(loss.detach())
                history.losses.append(value)
                history.samples += count(batch)
                if log_metrics:
                    log_metrics({"loss": value, "lr": scheduler.get_last_lr()[0]},
                                history.steps)
                if bar:
                    bar.update(task, advance=1, loss=value)
    finally:
        if bar:
            bar.stop()
    history.seconds = time.perf_counter() - started
    model.eval()
    return history


def _step(loss: torch.Tensor, params, optimizer, scheduler) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), transient=False,
    )
    bar.start()
    return bar
