"""The sharded translation flow: one Prefect task per shard, then a merge.

`translate_shards(run_dir, shards=N)` does what the `translate` stage does, spread over
workers: it cuts `<run_dir>/validate/seed_en.jsonl` into N contiguous shards
(`components.translation.shards.split_shards`), maps `translate_shard_task` over them (each
calls `components.translate.translate_shard`, re-reading settings so a task can run on any
worker of a Prefect work pool), merges the outputs in shard order into
`<run_dir>/translate/` (`seed_pt.jsonl`, `quarantine.jsonl`, `report.json` with
`shards` and wall-clock `tokens_per_s`), applies the stage's quality gate and writes the
stage manifest, so `mix` and later stages read it like a single-process run.

Shard tasks share the content-addressed cache (`translate.cache_dir`): a retried or
re-run flow only translates texts no shard finished. On one host the default thread
runner suffices (the GPU backends release the GIL in generate); `translate.task_runner:
dask` (or `task_runner=`) runs the shards on a local Dask cluster of
`translate.dask_workers` processes instead, as `flows/validate.py` does. Across hosts give
each worker its own cache directory and merge them with `TranslationCache.merge_from`.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.task_runners import TaskRunner

from components.manifest import write_manifest
from components.settings import Settings, load_settings
from components.stages import StageOutput, check_prerequisites
from components.translate import SOURCE, quality_gate, stage_output, translate_shard
from components.translation.shards import merge_shards, split_shards
from flows.validate import make_task_runner


@task(task_run_name="translate-shard-{index}", retries=1)
def translate_shard_task(index: int, shard: dict[str, Any], out_dir: str,
                         profile: str | None, params_path: str | None,
                         overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Translate one shard into `out_dir/shard-<index>/`; returns its report."""
    settings = load_settings(profile, params_path, overrides)
    report = translate_shard(shard["path"], settings, Path(out_dir) / f"shard-{index:05d}",
                             origin=SOURCE, line_offset=shard["line_offset"])
    get_run_logger().info("shard %d: %d records, %d kept, %d cache hits, %.0f tokens/s",
                          index, report["total"], report["kept"], report["cache_hits"],
                          report["tokens_per_s"])
    return report


def translate_in_shards(run_path: Path, settings: Settings, shards: int,
                        params_path: str | None = None,
                        overrides: dict[str, Any] | None = None
                        ) -> tuple[StageOutput, dict[str, Any], dict[str, Any]]:
    """The translate stage into `<run_path>/translate/` in `shards` shards mapped over the
    current flow's task runner; returns (stage output, manifest, merged report). Must run
    inside a flow: `translate_shards_flow`, or the retrain's sharded stage."""
    inputs = check_prerequisites("translate", run_path, settings)
    stage_dir = run_path / "translate"
    work = run_path / "translate.shards"
    for path in (stage_dir, work):
        shutil.rmtree(path, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    logger = get_run_logger()

    pieces = split_shards(run_path / "validate" / "seed_en.jsonl", shards, work / "in")
    logger.info("translate: %d shards of %s records, backend %s", len(pieces),
                [p["records"] for p in pieces], settings.translate.backend)
    t0 = time.perf_counter()
    futures = translate_shard_task.map(list(range(len(pieces))), pieces,
                                       unmapped(str(work / "out")), unmapped(settings.profile),
                                       unmapped(params_path), unmapped(overrides))
    for future in futures:
        future.result()  # raises the first shard failure
    wall = time.perf_counter() - t0
    shard_dirs = [work / "out" / f"shard-{i:05d}" for i in range(len(pieces))]
    report = merge_shards(shard_dirs, stage_dir, wall_seconds=wall)
    shutil.rmtree(work)
    quality_gate(report, settings, stage_dir)
    output = stage_output(report, settings)
    manifest = write_manifest(
        stage_dir, "translate", inputs=inputs, counts=output.counts, metrics=output.metrics,
        config_digest=settings.digest(), started=started,
        extra={"profile": settings.profile, "shards": len(pieces)})
    logger.info("translate: %d/%d kept, %.0f source tokens/s over %d shards",
                report["kept"], report["total"], report["tokens_per_s"], len(pieces))
    return output, manifest, report


@flow(name="amalia-vl-translate")
def translate_shards_flow(
    run_dir: str,
    shards: int | None = None,
    profile: str | None = None,
    params_path: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Translate the validated seed of `run_dir` in `shards` shards (default
    `translate.shards`); returns the merged report."""
    settings = load_settings(profile, params_path, overrides)
    _, _, report = translate_in_shards(Path(run_dir), settings,
                                       shards or settings.translate.shards, params_path,
                                       overrides)
    return report


def translate_shards(
    run_dir: str,
    shards: int | None = None,
    profile: str | None = None,
    params_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    task_runner: str | TaskRunner | None = None,
) -> dict[str, Any]:
    """Run `translate_shards_flow` on `task_runner` (`thread`, `dask` or a `TaskRunner`;
    default `translate.task_runner`, with `translate.dask_workers` processes for `dask`)."""
    settings = load_settings(profile, params_path, overrides)
    runner = make_task_runner(task_runner or settings.translate.task_runner,
                              settings.translate.dask_workers)
    return translate_shards_flow.with_options(task_runner=runner)(
        run_dir, shards=shards, profile=profile, params_path=params_path, overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.translate --run-dir RUN [--shards N] [--profile P]`."""
    import argparse
    import importlib
    import json

    ap = argparse.ArgumentParser(description="Sharded EN -> pt-PT translation (Prefect).")
    ap.add_argument("--run-dir", required=True, help="a run directory where validate ran")
    ap.add_argument("--shards", type=int, default=None, help="default: translate.shards")
    ap.add_argument("--task-runner", choices=("thread", "dask"), default=None,
                    help="default: translate.task_runner")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--params", default=None, help="params.yaml path")
    args = ap.parse_args(argv)
    # the tasks by their importable module, not `__main__`, so Dask workers import them
    module = importlib.import_module("flows.translate")
    report = module.translate_shards(args.run_dir, shards=args.shards, profile=args.profile,
                                     params_path=args.params, task_runner=args.task_runner)
    print(json.dumps({k: report[k] for k in ("total", "kept", "quarantined", "by_reason",
                                             "shards", "tokens_per_s")}, ensure_ascii=False))


if __name__ == "__main__":
    main()
