"""The `evaluate` stage: the pt-PT task suite, scored exactly, candidate vs baselines.

Runs the tasks named in `settings.evaluate.tasks` (YAML definitions in
`components/evaltasks/tasks/`; default: the five embedded held-out families read from
`<run>/mix/eval.jsonl`) on the candidate (`<run>/dpo/model`), the previous stage's
checkpoint (`<run>/sft/model`) and, when the tracking store has one, the registered
`champion` (`models:/<register.model_name>@champion`). Generation is batched and greedy,
with a progress bar. A task whose dataset cannot be reached (offline hub, missing file) is
skipped with its reason; the stage still succeeds.

Writes into `<run>/evaluate/`:
- `results.json`: the candidate's per-task `{"score", "score_lmms", "chance", "n",
  "metric"}` (the contract the registry and the CLI rely on: exactly these keys; `score` is
  the pt scoring mode, `score_lmms` the same metric in the lmms mode, comparable with
  lmms-eval's published numbers), `_summary`
  (`mean_score` = mean of score / task scale, `min_score_over_chance`) and `_skipped`
  (`{task: {"reason", "dataset"}}`).
- `comparison.json`: per model, per task the same plus `metrics` / `metrics_lmms` (every
  metric of the task in each mode), `scale`, `details` (breakdowns, corpus details,
  dropped rows) and `dialect`;
  `_summary` per model; `_meta` (candidate, baselines, champion status, skipped tasks).
- `dialect.json`: per model and task (and `_all`), the shares of answers the pt-PT/pt-BR
  variety detector labels pt-PT, pt-BR and unknown: the "native pt-PT" claim, measured.
- `predictions.jsonl`: one line per sample and model (model, task, id, question = the
  prompt, answer, answers, prediction, raw, score, score_lmms, correct, dialect).
- `results.md` (table, skipped tasks, champion note), `results.png` (candidate vs sft vs
  champion per task, as a fraction of each task's scale, with chance), `table.json` (rows
  for a Prefect table artifact).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.records import write_records
from components.stages import StageContext, StageOutput

log = logging.getLogger(__name__)

CANDIDATE = "dpo"
BASELINES = ("sft",)
CHAMPION = "champion"
RESULT_KEYS = ("score", "score_lmms", "chance", "n", "metric")
CACHE = "_cache"


def summarise(results: dict[str, dict]) -> dict[str, float]:
    """`mean_score` (mean of score / scale over tasks) and `min_score_over_chance`."""
    tasks = [r for k, r in results.items() if not k.startswith("_")]
    mean = sum(r["score"] / r.get("scale", 1.0) for r in tasks) / max(len(tasks), 1)
    worst_ratio = min((r["score"] / r["chance"] for r in tasks if r["chance"]), default=0.0)
    return {"mean_score": mean, "min_score_over_chance": worst_ratio}


def find_champion(settings) -> tuple[Path | None, dict[str, Any]]:
    """The local folder of `models:/<name>@<champion_alias>` and a status dict
    (`status`: compared | absent | unavailable | disabled, `note` for results.md)."""
    alias = settings.evaluate.champion_alias
    name = settings.register_.model_name
    if not alias:
        return None, {"status": "disabled",
                      "note": "comparison disabled (evaluate.champion_alias is null)."}
    uri = f"models:/{name}@{alias}"
    from components.tracking import tracking_uri

    store = tracking_uri()
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).exists():
        return None, {"status": "absent", "uri": uri,
                      "note": f"no tracking store yet ({store}), so no {uri}: "
                              f"compared with the previous stage only."}
    from components.registry import alias_version, resolve_model_dir

    try:
        version = alias_version(name, alias)
    except Exception as exc:  # an unreachable store raises transport errors of many kinds
        return None, {"status": "unavailable", "uri": uri,
                      "note": f"{uri} not resolved ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}): "
                              f"compared with the previous stage only."}
    if version is None:
        return None, {"status": "absent", "uri": uri,
                      "note": f"no champion registered ({uri} does not exist): compared "
                              f"with the previous stage only."}
    try:
        path = resolve_model_dir(uri)
    except AmaliaError as exc:
        return None, {"status": "unavailable", "uri": uri, "version": str(version.version),
                      "note": f"{uri} (version {version.version}) not loadable: {exc}"}
    return path, {"status": "compared", "uri": uri, "version": str(version.version),
                  "note": f"{uri} is version {version.version}; compared above as "
                          f"'{CHAMPION}'."}


def _data_root(ctx: StageContext, spec, location: str | None) -> Path | None:
    """Where relative image paths of a task's documents resolve."""
    if spec.dataset.kind == "run_mix" and location is None:
        return ctx.data_dir
    where = location or spec.dataset.path or ""
    if where.startswith("s3://"):
        return None
    path = Path(where)
    return path if path.is_dir() else path.parent if path.exists() else None


def prepare_suite(ctx: StageContext) -> tuple[list, dict[str, dict[str, str]]]:
    """Every task of `settings.evaluate.tasks` prepared once; unreachable ones skipped."""
    from components.evaltasks.harness import prepare_task
    from components.evaltasks.loaders import TaskUnavailable
    from components.evaltasks.spec import resolve

    cfg = ctx.settings.evaluate
    prepared, skipped = [], {}
    for spec in resolve(cfg.tasks, cfg.task_dirs):
        location = cfg.datasets.get(spec.task)
        where = location or spec.dataset.path or f"<run>/mix/{spec.dataset.file}"
        where += f" [{spec.dataset.name}]" if spec.dataset.name and not location else ""
        try:
            task = prepare_task(
                spec, run_dir=ctx.run_dir, data_root=_data_root(ctx, spec, location),
                cache_dir=ctx.out_dir / CACHE, location=location, limit=cfg.limit,
                s3_endpoint=ctx.settings.ingest.s3_endpoint_url)
        except TaskUnavailable as exc:
            log.warning("evaluate: skipping %s: %s", spec.task, exc)
            skipped[spec.task] = {"reason": str(exc), "dataset": where}
            continue
        prepared.append(task)
    return prepared, skipped


def evaluate_model(name: str, model_dir: Path, tasks: list, ctx: StageContext, detector,
                   skipped: dict[str, dict[str, str]]) -> tuple[dict[str, Any], list[dict]]:
    """Every prepared task on the model in `model_dir`: `({task: entry}, prediction rows)`.
    A task whose scoring fails (references the metric cannot read) joins `skipped`."""
    from components.evaltasks.harness import generate, max_new_tokens_for, score_task
    from components.model.build import load_model

    cfg = ctx.settings.evaluate
    if all(t.spec.task in skipped for t in tasks):
        return {}, []
    model, processor = load_model(model_dir)
    entries: dict[str, Any] = {}
    rows: list[dict] = []
    for task in tasks:
        spec = task.spec
        if spec.task in skipped:
            continue
        log.info("evaluate: %s on %s (%d samples)", name, spec.task, len(task.samples))
        raw = generate(model, processor, task,
                       max_new_tokens=max_new_tokens_for(spec, cfg.max_new_tokens,
                                                         cfg.max_new_tokens_cap),
                       batch_size=cfg.batch_size, progress=ctx.progress)
        try:
            scored = score_task(task, raw, detector)
        except ValueError as exc:
            skipped[spec.task] = {"reason": f"scoring failed: {exc}", "dataset": task.location}
            continue
        entries[spec.task] = scored.result
        for i, sample in enumerate(task.samples):
            score = scored.item_scores[i]
            score_lmms = scored.item_scores_lmms[i] if scored.item_scores_lmms else None
            rows.append({
                "model": name, "task": spec.task, "id": sample.id, "question": sample.prompt,
                "answer": sample.answers[0],
                "answers": sample.answers if len(sample.answers) > 1 else None,
                "prediction": scored.predictions[i],
                "raw": raw[i] if raw[i] != scored.predictions[i] else None,
                "score": score, "score_lmms": score_lmms,
                "correct": score is not None and score >= 1.0 - 1e-9,
                "dialect": scored.labels[i] if scored.labels else None,
            })
    del model
    return entries, rows


def _dialect(comparison: dict[str, dict], rows: list[dict]) -> dict[str, dict]:
    from components.evaltasks.harness import shares_of

    out: dict[str, dict] = {}
    for name, res in comparison.items():
        out[name] = {t: r["dialect"] for t, r in res.items()
                     if not t.startswith("_") and "dialect" in r}
        out[name]["_all"] = shares_of([r["dialect"] for r in rows
                                       if r["model"] == name and r["dialect"]])
    return out


def _metrics(comparison: dict[str, dict], dialect: dict[str, dict],
             skipped: dict) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, res in comparison.items():
        for task, r in res.items():
            if task.startswith("_"):
                continue
            metrics[f"{name}.{task}"] = r["score"]
            if "score_lmms" in r:
                metrics[f"{name}.{task}.lmms"] = r["score_lmms"]
            for metric, value in r.get("metrics", {}).items():
                if metric != r["metric"]:
                    metrics[f"{name}.{task}.{metric}"] = value
        for key, value in res["_summary"].items():
            metrics[f"{name}.{key}"] = value
        for task, shares in dialect[name].items():
            prefix = f"{name}.dialect_" if task == "_all" else f"{name}.dialect.{task}."
            metrics[f"{prefix}pt_PT"] = shares["pt_PT"]
            metrics[f"{prefix}pt_BR"] = shares["pt_BR"]
    cand = comparison[CANDIDATE]
    metrics["mean_score"] = cand["_summary"]["mean_score"]
    metrics["min_score_over_chance"] = cand["_summary"]["min_score_over_chance"]
    metrics["dialect_pt_PT"] = dialect[CANDIDATE]["_all"]["pt_PT"]
    metrics["dialect_pt_BR"] = dialect[CANDIDATE]["_all"]["pt_BR"]
    metrics["tasks_skipped"] = float(len(skipped))
    return metrics


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(ctx: StageContext, extra_models: dict[str, Path] | None = None) -> StageOutput:
    """The `evaluate` stage (see the module docstring)."""
    from components.evaltasks import report
    from components.variety import make_detector

    cfg = ctx.settings.evaluate
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    tasks, skipped = prepare_suite(ctx)

    models: dict[str, Path] = {CANDIDATE: ctx.stage_dir(CANDIDATE) / "model"}
    models.update({b: ctx.stage_dir(b) / "model" for b in BASELINES})
    models.update(extra_models or {})
    champion_dir, champion = (None, {"status": "given", "note": "passed in by the caller."}) \
        if CHAMPION in models else find_champion(ctx.settings)
    if champion_dir is not None:
        models[CHAMPION] = champion_dir

    detector = make_detector(cfg.dialect_detector)
    comparison: dict[str, dict] = {}
    rows: list[dict] = []
    for name, model_dir in models.items():
        entries, model_rows = evaluate_model(name, Path(model_dir), tasks, ctx, detector,
                                             skipped)
        comparison[name] = entries
        rows += model_rows
    for res in comparison.values():  # a task skipped while scoring leaves every model
        for task in [t for t in res if t in skipped]:
            del res[task]
        res["_summary"] = summarise(res)
    rows = [r for r in rows if r["task"] not in skipped]

    results = {t: {k: r[k] for k in RESULT_KEYS} for t, r in comparison[CANDIDATE].items()
               if not t.startswith("_")}
    results["_summary"] = comparison[CANDIDATE]["_summary"]
    results["_skipped"] = skipped
    dialect = _dialect(comparison, rows)

    _dump(out / "results.json", results)
    _dump(out / "comparison.json", {**comparison, "_meta": {
        "candidate": CANDIDATE, "baselines": [m for m in models if m != CANDIDATE],
        "tasks": [t.spec.task for t in tasks if t.spec.task not in skipped],
        "champion": champion, "skipped": skipped}})
    _dump(out / "dialect.json", dialect)
    _dump(out / "table.json", report.table_rows(comparison))
    write_records(out / "predictions.jsonl",
                  ({k: v for k, v in r.items() if v is not None} for r in rows))
    (out / "results.md").write_text(
        report.markdown(comparison, skipped=skipped, champion=champion, candidate=CANDIDATE),
        encoding="utf-8")
    report.plot(comparison, out / "results.png")
    if not cfg.keep_cache:
        shutil.rmtree(out / CACHE, ignore_errors=True)

    return StageOutput(
        counts={"samples": sum(len(t.samples) for t in tasks if t.spec.task not in skipped),
                "models": len(models), "tasks": len(results) - 2,
                "tasks_skipped": len(skipped)},
        metrics=_metrics(comparison, dialect, skipped),
        params={"candidate": CANDIDATE, "baselines": [m for m in models if m != CANDIDATE],
                "tasks": list(cfg.tasks), "skipped": sorted(skipped),
                "champion": champion.get("version") or champion["status"]},
        artifacts=["results.json", "comparison.json", "dialect.json", "table.json",
                   "results.md", "results.png", "predictions.jsonl"],
        extra={"skipped": skipped, "champion": champion},
    )
