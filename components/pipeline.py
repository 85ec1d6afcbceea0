"""Run stages with tracking: the one call shared by the CLI, DVC and Prefect tasks.

`run_tracked_stage` wraps `components.stages.run_stage` in an MLflow stage run (and, for
a training stage on several processes, launches it through torchrun first);
`run_chain` runs a list of stages in order (the CLI's `retrain --no-prefect` and tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.manifest import read_manifest, write_manifest_file
from components.settings import Settings
from components.stages import ORDER, MetricLogger, StageOutput, run_stage
from components.train.distributed import Launch

# How a stage's work is done inside its tracked run: `run_stage` (one process), or a
# scaled-out equivalent with the same contract (e.g. `flows/sharded.py`: shards mapped over
# Prefect tasks). Called as runner(name, settings, run_dir, log_metrics, progress).
StageRunner = Callable[[str, Settings, Path, MetricLogger, bool],
                       tuple[StageOutput, dict[str, Any]]]


def shard_section(name: str, settings: Settings) -> Any:
    """The settings section that says how stage `name` is sharded (`shards`, `task_runner`,
    `dask_workers`), or None for a stage that is never sharded (only validate and
    translate are, through `flows/sharded.py`)."""
    return {"validate": settings.validate_, "translate": settings.translate}.get(name)


def shard_count(name: str, settings: Settings) -> int:
    """How many shards stage `name` runs in (1: not sharded)."""
    section = shard_section(name, settings)
    return section.shards if section is not None else 1


def run_tracked_stage(
    name: str,
    settings: Settings,
    run_dir: Path,
    parent_run_id: str | None = None,
    progress: bool = True,
    restart: bool = False,
    launch: Launch | None = None,
    params_path: str | None = None,
    cache: bool = False,
    runner: StageRunner | None = None,
) -> dict[str, Any]:
    """Run one stage inside its MLflow run; returns the stage manifest.

    `runner` does the stage's work (default `run_stage`; a data stage may be given a
    sharded one): caching and tracking are the same either way.

    With `cache`, a stage whose key (`components.stage_cache`: code, the settings that can
    affect it, upstream outputs, data) matches a finished stage of an earlier run is not
    run: its outputs are linked into `run_dir` and its MLflow run is reused (the parent
    run gets a `amalia.reused.<stage>` tag); the manifest then has a `cache` entry.

    A training stage with a distributed `launch` (`--nproc N`, multi-node), or with
    DeepSpeed / FSDP on a GPU, is started through torchrun: each worker process comes
    back here as one rank, and rank 0 opens the MLflow run. A training stage that resumes
    from its checkpoints continues the MLflow run it started (the id is kept beside the
    checkpoints), not a new one.
    """
    from components import stage_cache
    from components.tracking import stage_run
    from components.train import checkpoints
    from components.train.distributed import TRAINING_STAGES, launch_stage, needs_torchrun

    run_dir = Path(run_dir)
    key, manifest = reuse_cached(name, settings, run_dir, parent_run_id) \
        if cache and not restart else (None, None)
    if manifest is not None:
        return manifest
    if needs_torchrun(name, launch, settings.engine.strategy):
        launch_stage(name, run_dir, launch or Launch(), profile=settings.profile,
                     params_path=params_path, parent_run_id=parent_run_id, restart=restart,
                     progress=progress)
        if launch is not None and launch.nnodes > 1 and (launch.node_rank or 0) != 0:
            # the launcher on node 0 reports the stage (global rank 0 writes the manifest
            # on the shared run directory, maybe after this node's workers are done)
            return {"stage": name, "node_rank": launch.node_rank, "counts": {},
                    "metrics": {}}
        manifest = read_manifest(run_dir, name)
        if key:
            stage_cache.record(name, key, run_dir, manifest.get("mlflow_run_id"))
        return manifest
    ckpt_dir = run_dir / name / "checkpoints"
    resume_id = None
    if name in TRAINING_STAGES:
        if restart:
            checkpoints.discard(ckpt_dir)
        resume_id = checkpoints.mlflow_run_id(ckpt_dir)
    with stage_run(settings, name, run_dir, parent_run_id, resume_run_id=resume_id) as tracked:
        if name in TRAINING_STAGES:
            checkpoints.remember_mlflow_run(ckpt_dir, tracked.run_id)
        output, manifest = (runner or run_stage)(name, settings, run_dir, tracked.log_metrics,
                                                 progress)
        tracked.finish(run_dir / name, output, manifest)
    manifest["mlflow_run_id"] = tracked.run_id
    write_manifest_file(run_dir / name, manifest)  # the run id too, for workers' callers
    if key:
        stage_cache.record(name, key, run_dir, tracked.run_id)
    return manifest


def reuse_cached(name: str, settings: Settings, run_dir: Path, parent_run_id: str | None
                 ) -> tuple[str | None, dict[str, Any] | None]:
    """(cache key, manifest of the reused stage or None): a finished stage of an earlier
    run with this stage's key, linked into `run_dir` (`components.stage_cache`)."""
    from components import stage_cache

    key = _cache_key(name, settings, run_dir)
    hit = stage_cache.lookup(name, key, run_dir) if key else None
    if hit is not None and name == "register" and not _alias_still_set(hit.stage_dir):
        hit = None  # another version took the alias since: register this one again
    if hit is None:
        return key, None
    manifest = stage_cache.materialise(hit, name, run_dir)
    _tag_reuse(parent_run_id, name, hit.mlflow_run_id)
    manifest["mlflow_run_id"] = hit.mlflow_run_id
    return key, manifest


def _cache_key(name: str, settings: Settings, run_dir: Path) -> str | None:
    """The stage's cache key, or None when its inputs are not there (the stage itself
    then fails with the usual message)."""
    from components import stage_cache
    from components.errors import MissingInputError

    try:
        return stage_cache.stage_key(name, settings, run_dir)
    except MissingInputError:
        return None


def _alias_still_set(stage_dir: Path) -> bool:
    """Whether the alias a cached registration set still points at its version."""
    import json

    from components.registry import alias_version

    try:
        reg = json.loads((stage_dir / "registration.json").read_text())
        current = alias_version(reg["name"], reg["alias"])
    except Exception:  # noqa: BLE001 - unreadable record or server: do not reuse
        return False
    return current is not None and str(current.version) == str(reg["version"])


def _tag_reuse(parent_run_id: str | None, name: str, run_id: str | None) -> None:
    if not parent_run_id:
        return
    from mlflow import MlflowClient

    from components.tracking import tracking_uri

    MlflowClient(tracking_uri=tracking_uri()).set_tag(parent_run_id, f"amalia.reused.{name}",
                                                      run_id or "unknown")


def stages_from(start: str | None = None, stop: str | None = None) -> list[str]:
    """The stage names from `start` to `stop` inclusive, in pipeline order."""
    names = list(ORDER)
    i = names.index(start) if start else 0
    j = names.index(stop) + 1 if stop else len(names)
    return names[i:j]
