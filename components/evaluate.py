"""The `evaluate` stage: held-out pt-PT tasks, scored exactly, candidate vs baselines.

Reads `<run>/mix/eval.jsonl` (qa records of the test split: images never seen in
training) and generates answers greedily with the candidate (`<run>/dpo/model`) and the
previous stage's checkpoint (`<run>/sft/model`). Writes:
- `results.json`: per task family `{"score", "chance", "n", "metric"}` for the candidate
  (the contract later issues and the registry rely on), plus `_summary`.
- `comparison.json`: the same per task for every model evaluated (candidate, sft,
  champion when a `champion` was passed in `extra_models`).
- `predictions.jsonl`: one line per sample and model (id, task, question, answer,
  prediction, correct).
- `results.md` (a table) and `results.png` (bar plot of score vs chance per task).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any

from components.records import Record, read_records, write_records
from components.stages import StageContext, StageOutput

CANDIDATE = "dpo"
BASELINES = ("sft",)


def normalise_answer(text: str) -> str:
    """Lower-case, NFC, strip punctuation and surrounding space; keeps accents (pt-PT)."""
    text = unicodedata.normalize("NFC", text or "").strip().lower()
    text = re.sub(r"[\s]+", " ", text)
    return text.strip(" .!?;:,\"'«»")


def exact_match(prediction: str, answer: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(answer))


def chance_of(record: Record) -> float:
    """Score of uniform guessing among the record's options (0 if open-ended)."""
    return 1.0 / len(record.options) if record.options else 0.0


def score_predictions(records: list[Record], predictions: list[str]) -> dict[str, dict]:
    """Per task family `{"score", "chance", "n", "metric"}` from aligned lists."""
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rec, pred in zip(records, predictions, strict=True):
        by_task[rec.task_family].append((exact_match(pred, rec.answer or ""), chance_of(rec)))
    return {
        task: {
            "score": sum(s for s, _ in rows) / len(rows),
            "chance": sum(c for _, c in rows) / len(rows),
            "n": len(rows),
            "metric": "exact_match",
        }
        for task, rows in sorted(by_task.items())
    }


def summarise(results: dict[str, dict]) -> dict[str, float]:
    tasks = [r for k, r in results.items() if not k.startswith("_")]
    mean = sum(r["score"] for r in tasks) / max(len(tasks), 1)
    worst_ratio = min((r["score"] / r["chance"] for r in tasks if r["chance"]), default=0.0)
    return {"mean_score": mean, "min_score_over_chance": worst_ratio}


def evaluate_model(
    model_dir: Path, records: list[Record], data_dir: Path, settings: Any, progress: bool
) -> list[str]:
    """Greedy answers of the model in `model_dir` to every record's question."""
    from components.inference import generate_answers
    from components.model.build import load_model

    model, processor = load_model(model_dir)
    items = [(data_dir / (r.image or ""), r.question or "") for r in records]
    return generate_answers(
        model, processor, items, max_new_tokens=settings.evaluate.max_new_tokens,
        batch_size=settings.evaluate.batch_size, progress=progress,
    )


def _markdown(comparison: dict[str, dict[str, dict]]) -> str:
    models = list(comparison)
    tasks = sorted({t for res in comparison.values() for t in res if not t.startswith("_")})
    head = "| task | metric | n | chance | " + " | ".join(models) + " |\n"
    head += "|---" * (4 + len(models)) + "|\n"
    rows = []
    for t in tasks:
        first = next(res[t] for res in comparison.values() if t in res)
        cells = [f"{comparison[m][t]['score']:.3f}" if t in comparison[m] else "-" for m in models]
        rows.append(f"| {t} | {first['metric']} | {first['n']} | {first['chance']:.3f} | "
                    + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def _plot(comparison: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for res in comparison.values() for t in res if not t.startswith("_")})
    width = 0.8 / (len(comparison) + 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 3.5))
    for i, (name, res) in enumerate(comparison.items()):
        ax.bar([x + i * width for x in range(len(tasks))],
               [res.get(t, {}).get("score", 0.0) for t in tasks], width, label=name)
    chance = [next(r[t]["chance"] for r in comparison.values() if t in r) for t in tasks]
    ax.bar([x + len(comparison) * width for x in range(len(tasks))], chance, width,
           label="chance", color="lightgrey")
    ax.set_xticks([x + width * len(comparison) / 2 for x in range(len(tasks))], tasks)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact match")
    ax.set_title("Held-out pt-PT tasks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(ctx: StageContext, extra_models: dict[str, Path] | None = None) -> StageOutput:
    records = read_records(ctx.stage_dir("mix") / "eval.jsonl")
    models = {CANDIDATE: ctx.stage_dir(CANDIDATE) / "model"}
    models.update({b: ctx.stage_dir(b) / "model" for b in BASELINES})
    models.update(extra_models or {})

    comparison: dict[str, dict] = {}
    prediction_rows: list[dict[str, Any]] = []
    for name, model_dir in models.items():
        preds = evaluate_model(model_dir, records, ctx.data_dir, ctx.settings, ctx.progress)
        comparison[name] = score_predictions(records, preds)
        comparison[name]["_summary"] = summarise(comparison[name])
        for rec, pred in zip(records, preds, strict=True):
            prediction_rows.append({
                "model": name, "id": rec.id, "task": rec.task_family, "question": rec.question,
                "answer": rec.answer, "prediction": pred,
                "correct": bool(exact_match(pred, rec.answer or "")),
            })

    results = comparison[CANDIDATE]
    out = ctx.out_dir
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, ensure_ascii=False))
    write_records(out / "predictions.jsonl", prediction_rows)
    (out / "results.md").write_text(_markdown(comparison))
    _plot(comparison, out / "results.png")

    metrics: dict[str, float] = {}
    for name, res in comparison.items():
        for task, r in res.items():
            if not task.startswith("_"):
                metrics[f"{name}.{task}"] = r["score"]
        for key, value in res["_summary"].items():
            metrics[f"{name}.{key}"] = value
    metrics["mean_score"] = results["_summary"]["mean_score"]
    metrics["min_score_over_chance"] = results["_summary"]["min_score_over_chance"]
    return StageOutput(
        counts={"samples": len(records), "models": len(models)},
        metrics=metrics,
        params={"candidate": CANDIDATE, "baselines": list(BASELINES) + list(extra_models or {})},
        artifacts=["results.json", "comparison.json", "results.md", "results.png",
                   "predictions.jsonl"],
    )
