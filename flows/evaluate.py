"""Evaluation only: the `evaluate` stage on an existing run directory, as a Prefect flow.

Scores `<run_dir>/dpo/model` (candidate) against `<run_dir>/sft/model` and the registered
model under `champion_alias` (default: `evaluate.champion_alias`, i.e. `champion`) on the
held-out pt-PT tasks, writes `<run_dir>/evaluate/` like the stage does, and publishes
`results.md` as a Prefect markdown artifact. Re-running it after the task YAMLs, the
champion or the metric code changed re-scores a finished run without training anything.
Expected failures end the run Failed with a one-line message (see `flows/stage.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.errors import AmaliaError
from flows.stage import failed, run_one


@flow(name="amalia-vl-evaluate")
def evaluate_flow(
    run_dir: str,
    profile: str | None = None,
    params_path: str | None = None,
    champion_alias: str | None = None,
    progress: bool = False,
) -> Any:
    """Evaluate the models of `run_dir` (it must hold mix, sft and dpo); `champion_alias`:
    compare with this alias of the registered model instead of the configured one.
    Returns the stage summary (counts, metrics, MLflow run id)."""
    overrides = {"evaluate": {"champion_alias": champion_alias}} if champion_alias else None
    try:
        summary = run_one("evaluate", profile, run_dir, params_path, progress=progress,
                          overrides=overrides)
    except AmaliaError as exc:
        return failed(exc)
    results_md = Path(run_dir) / "evaluate" / "results.md"
    if results_md.exists():
        create_markdown_artifact(
            key="amalia-vl-evaluation",
            markdown=f"# AMALIA-VL evaluation ({Path(run_dir).name})\n\n{results_md.read_text()}",
            description="Held-out pt-PT task scores: candidate vs previous stage and champion",
        )
    return summary
