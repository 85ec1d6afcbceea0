"""Run evaluation tasks on a model: prepare samples once, generate greedily, score exactly.

- `prepare_task(spec, ...)`: documents -> `Sample`s (prompt, image file, references,
  metric keywords, chance). Done once per task and shared by every model compared. Rows
  that cannot be used (no image, no reference, unreadable image) are dropped and counted
  with their reasons; an unreachable dataset raises `TaskUnavailable` (reported as skipped).
- `generate(model, processor, task, ...)`: batched greedy answers through
  `components.inference.generate_answers` (progress bar included); the task's stop strings
  go to `model.generate` as `stop_strings` (decoding ends there; `score_task` still cuts
  the text at them and applies the extraction).
- `score_task(task, raw)`: every metric of the task through `components.metrics`, in both
  scoring modes (the first metric is the headline: `score` in the pt mode, `score_lmms` in
  the lmms mode, lmms-eval's own reading), per-item headline scores, an optional
  breakdown, and the dialect fidelity of the raw answers.
- `dialect_shares(texts, detector)`: share of answers the pt-PT/pt-BR variety detector
  labels pt-PT, pt-BR and unknown (too little evidence: "3", "B", "sim").
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.evaltasks.loaders import TaskUnavailable, load_docs
from components.evaltasks.prompts import (
    chance_of,
    doc_answers,
    doc_options,
    extract_answer,
    metric_extras,
    render_prompt,
)
from components.evaltasks.spec import TaskSpec
from components.evaltasks.visuals import doc_image

MAX_DROP_REASONS = 5


@dataclass
class Sample:
    """One scored item: what the model sees and what it is scored against."""

    id: str
    prompt: str
    image: Path
    image_size: tuple[int, int] | None
    n_images: int
    answers: list[str]
    options: list[str] | None
    extras: dict[str, Any]
    chance: float
    group: str | None = None


@dataclass
class PreparedTask:
    spec: TaskSpec
    samples: list[Sample]
    location: str
    dropped: int = 0
    drop_reasons: list[str] = field(default_factory=list)


def _docs_exploded(spec: TaskSpec, docs) -> Any:
    field_name = spec.dataset.explode
    for index, doc in enumerate(docs):
        doc = dict(doc)
        if field_name is None:
            yield index, None, doc
            continue
        values = doc.get(field_name)
        values = values if isinstance(values, list | tuple) else [values]
        for k, value in enumerate(values):
            yield index, k, {**doc, field_name: value}


def prepare_task(
    spec: TaskSpec,
    *,
    run_dir: Path | None,
    data_root: Path | None,
    cache_dir: Path,
    location: str | None = None,
    limit: int | None = None,
    s3_endpoint: str | None = None,
) -> PreparedTask:
    """Load and turn the task's documents into samples (see the module docstring).
    Decoded images go to `cache_dir/images/<task>/`, S3 downloads to `cache_dir/s3/`."""
    docs = load_docs(spec, location=location, run_dir=run_dir, limit=limit,
                     s3_endpoint=s3_endpoint, download_dir=cache_dir / "s3")
    where = location or spec.dataset.path or f"<run>/mix/{spec.dataset.file}"
    task = PreparedTask(spec, [], where)
    f = spec.fields
    for index, k, doc in _docs_exploded(spec, docs):
        raw_id = doc.get(f.id) if f.id else None
        sid = str(raw_id) if raw_id is not None else f"{spec.task}-{index:06d}"
        sid += f"#{k}" if k is not None else ""
        try:
            options = doc_options(spec, doc)
            answers = doc_answers(spec, doc, options)
            box = doc.get(spec.visual.draw_box) if spec.visual.draw_box else None
            image, size, n_images = doc_image(
                doc, f.image, root=data_root, cache_dir=cache_dir / "images" / spec.task, box=box,
                box_format=spec.visual.box_format, multi=spec.visual.multi)
            if image is None:
                raise ValueError("no image")
            prompt = render_prompt(spec, doc)
        except (ValueError, TypeError, IndexError, AmaliaError) as exc:
            task.dropped += 1
            if len(task.drop_reasons) < MAX_DROP_REASONS:
                task.drop_reasons.append(f"{sid}: {exc}")
            continue
        group = str(doc.get(f.breakdown)) if f.breakdown else None
        task.samples.append(Sample(sid, prompt, image, size, n_images, answers, options,
                                   metric_extras(spec, doc, options, size),
                                   chance_of(spec, options, doc), group))
    if not task.samples:
        reasons = "; ".join(task.drop_reasons) or "no documents"
        raise TaskUnavailable(f"no usable samples in {where} ({reasons})")
    return task


def max_new_tokens_for(spec: TaskSpec, default: int, cap: int | None = None) -> int:
    """The task's generation budget: its own, else `default`; never above `cap`."""
    n = spec.generation.max_new_tokens or default
    return min(n, cap) if cap else n


def generate(model, processor, task: PreparedTask, *, max_new_tokens: int, batch_size: int,
             progress: bool = False) -> list[str]:
    """Raw greedy generations for every sample of `task`, in order; decoding of a sample
    ends at the task's stop strings (`generation.until`) or `max_new_tokens`."""
    from components.inference import generate_answers

    items = [(s.image, s.prompt) for s in task.samples]
    return generate_answers(model, processor, items, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, progress=progress,
                            stop_strings=[s for s in task.spec.generation.until if s])


def _clean(value: Any) -> Any:
    """JSON-safe copies of metric details (NaN/inf become None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def shares_of(labels: list[str]) -> dict[str, Any]:
    """`{"pt_PT", "pt_BR", "unknown"}` shares of detector labels, plus `n`, `decided`
    (labelled either variety) and `pt_PT_of_decided` (None when nothing was decided)."""
    counts = Counter(labels)
    n = len(labels)
    decided = counts.get("pt-PT", 0) + counts.get("pt-BR", 0)
    return {
        "pt_PT": counts.get("pt-PT", 0) / n if n else 0.0,
        "pt_BR": counts.get("pt-BR", 0) / n if n else 0.0,
        "unknown": counts.get("unknown", 0) / n if n else 0.0,
        "n": n,
        "decided": decided,
        "pt_PT_of_decided": counts.get("pt-PT", 0) / decided if decided else None,
    }


def dialect_labels(texts: list[str], detector) -> list[str]:
    """The detector's label (`pt-PT`, `pt-BR`, `unknown`) of every text."""
    return [r["label"] for r in detector.classify(list(texts))] if texts else []


def dialect_shares(texts: list[str], detector) -> dict[str, Any]:
    """`shares_of` the detector labels of `texts`."""
    return shares_of(dialect_labels(texts, detector))


@dataclass
class TaskScore:
    """A task's scores for one model: the results entry and per-item rows (headline metric,
    pt mode; `item_scores_lmms` in the lmms mode)."""

    result: dict[str, Any]
    predictions: list[str]
    item_scores: list[float | None]
    labels: list[str]
    item_scores_lmms: list[float | None] = field(default_factory=list)


def _breakdown(spec: TaskSpec, samples: list[Sample], preds, answers, extras,
               mode: str) -> dict[str, float]:
    from components.metrics import get_metric

    by_group: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_group[s.group or ""].append(i)
    metric = get_metric(spec.primary_metric)
    return {g: metric.evaluate([preds[i] for i in idx], [answers[i] for i in idx],
                               [extras[i] for i in idx], mode=mode).score
            for g, idx in sorted(by_group.items())}


def score_task(task: PreparedTask, raw: list[str], detector=None) -> TaskScore:
    """Score raw generations of every sample of `task` with every metric of the task, in
    the pt mode (`score`, `metrics`) and the lmms mode (`score_lmms`, `metrics_lmms`)."""
    from components.metrics import get_metric

    spec, samples = task.spec, task.samples
    if len(raw) != len(samples):
        raise ValueError(f"{spec.task}: {len(raw)} generations for {len(samples)} samples")
    preds = [extract_answer(spec, r) for r in raw]
    answers = [s.answers for s in samples]
    extras = [s.extras for s in samples]
    results = {m: get_metric(m).evaluate(preds, answers, extras, mode="pt") for m in spec.metrics}
    lmms = {m: get_metric(m).evaluate(preds, answers, extras, mode="lmms") for m in spec.metrics}
    primary = results[spec.primary_metric]
    details: dict[str, Any] = {
        m: _clean(r.details) for m, r in results.items() if r.details}
    lmms_details = {m: _clean(r.details) for m, r in lmms.items() if r.details}
    if lmms_details:
        details["lmms"] = lmms_details
    if spec.fields.breakdown:
        details[f"by_{spec.fields.breakdown}"] = _breakdown(spec, samples, preds, answers,
                                                            extras, "pt")
        details[f"by_{spec.fields.breakdown}_lmms"] = _breakdown(spec, samples, preds, answers,
                                                                 extras, "lmms")
    if task.dropped:
        details["dropped"] = {"n": task.dropped, "reasons": task.drop_reasons}
    multi = sum(s.n_images > 1 for s in samples)
    if multi:
        details["multi_image_samples"] = multi
    result = {
        "score": float(primary.score),
        "score_lmms": float(lmms[spec.primary_metric].score),
        "chance": sum(s.chance for s in samples) / len(samples),
        "n": len(samples),
        "metric": spec.primary_metric,
        "metrics": {m: float(r.score) for m, r in results.items()},
        "metrics_lmms": {m: float(r.score) for m, r in lmms.items()},
        "scale": spec.score_scale,
        "details": details,
    }
    labels = dialect_labels(raw, detector) if detector is not None else []
    if detector is not None:
        result["dialect"] = shares_of(labels)
    return TaskScore(result, preds, list(primary.scores), labels,
                     list(lmms[spec.primary_metric].scores))
