"""The three training stages: align (connector on captions), sft (instruction tuning on
qa), dpo (preferences against a frozen sft reference).

Each reads the mix (`<run>/mix/*.jsonl`) and, after align, the previous stage's
`model/` folder, and writes into its own stage directory:

- `model/`: save_pretrained model + processor (align also keeps the untrained `init/`);
- `metrics.json`: loss per step, first/last loss, steps, seconds, samples/s, runtime;
- `loss.png`: the loss curve.

`loss_first`/`loss_last` are means over a window of the first/last steps (a tenth of
the run, 1 to 10 steps), so one noisy batch cannot decide whether training "worked".
Before any step, `check_image_token_agreement` proves processor and model agree on the
image-token count for probe sizes and for the image sizes of the stage's own data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from components.accel import detect_runtime
from components.model.build import (
    PROBE_SIZES,
    build_tiny_model,
    check_image_token_agreement,
    load_model,
    load_pretrained_parts,
    save_model,
)
from components.model.freeze import set_trainable, trainable_parameters
from components.records import read_records
from components.settings import TrainSettings
from components.stages import StageContext, StageOutput
from components.train.data import (
    CAPTION_PROMPT,
    ChatDataset,
    Collator,
    Encoded,
    PreferenceDataset,
)
from components.train.dpo import DPOLoss, make_reference, preference_margin
from components.train.loop import TrainHistory, train_loop

log = logging.getLogger(__name__)
MAX_DATA_SIZES_CHECKED = 64


def mix_texts(mix_dir: Path) -> list[str]:
    """Every free text and option of every record in `<mix_dir>/*.jsonl` (+ the caption
    prompt): the corpus the tiny model's tokenizer is trained on."""
    texts = [CAPTION_PROMPT]
    for path in sorted(Path(mix_dir).glob("*.jsonl")):
        for rec in read_records(path):
            texts.extend(rec.texts().values())
            texts.extend(rec.options or [])
    return texts


def _data_sizes(examples: list[Encoded]) -> list[tuple[int, int]]:
    """Up to `MAX_DATA_SIZES_CHECKED` distinct (width, height) of the data, evenly picked."""
    sizes = sorted({(int(e.image_size[1]), int(e.image_size[0])) for e in examples})
    if len(sizes) <= MAX_DATA_SIZES_CHECKED:
        return sizes
    step = len(sizes) / MAX_DATA_SIZES_CHECKED
    return [sizes[int(i * step)] for i in range(MAX_DATA_SIZES_CHECKED)]


def _loader(dataset, batch_size: int, pad_token_id: int, seed: int, *, shuffle: bool,
            preference: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=Collator(pad_token_id, "right", preference=preference),
    )


def _window_means(losses: list[float]) -> tuple[float | None, float | None, int]:
    if not losses:
        return None, None, 0
    w = max(1, min(10, len(losses) // 10))
    return sum(losses[:w]) / w, sum(losses[-w:]) / w, w


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    """Loss per step (and its moving average) as a PNG, headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="step")
    k = max(1, len(losses) // 20)
    if k > 1:
        avg = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1])
               for i in range(len(losses))]
        ax.plot(steps, avg, lw=1.6, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if losses:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finish(ctx: StageContext, train: TrainSettings, history: TrainHistory,
            counts_by_part: dict[str, int], train_samples: int,
            extra_metrics: dict[str, float] | None = None,
            extra_counts: dict[str, int] | None = None,
            extra_params: dict[str, Any] | None = None) -> StageOutput:
    out = ctx.out_dir
    first, last, window = _window_means(history.losses)
    runtime = detect_runtime().describe()
    metrics: dict[str, float] = {
        "seconds": round(history.seconds, 3),
        "samples_per_s": round(history.samples_per_s, 3),
    }
    if first is not None:
        metrics["loss_first"] = first
        metrics["loss_last"] = last
    metrics.update(extra_metrics or {})
    record: dict[str, Any] = {
        "stage": ctx.name,
        **metrics,
        "loss_window": window,
        "steps": history.steps,
        "train_samples": train_samples,
        "trainable": counts_by_part,
        "runtime": runtime,
        "loss_history": history.losses,
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    plot_losses(history.losses, out / "loss.png", f"{ctx.name} loss ({ctx.settings.profile})")
    return StageOutput(
        counts={"train_samples": train_samples, "steps": history.steps, **(extra_counts or {})},
        metrics=metrics,
        params={
            "trainable": list(train.trainable),
            "lr": train.learning_rate,
            "epochs": train.epochs,
            "batch_size": train.batch_size,
            "trainable_params": sum(counts_by_part.values()),
            "runtime": runtime,
            **(extra_params or {}),
        },
        artifacts=["metrics.json", "loss.png"],
        model_dir="model",
    )


def _supervised(ctx: StageContext, model, processor, records_file: str,
                train: TrainSettings) -> StageOutput:
    """Train `train.trainable` of `model` on the caption/qa records of `records_file`."""
    s = ctx.settings
    records = read_records(ctx.stage_dir("mix") / records_file)
    dataset = ChatDataset(records, ctx.data_dir, processor, s.model.max_length)
    check_image_token_agreement(processor, model,
                                [*PROBE_SIZES, *_data_sizes(dataset.examples)])
    counts = set_trainable(model, train.trainable)
    loader = _loader(dataset, train.batch_size, processor.tokenizer.pad_token_id, s.seed,
                     shuffle=True)
    history = train_loop(model, trainable_parameters(model), loader, train, seed=s.seed,
                         log_metrics=ctx.log_metrics, progress=ctx.progress,
                         description=ctx.name)
    save_model(model, processor, ctx.out_dir / "model")
    return _finish(ctx, train, history, counts, len(dataset))


def run_align(ctx: StageContext) -> StageOutput:
    """Stage 1: build (or assemble) the model, save it untrained to `init/`, then train the
    connector only on `align.jsonl` captions."""
    s = ctx.settings
    log.info("align: %s", detect_runtime().describe())
    if s.model.init == "build_tiny":
        model, processor = build_tiny_model(s, mix_texts(ctx.stage_dir("mix")))
    else:
        model, processor = load_pretrained_parts(s)
    save_model(model, processor, ctx.out_dir / "init")
    return _supervised(ctx, model, processor, "align.jsonl", s.align)


def run_sft(ctx: StageContext) -> StageOutput:
    """Stage 2: visual instruction tuning of `sft.trainable` on `sft.jsonl`."""
    log.info("sft: %s", detect_runtime().describe())
    model, processor = load_model(ctx.stage_dir("align") / "model")
    return _supervised(ctx, model, processor, "sft.jsonl", ctx.settings.sft)


def run_dpo(ctx: StageContext) -> StageOutput:
    """Stage 3: DPO of `dpo.trainable` on `dpo.jsonl` against a frozen copy of the sft
    model; reports the preference margin and accuracy on `dpo_eval.jsonl` before/after."""
    s = ctx.settings
    train = s.dpo
    log.info("dpo: %s", detect_runtime().describe())
    model, processor = load_model(ctx.stage_dir("sft") / "model")
    mix = ctx.stage_dir("mix")
    pad = processor.tokenizer.pad_token_id
    train_set = PreferenceDataset(read_records(mix / "dpo.jsonl"), ctx.data_dir, processor,
                                  s.model.max_length)
    eval_set = PreferenceDataset(read_records(mix / "dpo_eval.jsonl"), ctx.data_dir, processor,
                                 s.model.max_length)
    examples = [e for pair in [*train_set.pairs, *eval_set.pairs] for e in pair]
    check_image_token_agreement(processor, model, [*PROBE_SIZES, *_data_sizes(examples)])

    # weight of the chosen-answer NLL added to the DPO loss (components/train/dpo.py): pure
    # DPO (0.0) made the tiny model stop ending its answers on held-out questions
    nll_weight = train.rpo_alpha
    counts = set_trainable(model, train.trainable)
    reference = make_reference(model)
    eval_loader = _loader(eval_set, train.batch_size, pad, s.seed, shuffle=False,
                          preference=True)
    before = preference_margin(model, reference, eval_loader, train.beta)
    loader = _loader(train_set, train.batch_size, pad, s.seed, shuffle=True, preference=True)
    history = train_loop(
        model, trainable_parameters(model), loader, train, seed=s.seed,
        loss_fn=DPOLoss(reference, train.beta, nll_weight=nll_weight),
        batch_size_of=lambda b: int(b["input_ids"].shape[0]) // 2,
        log_metrics=ctx.log_metrics, progress=ctx.progress, description=ctx.name,
    )
    after = preference_margin(model, reference, eval_loader, train.beta)
    save_model(model, processor, ctx.out_dir / "model")
    extra = {
        "margin_before": before["margin"],
        "margin_after": after["margin"],
        "pref_accuracy_before": before["pref_accuracy"],
        "pref_accuracy_after": after["pref_accuracy"],
        "reward_accuracy_after": after["reward_accuracy"],
    }
    ctx.log_metrics(extra, history.steps)
    return _finish(ctx, train, history, counts, len(train_set), extra_metrics=extra,
                   extra_counts={"eval_pairs": len(eval_set)},
                   extra_params={"beta": train.beta, "nll_weight": nll_weight})
