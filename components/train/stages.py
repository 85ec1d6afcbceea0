"""The three training stages: align (connector on captions), sft (visual instruction
tuning on every record kind), dpo (preferences against the sft model as reference).

Each reads its mix shards (`<run>/mix/shards/<stage>/`, streamed: `dataset.ShardDataset`)
and, after align, the previous stage's `model/`; trains on the transformers Trainer
(`engine.train_stage`: DDP / DeepSpeed / FSDP, torchrun, checkpoints, exact resume) and
writes into its stage directory:

- `model/`: save_pretrained model + processor (align also keeps the untrained `init/`);
- `metrics.json`: per-step loss history and step metrics (samples, rows and tokens per
  optimizer step as measured, all ranks together), first/last loss, steps, seconds,
  samples/s, the resolved engine (world size, per-device batch, accumulation, the unit
  they count, planned samples and rows per step, precision, strategy) and
  `resumed_from_step`;
- `loss.png`: the loss curve; `skipped.jsonl`: samples that could not fit the budgets;
- `deepspeed_config.json` / `fsdp_config.json` when that strategy runs.

`loss_first`/`loss_last` are means over a window of the first/last steps (a tenth of
the run, 1 to 10 steps), so one noisy batch cannot decide whether training "worked".
Before any step, `check_image_token_agreement` proves processor and model agree on the
image-token count for probe sizes and for the image sizes of the stage's own data.
Only rank 0 writes files; every rank trains.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from components.accel import detect_runtime
from components.errors import DataQualityError
from components.evaltasks.prompts import LETTERS
from components.model.build import (
    PROBE_SIZES,
    ImageTokenMismatchError,
    build_tiny_model,
    check_image_token_agreement,
    load_model,
    load_pretrained_parts,
    save_chat_format,
    save_model,
)
from components.model.freeze import set_trainable
from components.records import iter_records, shard_paths
from components.settings import Settings
from components.stages import StageContext, StageOutput, check_prerequisites
from components.train import checkpoints
from components.train.batching import PackingShape, resolve_batch
from components.train.chat import CAPTION_PROMPT, MC_POST_PROMPT, Budget, ChatFormat
from components.train.dataset import SampleCollator, ShardDataset
from components.train.distributed import world
from components.train.dpo import (
    REFERENCE_FILE,
    DPOObjective,
    ReferenceScorer,
    frozen_reference,
    preference_scores,
)
from components.train.engine import (
    LMObjective,
    TrainResult,
    mean_of,
    resolve_precision,
    resolve_strategy,
    train_stage,
)
from components.train.packing import (
    PackedCollator,
    PackedDataset,
    text_attention,
    training_attention,
)

log = logging.getLogger(__name__)
MAX_DATA_SIZES_CHECKED = 64
TRAIN_OUTPUTS = ("align", "sft", "dpo")
# step metrics summarised into the stage's metrics (mean over the run)
PACKING_KEYS = ("packing", "attn_implementation", "packed_rows", "packing_layout",
                "samples_per_row", "row_fill_ratio", "planned_tokens_per_step",
                # what training_data's balance of the (rank, worker) streams cost
                "rows_before_split", "row_fill_ratio_before_split", "streams",
                "rows_per_stream", "rows_left_out", "rows_repeated", "samples_left_out",
                "samples_repeated")
SUMMARISED = ("tokens_per_s", "images_per_s", "padding_ratio", "grad_norm", "mfu",
              "samples_per_step", "rows_per_step", "tokens_per_step")


def mix_texts(mix_dir: Path) -> list[str]:
    """The training texts of the mix (every text, option and turn of the align, sft and dpo
    shards) plus the prompts training adds: the corpus of the tiny model's tokenizer.
    Evaluation outputs (`eval`, `dpo_eval`) are never read: no test text in the vocabulary."""
    texts = [CAPTION_PROMPT, MC_POST_PROMPT, *LETTERS[:8]]  # what training adds to records
    for name in TRAIN_OUTPUTS:
        folder = Path(mix_dir) / "shards" / name
        if not folder.is_dir() or not shard_paths(folder):
            continue
        for rec in iter_records(folder):
            texts.extend(rec.all_texts())
    return texts


def stage_digest(ctx: StageContext) -> str:
    """What a checkpoint of this stage depends on: the model, the stage's and the engine's
    training settings (DataLoader workers included: with the ranks they lay out the data
    order), the seed and the upstream outputs; not logging, checkpoint retention, the
    timeout or the loss chunking, which change how a step runs, not what it computes."""
    s = ctx.settings
    engine = s.engine.model_dump(mode="json", exclude={
        # not dataloader_workers: the readers (ranks x workers) lay out the data order
        "logging_steps", "keep_checkpoints", "save_total_limit", "ddp_timeout_s",
        # the loss chunking changes how, not what, is computed (equal to 1e-6); the
        # tolerance only refuses plans: a resume may change either
        "loss_chunk_tokens", "packed_batch_tolerance"})
    blob = json.dumps({
        "stage": ctx.name, "seed": s.seed, "model": s.model.model_dump(mode="json"),
        "train": s.stage_train(ctx.name).model_dump(mode="json"), "engine": engine,
        "inputs": check_prerequisites(ctx.name, ctx.run_dir, s),
    }, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _budget(s: Settings) -> Budget:
    return Budget(max_length=s.model.max_length, max_tiles=s.engine.max_tiles)


def _dataset(ctx: StageContext, output: str, processor, chat: ChatFormat,
             preference: bool) -> ShardDataset:
    folder = ctx.stage_dir("mix") / "shards" / output
    # the length index: computed once per key by the first rank, reused by all and by every
    # restart; beside the mix, not in it (a file inside mix/ would change its DVC output)
    return ShardDataset(folder, ctx.data_dir, processor, chat, _budget(ctx.settings),
                        preference=preference,
                        index_dir=ctx.run_dir / "length_index" / output)


def record_skips(ctx: StageContext, dataset: ShardDataset, what: str) -> dict[str, int]:
    """Write `skipped.jsonl` (rank 0) and fail past `train.max_skip_ratio`."""
    skipped = dataset.skipped
    total = len(dataset) + len(skipped)
    if world().is_main and skipped:
        with (ctx.out_dir / "skipped.jsonl").open("a", encoding="utf-8") as fh:
            for row in skipped:
                fh.write(json.dumps({"output": what, **row}, ensure_ascii=False) + "\n")
    by_reason: dict[str, int] = {}
    for row in skipped:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    limit = ctx.settings.engine.max_skip_ratio
    if total and len(skipped) / total > limit:
        raise DataQualityError(
            f"{ctx.name}: {len(skipped)} of {total} {what} samples cannot fit the budgets "
            f"({by_reason}; listed in {ctx.out_dir / 'skipped.jsonl'}), more than "
            f"train.max_skip_ratio={limit}",
            "raise model.max_length / train.max_tiles, or fix the records",
        )
    if skipped:
        log.warning("%s: skipped %d of %d %s samples: %s", ctx.name, len(skipped), total,
                    what, by_reason)
    return by_reason


def _check_agreement(processor, model, dataset: ShardDataset,
                     source: Path | None = None) -> None:
    """`check_image_token_agreement` on the probe and data sizes; a mismatch names the
    model folder `source` the pair was loaded from (and the stage that wrote it)."""
    sizes = sorted({(w, h) for h, w in dataset.image_sizes_seen})
    if len(sizes) > MAX_DATA_SIZES_CHECKED:
        step = len(sizes) / MAX_DATA_SIZES_CHECKED
        sizes = [sizes[int(i * step)] for i in range(MAX_DATA_SIZES_CHECKED)]
    try:
        check_image_token_agreement(processor, model, [*PROBE_SIZES, *sizes])
    except ImageTokenMismatchError as exc:
        if source is None:
            raise
        raise ImageTokenMismatchError(
            f"{source}: {exc.message}",
            f"{exc.hint}, or re-run `amalia-vl stage {source.parent.name}` to save a "
            "matching model folder",
        ) from None


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
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if losses:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save(ctx: StageContext, result: TrainResult, processor) -> None:
    """The trained model (gathered from ZeRO-3 / FSDP shards by the Trainer) + processor."""
    trainer = result.extra["trainer"]
    target = ctx.out_dir / "model"
    trainer.save_model(str(target))
    if world().is_main:
        processor.save_pretrained(target)
        save_chat_format(processor, target, ctx.settings.engine.system_prompt)


def _finish(ctx: StageContext, result: TrainResult, counts_by_part: dict[str, int],
            train_samples: int, skipped: dict[str, int],
            extra_metrics: dict[str, float] | None = None,
            extra_counts: dict[str, int] | None = None,
            extra_params: dict[str, Any] | None = None) -> StageOutput:
    s, out = ctx.settings, ctx.out_dir
    t = s.stage_train(ctx.name)
    ws = world()
    ws.barrier()
    if ws.is_main and not s.engine.keep_checkpoints:
        checkpoints.discard(out / "checkpoints")
    first, last, window = _window_means(result.loss_history)
    runtime = f"{detect_runtime().describe()}; trained in {result.precision} " \
        f"({result.strategy})"
    metrics: dict[str, float] = {"seconds": round(result.seconds, 3),
                                 "samples_per_s": round(result.samples_per_s, 3)}
    if first is not None:
        metrics["loss_first"], metrics["loss_last"] = first, last
    for key in SUMMARISED:
        value = mean_of(result.step_logs, key)
        if value is not None:
            metrics[f"mean_{key}"] = value
    metrics.update(extra_metrics or {})
    engine = result.engine_record()
    record: dict[str, Any] = {
        "stage": ctx.name, **metrics, "loss_window": window, "steps": result.steps,
        "train_samples": train_samples, "trainable": counts_by_part, "runtime": runtime,
        "engine": engine, "skipped": skipped, "loss_history": result.loss_history,
        "packing": {k: v for k, v in (extra_params or {}).items() if k in PACKING_KEYS},
        "step_metrics": result.step_logs,
    }
    artifacts = ["metrics.json", "loss.png"]
    if ws.is_main:
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
        plot_losses(result.loss_history, out / "loss.png", f"{ctx.name} loss ({s.profile})")
        if (out / "skipped.jsonl").exists():
            artifacts.append("skipped.jsonl")
        if result.strategy_config:
            artifacts.append(result.strategy_config)
    return StageOutput(
        counts={"train_samples": train_samples, "steps": result.steps,
                "skipped": sum(skipped.values()), **(extra_counts or {})},
        metrics=metrics,
        params={
            "trainable": list(t.trainable), "lr": t.learning_rate,
            "lr_multipliers": dict(t.lr_multipliers), "epochs": t.epochs,
            "trainable_params": sum(counts_by_part.values()), "runtime": runtime,
            **{k: v for k, v in engine.items() if k != "resumed_from_step"},
            **(extra_params or {}),
        },
        artifacts=artifacts,
        model_dir="model",
        extra={"engine": engine, "resumed_from_step": result.resumed_from_step,
               "loss_history": result.loss_history},
    )


def training_data(ctx: StageContext, model, chat: ChatFormat, base: ShardDataset):
    """(dataset, collator, packing record) the Trainer runs on: `base` in padded batches,
    or with `train.packing` its packed rows in the layout of the model's attention (call
    inside `training_attention`, which chose it), carrying as `plan` the `BatchPlan` in
    rows resolved from their measured samples per row (`train_stage` trains on it).
    Packed rows are dealt to the launch's (rank, DataLoader worker) streams once and the
    short streams' rows split until every stream holds as many (`equalise_streams`): every
    sample once per epoch; what the data is too small for is recorded (`rows_left_out`,
    `rows_repeated`, with a warning). Padded batches record the samples the sampler's
    balance leaves out / repeats per epoch (`samples_left_out`, `samples_repeated`)."""
    s = ctx.settings
    attention = text_attention(model)
    pad = chat.tokenizer.pad_token_id
    workers = s.engine.dataloader_workers
    record: dict[str, Any] = {"packing": s.engine.packing, "attn_implementation": attention}
    if not s.engine.packing:
        plan = resolve_batch(s.stage_train(ctx.name), world().world_size, ctx.name)
        left_out, repeated = base.sampler(
            s.seed, world_size=plan.world_size, batch_size=plan.per_device_batch_size,
            workers=workers, accumulation=plan.gradient_accumulation_steps).remainder(0)
        record.update({"samples_left_out": left_out, "samples_repeated": repeated})
        if left_out or repeated:
            log.warning("%s: balancing %d ranks x %d DataLoader workers over whole row "
                        "groups leaves %d samples out of and repeats %d in each epoch (of %d)",
                        ctx.name, plan.world_size, max(1, workers), left_out, repeated,
                        len(base))
        return base, SampleCollator(pad), record
    collator = PackedCollator.for_model(model, chat, pad)
    # pack first, measure samples per row, plan the step in rows from it, then deal the
    # rows to the launch's streams and split rows until every stream holds whole, equal
    # batches (every row once per epoch; whole global batches)
    packed = PackedDataset(base, s.model.max_length)
    packed_rows, packed_fill = len(packed), packed.fill_ratio
    shape = PackingShape(samples_per_row=len(base) / max(len(packed), 1),
                         row_tokens=s.model.max_length,
                         micro_batch_tokens=s.engine.micro_batch_tokens or s.model.max_length,
                         tolerance=s.engine.packed_batch_tolerance)
    plan = resolve_batch(s.stage_train(ctx.name), world().world_size, ctx.name, shape)
    layout = packed.equalise_streams(s.seed, world_size=plan.world_size, workers=workers,
                                     batch_size=plan.per_device_batch_size,
                                     accumulation=plan.gradient_accumulation_steps)
    per_row = len(base) / max(len(packed), 1)
    if layout is not None:  # the split rows hold fewer samples: say what a step holds
        plan = replace(plan, samples_per_step=round(plan.global_batch_size * per_row, 3))
    packed.plan = plan
    record.update({"packed_rows": len(packed), "packing_layout": collator.layout,
                   "samples_per_row": round(per_row, 3),
                   "row_fill_ratio": round(packed.fill_ratio, 4),
                   "rows_before_split": packed_rows,
                   "row_fill_ratio_before_split": round(packed_fill, 4),
                   "streams": plan.world_size * max(1, workers),
                   "rows_per_stream": layout.rows_per_stream if layout else len(packed),
                   "rows_left_out": layout.rows_left_out if layout else 0,
                   "rows_repeated": layout.rows_repeated if layout else 0,
                   "planned_tokens_per_step": round(plan.global_batch_size
                                                    * float(packed.row_lengths.mean()))})
    log.info("%s: packed %d samples into %d rows of <= %d tokens (%.1f%% full, %s; %d rows "
             "before splitting for whole batches per stream, %.1f%% full)", ctx.name,
             len(base), len(packed), s.model.max_length, 100 * packed.fill_ratio,
             collator.layout, packed_rows, 100 * packed_fill)
    if layout is not None and (layout.rows_left_out or layout.rows_repeated):
        log.warning("%s: too few rows to equalise %d streams (%d ranks x %d DataLoader "
                    "workers): each epoch leaves %d packed rows out and repeats %d (of %d)",
                    ctx.name, record["streams"], plan.world_size, max(1, workers),
                    layout.rows_left_out, layout.rows_repeated, len(packed))
    return packed, collator, record


def _supervised(ctx: StageContext, model, processor, output: str,
                source: Path | None = None) -> StageOutput:
    """Train the stage's `trainable` parts of `model` (loaded from `source`, if from a
    folder) on every sample of mix `output`."""
    s = ctx.settings
    chat = ChatFormat(processor, system_prompt=s.engine.system_prompt)
    dataset = _dataset(ctx, output, processor, chat, preference=False)
    skipped = record_skips(ctx, dataset, output)
    _check_agreement(processor, model, dataset, source)
    counts = set_trainable(model, s.stage_train(ctx.name).trainable)
    with training_attention(model, s.model.attn_implementation, s.engine.packing):
        train_set, collator, packing = training_data(ctx, model, chat, dataset)
        result = train_stage(
            s, ctx.name, ctx.out_dir, model, train_set, collator,
            LMObjective(s.engine.loss_chunk_tokens),
            config_digest=stage_digest(ctx), log_metrics=ctx.log_metrics,
            progress=ctx.progress)
    _save(ctx, result, processor)
    return _finish(ctx, result, counts, len(dataset), skipped, extra_params=packing)


def _fp32(model):
    """Training keeps fp32 master weights (bf16/fp16 are autocast by the Trainer)."""
    return model.float()


def run_align(ctx: StageContext) -> StageOutput:
    """Stage 1: build (or assemble) the model, save it untrained to `init/`, then train the
    connector only on the align captions."""
    from transformers.utils import logging as hf_logging

    s = ctx.settings
    log.info("align: %s", detect_runtime().describe())
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for init/
    if s.model.init == "build_tiny":
        model, processor = build_tiny_model(s, mix_texts(ctx.stage_dir("mix")))
    else:
        model, processor = load_pretrained_parts(s)
    if world().is_main:
        save_model(model, processor, ctx.out_dir / "init")
    return _supervised(ctx, _fp32(model), processor, "align")


def run_sft(ctx: StageContext) -> StageOutput:
    """Stage 2: visual instruction tuning of `sft.trainable` on the sft mix."""
    log.info("sft: %s", detect_runtime().describe())
    folder = ctx.stage_dir("align") / "model"
    model, processor = load_model(folder, dtype=torch.float32)
    return _supervised(ctx, model, processor, "sft", folder)


def run_dpo(ctx: StageContext) -> StageOutput:
    """Stage 3: DPO of `dpo.trainable` on the dpo mix against the sft model; reports the
    preference margin and accuracy on the `dpo_eval` pairs before and after."""
    s = ctx.settings
    t = s.dpo
    log.info("dpo: %s", detect_runtime().describe())
    folder = ctx.stage_dir("sft") / "model"
    model, processor = load_model(folder, dtype=torch.float32)
    chat = ChatFormat(processor, system_prompt=s.engine.system_prompt)
    train_set = _dataset(ctx, "dpo", processor, chat, preference=True)
    eval_set = _dataset(ctx, "dpo_eval", processor, chat, preference=True)
    skipped = record_skips(ctx, train_set, "dpo")
    record_skips(ctx, eval_set, "dpo_eval")
    _check_agreement(processor, model, train_set, folder)
    counts = set_trainable(model, t.trainable)
    chunk = s.engine.loss_chunk_tokens
    with training_attention(model, s.model.attn_implementation, s.engine.packing):
        train_rows, train_collate, packing = training_data(ctx, model, chat, train_set)
        if t.precompute_ref_log_probs:  # scored by `scorer` once the Trainer has prepared
            objective = DPOObjective(t.beta, t.rpo_alpha, chunk_tokens=chunk, precomputed=True)
        else:  # the frozen copy scores the training batches: same attention, dtype and
            # autocast as the policy computes in at step 0
            rt = detect_runtime()
            reference, context = frozen_reference(
                model, resolve_precision(s.engine, rt), resolve_strategy(s.engine, rt)[0])
            objective = DPOObjective(t.beta, t.rpo_alpha, reference=reference,
                                     chunk_tokens=chunk, reference_context=context)
        # the eval pairs before and after, scored like the training batches (same layout,
        # attention and forward context) by the prepared model (`ReferenceScorer`)
        eval_rows = PackedDataset(eval_set, s.model.max_length) if s.engine.packing \
            else eval_set
        digest = stage_digest(ctx)  # the checkpoints' and the stored reference's
        scorer = ReferenceScorer(
            objective if t.precompute_ref_log_probs else None,
            train_rows if t.precompute_ref_log_probs else None, eval_rows, train_collate,
            ctx.out_dir / "checkpoints" / REFERENCE_FILE, digest, chunk)
        result = train_stage(s, "dpo", ctx.out_dir, model, train_rows, train_collate,
                             objective, config_digest=digest,
                             log_metrics=ctx.log_metrics, progress=ctx.progress,
                             callbacks=[scorer])
    before = preference_scores(scorer.eval_before, scorer.eval_before, t.beta)
    after = preference_scores(scorer.eval_after, scorer.eval_before, t.beta)
    _save(ctx, result, processor)
    extra = {
        "margin_before": before["margin"], "margin_after": after["margin"],
        "pref_accuracy_before": before["pref_accuracy"],
        "pref_accuracy_after": after["pref_accuracy"],
        "reward_accuracy_after": after["reward_accuracy"],
    }
    ctx.log_metrics(extra, result.steps)
    return _finish(ctx, result, counts, len(train_set), skipped, extra_metrics=extra,
                   extra_counts={"eval_pairs": len(eval_set)},
                   extra_params={"beta": t.beta, "nll_weight": t.rpo_alpha,
                                 "precompute_ref_log_probs": t.precompute_ref_log_probs,
                                 **packing})
