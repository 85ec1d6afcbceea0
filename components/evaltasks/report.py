"""Evaluation reports: the markdown table, the comparison plot and Prefect table rows.

Inputs are the `comparison` mapping the evaluate stage writes: `{model: {task: entry,
"_summary": {...}}}`, each entry with `score`, `chance`, `n`, `metric`, `scale` and
`dialect`. Scores on other scales (MME out of 2800, CIDEr-D out of 10) are plotted as a
fraction of their `scale`, so every bar reads 0-1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def task_names(comparison: dict[str, dict[str, Any]]) -> list[str]:
    """Every task scored by some model, in first-seen order."""
    seen: dict[str, None] = {}
    for res in comparison.values():
        for task in res:
            if not task.startswith("_"):
                seen.setdefault(task, None)
    return list(seen)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(comparison: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task: task, metric, n, chance, one column per model (pt scoring mode),
    the candidate's (first model's) lmms-mode score and dialect shares; for
    `create_table_artifact`."""
    models = list(comparison)
    rows = []
    for task in task_names(comparison):
        first = next(res[task] for res in comparison.values() if task in res)
        row: dict[str, Any] = {"task": task, "metric": first["metric"], "n": first["n"],
                               "chance": round(first["chance"], 4)}
        for m in models:
            entry = comparison[m].get(task)
            row[m] = round(entry["score"], 4) if entry else None
        lmms = (comparison[models[0]].get(task) or {}).get("score_lmms")
        row["lmms"] = round(lmms, 4) if lmms is not None else None
        dialect = (comparison[models[0]].get(task) or {}).get("dialect") or {}
        row["pt_PT"] = round(dialect["pt_PT"], 4) if "pt_PT" in dialect else None
        row["pt_BR"] = round(dialect["pt_BR"], 4) if "pt_BR" in dialect else None
        rows.append(row)
    return rows


def markdown(comparison: dict[str, dict[str, Any]], *, skipped: dict[str, dict[str, str]],
             champion: dict[str, Any], candidate: str) -> str:
    """The results table, then skipped tasks with their reasons, then the champion note."""
    models = list(comparison)
    out = ["| task | metric | n | chance | " + " | ".join(models)
           + f" | pt-PT ({candidate}) | pt-BR ({candidate}) | lmms ({candidate}) |",
           "|---" * (7 + len(models)) + "|"]
    for row in table_rows(comparison):
        cells = [_fmt(row[m]) for m in models]
        out.append(f"| {row['task']} | {row['metric']} | {row['n']} | {_fmt(row['chance'])} | "
                   + " | ".join(cells) + f" | {_fmt(row['pt_PT'], 2)} | {_fmt(row['pt_BR'], 2)}"
                   f" | {_fmt(row['lmms'])} |")
    summary = ["", "| summary | " + " | ".join(models) + " |", "|---" * (1 + len(models)) + "|"]
    for key in ("mean_score", "min_score_over_chance"):
        summary.append(f"| {key} | " + " | ".join(
            _fmt(comparison[m].get("_summary", {}).get(key)) for m in models) + " |")
    out += summary
    out += ["", f"Scores are the pt scoring mode (lmms-eval's scorer plus the pt-PT "
            f"extensions); `lmms ({candidate})` is the same metric scored as lmms-eval scores "
            "it, comparable with published tables."]
    out += ["", "Dialect fidelity: share of each model's answers that the pt-PT/pt-BR variety "
            "detector labels pt-PT and pt-BR (the rest is `unknown`: too short to tell, "
            "e.g. \"3\" or \"B\"). Per model and task in `dialect.json`."]
    if skipped:
        out += ["", f"Skipped ({len(skipped)}): dataset not reachable or not usable here.", "",
                "| task | dataset | reason |", "|---|---|---|"]
        for task, info in skipped.items():
            reason = info.get("reason", "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| {task} | {info.get('dataset', '')} | {reason} |")
    out += ["", f"Champion: {champion.get('note', 'not compared')}"]
    return "\n".join(out) + "\n"


def plot(comparison: dict[str, dict[str, Any]], path: Path, title: str | None = None) -> None:
    """Grouped bars per task: each model's score as a fraction of the task's scale, and
    chance in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = task_names(comparison)
    title = title or "pt-PT evaluation: " + " vs ".join(comparison)
    n_bars = len(comparison) + 1
    width = 0.8 / n_bars
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 2), 3.8))
    xs = range(len(tasks))
    for i, (name, res) in enumerate(comparison.items()):
        values = [res[t]["score"] / res[t].get("scale", 1.0) if t in res else 0.0
                  for t in tasks]
        ax.bar([x + i * width for x in xs], values, width, label=name)
    chance = []
    for t in tasks:
        entry = next(r[t] for r in comparison.values() if t in r)
        chance.append(entry["chance"] / entry.get("scale", 1.0))
    ax.bar([x + (n_bars - 1) * width for x in xs], chance, width, label="chance",
           color="lightgrey")
    ax.set_xticks([x + width * (n_bars - 1) / 2 for x in xs], tasks,
                  rotation=30 if len(tasks) > 6 else 0, ha="right" if len(tasks) > 6 else "center",
                  fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (fraction of max)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
