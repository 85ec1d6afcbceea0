"""Data stages scaled out inside a retrain: validate / translate in shards, tracked as usual.

With `validate.shards` (or `translate.shards`) above 1, the retrain flow, the stage
deployment and `amalia-vl stage` run that stage as `sharded_stage_flow`: a subflow whose
task runner (`<stage>.task_runner`: Prefect's thread pool or a local Dask cluster of
`<stage>.dask_workers` processes) maps the shards, inside the same MLflow stage run and
cross-run cache as the one-process stage (`components.pipeline.run_tracked_stage` with a
sharded runner). Outputs, manifest and report have the stage's layout, so later stages
cannot tell the difference.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from components.pipeline import run_tracked_stage, shard_count, shard_section
from components.settings import Settings, load_settings
from components.stages import MetricLogger, StageOutput

__all__ = ["run_sharded_stage", "shard_count", "sharded_stage_flow"]


def sharded_runner(params_path: str | None, overrides: dict[str, Any] | None):
    """A `components.pipeline.StageRunner` that runs validate / translate in shards (in
    the current flow); the shard tasks re-read settings from profile + params + overrides."""

    def run(name: str, settings: Settings, run_dir: Path, log_metrics: MetricLogger,
            progress: bool) -> tuple[StageOutput, dict[str, Any]]:
        n = shard_count(name, settings)
        if name == "validate":
            from flows.validate import validate_in_shards

            return validate_in_shards(Path(run_dir), settings, n, params_path, overrides,
                                      log_metrics=log_metrics)
        from flows.translate import translate_in_shards

        output, manifest, _ = translate_in_shards(Path(run_dir), settings, n, params_path,
                                                  overrides)
        log_metrics(output.metrics, None)
        return output, manifest

    return run


@flow(name="amalia-vl-sharded-stage", flow_run_name="{name}-sharded")
def sharded_stage_flow(name: str, profile: str, params_path: str | None, run_dir: str,
                       parent_run_id: str | None, cache: bool = True,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage `name` (validate or translate) in shards, in its MLflow stage run, reused from
    the cache when unchanged; returns the stage manifest."""
    settings = load_settings(profile, params_path, overrides)
    manifest = run_tracked_stage(name, settings, Path(run_dir), parent_run_id, progress=False,
                                 params_path=params_path, cache=cache,
                                 runner=sharded_runner(params_path, overrides))
    reused = manifest.get("cache", {}).get("reused_from")
    get_run_logger().info("stage %s %s: counts=%s", name,
                          f"reused from {reused}" if reused else
                          f"done in {shard_count(name, settings)} shards", manifest["counts"])
    return manifest


def run_sharded_stage(name: str, settings: Settings, run_dir: Path,
                      parent_run_id: str | None, params_path: str | None = None,
                      overrides: dict[str, Any] | None = None, cache: bool = True
                      ) -> dict[str, Any]:
    """Run `sharded_stage_flow` on the stage's configured task runner (a subflow when
    called from a flow); returns the stage manifest. Not retried as a whole: each shard
    task retries on its own, and a data-quality failure is not transient."""
    from flows.validate import _is_dask, make_task_runner, non_daemonic_dask

    section = shard_section(name, settings)
    runner = make_task_runner(section.task_runner, section.dask_workers)
    with non_daemonic_dask() if _is_dask(runner) else contextlib.nullcontext():
        return sharded_stage_flow.with_options(task_runner=runner)(
            name, settings.profile, params_path, str(run_dir), parent_run_id, cache,
            overrides)
