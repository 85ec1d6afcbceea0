"""Run stages with tracking: the one call shared by the CLI, DVC and Prefect tasks.

`run_tracked_stage` wraps `components.stages.run_stage` in an MLflow stage run;
`run_chain` runs a list of stages in order (the CLI's `retrain --no-prefect` and tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.settings import Settings
from components.stages import ORDER, run_stage


def run_tracked_stage(
    name: str,
    settings: Settings,
    run_dir: Path,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one stage inside its MLflow run; returns the stage manifest."""
    from components.tracking import stage_run

    with stage_run(settings, name, run_dir, parent_run_id) as tracked:
        output, manifest = run_stage(name, settings, run_dir, tracked.log_metrics, progress)
        tracked.finish(Path(run_dir) / name, output, manifest)
    manifest["mlflow_run_id"] = tracked.run_id
    return manifest


def stages_from(start: str | None = None, stop: str | None = None) -> list[str]:
    """The stage names from `start` to `stop` inclusive, in pipeline order."""
    names = list(ORDER)
    i = names.index(start) if start else 0
    j = names.index(stop) + 1 if stop else len(names)
    return names[i:j]
