"""The sharded validation flow: shards of the input checked by parallel Prefect tasks, merged.

`validate_shards(run_dir, shards=N)` does what the `validate` stage does, spread over
workers (`components.validation.shards` holds the steps and why they decide exactly as the
stage does): a plan counts the input chunks, cuts them into N contiguous ranges and hashes
the evaluation images once; `check_shard_task` runs the per-record checks of each range
(mapped); the duplicate checks are replayed over every shard's keys in input order (in the
flow: cheap, keys only); `finish_shard_task` writes each shard's kept parquet, views,
quarantine, tally and Great Expectations results (mapped); the merge writes
`<run_dir>/validate/` in the stage's layout with one `report.json` (`shards` added), applies
the `max_quarantine_ratio` gate and writes the stage manifest, so `translate`, `mix` and the
sharded translate flow read it like a single-process run.

Task runner (`validate.task_runner`, or `task_runner=`): `thread`, Prefect's thread pool
(shards share one process; each still has `validate.workers` decode processes), or `dask`, a
local Dask cluster of `validate.dask_workers` worker processes (`prefect_dask.DaskTaskRunner`;
its workers start non-daemonic so each can run its own decode pool). Tasks re-read settings
from `profile` / `params_path` / `overrides`, so they run on any worker that sees the run
directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from components.errors import ConfigError
from components.manifest import write_manifest
from components.settings import Settings, load_settings
from components.stages import MetricLogger, StageOutput, check_prerequisites
from components.validation.shards import (
    check_shard,
    find_duplicates,
    finish_shard,
    merge_shards,
    plan_shards,
    shard_dir,
)

TASK_RUNNERS = ("thread", "dask")


def make_task_runner(kind: str | TaskRunner, dask_workers: int = 2) -> TaskRunner:
    """`thread`: Prefect's default thread pool; `dask`: a local Dask cluster of
    `dask_workers` single-threaded worker processes. A `TaskRunner` is returned as is."""
    if isinstance(kind, TaskRunner):
        return kind
    if kind == "thread":
        return ThreadPoolTaskRunner()
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers,
                                              "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    raise ConfigError(f"unknown task runner {kind!r}", f"use one of {', '.join(TASK_RUNNERS)}")


def non_daemonic_dask() -> contextlib.AbstractContextManager:
    """Dask starts its worker processes daemonic, and a daemonic process may not start a
    process pool (validate's decode workers would run in-process); the cluster a
    `DaskTaskRunner` creates inside this context starts them as ordinary processes."""
    import dask

    return dask.config.set({"distributed.worker.daemon": False})


@task(task_run_name="validate-check-{index}", retries=1)
def check_shard_task(index: int, plan: dict[str, Any], work: str, profile: str | None,
                     params_path: str | None, overrides: dict[str, Any] | None
                     ) -> dict[str, Any]:
    """The per-record checks of shard `index` into `work/shard-<index>/`."""
    settings = load_settings(profile, params_path, overrides)
    result = check_shard(settings, plan, index, shard_dir(Path(work), index))
    get_run_logger().info("shard %d: %d records checked, %d without reasons", index,
                          result["records"], result["candidates"])
    return result


@task(task_run_name="validate-finish-{index}", retries=1)
def finish_shard_task(index: int, work: str, profile: str | None, params_path: str | None,
                      overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Write shard `index` (kept, views, quarantine, tally, GX); returns its report."""
    settings = load_settings(profile, params_path, overrides)
    report = finish_shard(settings, shard_dir(Path(work), index))
    get_run_logger().info("shard %d: %d kept, %d quarantined", index, report["kept"],
                          report["quarantined"])
    return report


def validate_in_shards(run_path: Path, settings: Settings, shards: int,
                       params_path: str | None = None,
                       overrides: dict[str, Any] | None = None,
                       log_metrics: MetricLogger | None = None) -> tuple[StageOutput, dict]:
    """The validate stage into `<run_path>/validate/` in `shards` shards mapped over the
    current flow's task runner (`log_metrics` gets the stage's metrics, as in the stage);
    returns (stage output, manifest). Must run inside a flow:
    `validate_shards_flow`, or the retrain's sharded stage (`flows/sharded.py`)."""
    inputs = check_prerequisites("validate", run_path, settings)
    stage_dir = run_path / "validate"
    work = run_path / "validate.shards"
    for path in (stage_dir, work):
        shutil.rmtree(path, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    logger = get_run_logger()
    try:
        plan = plan_shards(settings, shards, work)
        logger.info("validate: %d records in %d shards of %s records, %d eval images",
                    plan["records"], len(plan["shards"]),
                    [s["records"] for s in plan["shards"]], plan["eval_images"])
        indices = [s["index"] for s in plan["shards"]]
        common = (unmapped(str(work)), unmapped(settings.profile), unmapped(params_path),
                  unmapped(overrides))
        for future in check_shard_task.map(indices, unmapped(plan), *common):
            future.result()  # raises the first shard failure
        dirs = [shard_dir(work, k) for k in indices]
        duplicates = find_duplicates(dirs)
        logger.info("validate: duplicates across the input per shard: %s", duplicates)
        for future in finish_shard_task.map(indices, *common):
            future.result()
        output = merge_shards(settings, dirs, stage_dir, expected_records=plan["records"],
                              log_metrics=log_metrics)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = write_manifest(
        stage_dir, "validate", inputs=inputs, counts=output.counts, metrics=output.metrics,
        config_digest=settings.digest(), started=started,
        extra={"profile": settings.profile, **output.extra, "shards": len(dirs)})
    logger.info("validate: %d/%d kept over %d shards", output.counts["kept"],
                output.counts["total"], len(dirs))
    return output, manifest


@flow(name="amalia-vl-validate")
def validate_shards_flow(
    run_dir: str,
    shards: int | None = None,
    profile: str | None = None,
    params_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate into `<run_dir>/validate/` in `shards` shards (default `validate.shards`)
    on this flow's task runner; returns the merged report."""
    settings = load_settings(profile, params_path, overrides)
    run_path = Path(run_dir)
    validate_in_shards(run_path, settings, shards or settings.validate_.shards, params_path,
                       overrides)
    return json.loads((run_path / "validate" / "report.json").read_text())


def validate_shards(
    run_dir: str,
    shards: int | None = None,
    profile: str | None = None,
    params_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    task_runner: str | TaskRunner | None = None,
) -> dict[str, Any]:
    """Run `validate_shards_flow` on `task_runner` (`thread`, `dask` or a `TaskRunner`;
    default `validate.task_runner`, with `validate.dask_workers` processes for `dask`)."""
    settings = load_settings(profile, params_path, overrides)
    kind = task_runner or settings.validate_.task_runner
    runner = make_task_runner(kind, settings.validate_.dask_workers)
    with non_daemonic_dask() if _is_dask(runner) else contextlib.nullcontext():
        return validate_shards_flow.with_options(task_runner=runner)(
            run_dir, shards=shards, profile=profile, params_path=params_path,
            overrides=overrides)


def _is_dask(runner: TaskRunner) -> bool:
    return type(runner).__module__.startswith("prefect_dask")


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.validate --run-dir RUN [--shards N] [--task-runner thread|dask]`."""
    import argparse
    import importlib

    ap = argparse.ArgumentParser(description="Sharded validation (Prefect).")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--shards", type=int, default=None, help="default: validate.shards")
    ap.add_argument("--task-runner", choices=TASK_RUNNERS, default=None,
                    help="default: validate.task_runner")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--params", default=None, help="params.yaml path")
    args = ap.parse_args(argv)
    # the tasks by their importable module, not `__main__`, so Dask workers import them
    module = importlib.import_module("flows.validate")
    report = module.validate_shards(args.run_dir, shards=args.shards, profile=args.profile,
                                    params_path=args.params, task_runner=args.task_runner)
    print(json.dumps({k: report[k] for k in ("total", "kept", "quarantined", "by_reason",
                                             "shards")}, ensure_ascii=False))


if __name__ == "__main__":
    main()
