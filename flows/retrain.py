"""The retrain flow: validate -> translate -> mix -> align -> sft -> dpo -> evaluate -> register.

Each stage is a Prefect task calling `components.pipeline.run_tracked_stage`, the same
function the CLI and `dvc.yaml` use. The flow opens one MLflow parent run; every task
opens its nested run by naming the parent explicitly, so tasks may run on other workers
(Prefect work pools) later without changing this file. The evaluation table becomes a
Prefect markdown artifact. With `validate.shards` / `translate.shards` above 1 those
stages run as sharded subflows (`flows/sharded.py`).

Before any stage runs, the pre-flight (`components.plan.preflight.preflight_retrain`)
plans every training stage the flow will run and refuses, in one line, a recipe that
cannot fit or whose batch does not resolve.

Run it with `amalia-vl retrain` (local, ephemeral Prefect server unless PREFECT_API_URL is
set) or deploy it to a work pool (see README "Scale out"). With
`orchestration.training_deployment` the training stages run as flow runs of that
deployment on its work pool (`flows/remote.py`), their data through the run store (S3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from prefect.states import Failed

from components.manifest import new_run_dir
from components.pipeline import run_tracked_stage, stages_from
from components.redact import redact
from components.settings import load_settings
from components.tracking import parent_run, run_link
from components.train.distributed import TRAINING_STAGES, Launch
from flows.sharded import run_sharded_stage, shard_count

# Training stages may hit transient worker faults (preemption, NCCL timeouts) on GPU pools;
# every stage may meet a storage/tracking server that is briefly down. Those are retried
# with back-off; an AmaliaError (bad data, bad config, missing input) is a real failure
# and is never retried.
RETRIES = {"align": 2, "sft": 2, "dpo": 2}
DEFAULT_RETRIES = 1
RETRY_DELAYS_S = [10, 60]


def transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry unless the stage failed with an AmaliaError
    (our one-line errors for bad input / config), which another try cannot fix."""
    from components.errors import AmaliaError

    try:
        state.result()
    except AmaliaError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(task_run_name="{name}", retry_condition_fn=transient_only)
def stage_task(
    name: str, profile: str, params_path: str | None, run_dir: str,
    parent_run_id: str | None, progress: bool, launch: dict[str, Any] | None = None,
    restart: bool = False, cache: bool = True, inputs: list[str] | None = None,
) -> dict[str, Any]:
    """Run one pipeline stage (settings re-read so the task is self-contained). Training
    stages run on `launch` (torchrun: processes per node, nodes, rendezvous) and resume
    from their checkpoints on a retry. With `cache`, a stage whose inputs match a finished
    stage of an earlier run reuses it (`components.stage_cache`)."""
    settings = load_settings(profile, params_path, overrides=input_overrides(inputs))
    # a retry after a worker fault resumes from the checkpoints the first try left
    first_try = getattr(getattr(get_run_context(), "task_run", None), "run_count", 1) <= 1
    manifest = run_tracked_stage(name, settings, Path(run_dir), parent_run_id, progress,
                                 restart=restart and first_try,
                                 launch=Launch(**launch) if launch else None,
                                 params_path=params_path, cache=cache)
    reused = manifest.get("cache", {}).get("reused_from")
    get_run_logger().info("stage %s %s: counts=%s", name,
                          f"reused from {reused}" if reused else "done", manifest["counts"])
    return manifest


@task(task_run_name="{name} (dispatched)", retry_condition_fn=transient_only)
def dispatched_stage_task(
    name: str, profile: str, params_path: str | None, run_dir: str,
    parent_run_id: str | None, launch: dict[str, Any] | None = None,
    restart: bool = False, cache: bool = True, inputs: list[str] | None = None,
) -> dict[str, Any]:
    """A training stage as a flow run of `orchestration.training_deployment` (the GPU
    pool): reused from the cache when unchanged, else its inputs pushed to the run store,
    the deployment run and awaited, its outputs pulled back (`components.dispatch`)."""
    from prefect.deployments import run_deployment

    from components.dispatch import after_dispatch, before_dispatch
    from components.errors import AmaliaError
    from components.pipeline import reuse_cached

    settings = load_settings(profile, params_path, overrides=input_overrides(inputs))
    run_path = Path(run_dir)
    logger = get_run_logger()
    key, manifest = reuse_cached(name, settings, run_path, parent_run_id) \
        if cache and not restart else (None, None)
    if manifest is not None:
        logger.info("stage %s reused from %s", name, manifest["cache"]["reused_from"])
        return manifest
    pushed = before_dispatch(name, settings, run_path)
    deployment = settings.orchestration.training_deployment.format(stage=name)
    launch = launch or {}
    logger.info("stage %s -> deployment %s (inputs pushed: %s)", name, deployment, pushed)
    flow_run = run_deployment(
        name=deployment, timeout=settings.orchestration.stage_timeout_s,
        parameters={"name": name, "run_name": run_path.name, "profile": profile,
                    "params_path": params_path, "parent_run_id": parent_run_id,
                    # 1: the pool decides (AMALIA_NPROC from its job template)
                    "nproc": launch.get("nproc") if launch.get("nproc", 1) > 1 else None,
                    "nnodes": launch.get("nnodes", 1),
                    "restart": restart})
    state = flow_run.state
    if state is None or not state.is_completed():
        raise AmaliaError(
            f"stage {name}: flow run {flow_run.name} of {deployment} ended "
            f"{state.name if state else 'without a state'}: "
            f"{(state.message if state else '') or 'see its logs in the Prefect UI'}")
    return after_dispatch(name, settings, run_path, key)


def input_overrides(inputs: list[str] | None) -> dict[str, Any] | None:
    """Settings overrides for data `inputs` (validate's `ingest.inputs`), if any."""
    return {"ingest": {"inputs": list(inputs)}} if inputs else None


@flow(name="amalia-vl-retrain")
def retrain_flow(
    profile: str | None = None,
    run_dir: str | None = None,
    params_path: str | None = None,
    start: str | None = None,
    stop: str | None = None,
    progress: bool = True,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    restart: bool = False,
    cache: bool = True,
    inputs: list[str] | None = None,
) -> Any:
    """Full retrain on `profile` into `run_dir` (new under runs/ by default).

    `inputs`: data sources to validate instead of `data_dir` (`[FORMAT:]LOCATION[?..]`, as
    `amalia-vl stage validate --input`). `nproc`/`nnodes`/`node_rank`/`rdzv_endpoint`:
    how the training stages are launched (torchrun); `restart`: discard training
    checkpoints instead of resuming from them; `cache`: reuse unchanged finished stages of
    earlier runs (`components.stage_cache`). `start`/`stop` restrict the chain (e.g.
    start=sft re-runs from sft on an existing run directory). Returns a summary: run dir,
    MLflow parent run, per-stage counts, evaluation results and the registration. An
    expected failure (unknown profile, missing input, bad data) ends the run Failed with
    its one-line message (and raises it to a direct caller, as the CLI).
    """
    from components.errors import AmaliaError

    try:
        return _retrain(profile, run_dir, params_path, start, stop, progress, nproc, nnodes,
                        node_rank, rdzv_endpoint, restart, cache, inputs)
    except AmaliaError as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=redact(str(exc)), data=exc)


def _retrain(
    profile: str | None = None,
    run_dir: str | None = None,
    params_path: str | None = None,
    start: str | None = None,
    stop: str | None = None,
    progress: bool = True,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    restart: bool = False,
    cache: bool = True,
    inputs: list[str] | None = None,
) -> dict[str, Any]:
    """The body of `retrain_flow` (see there)."""
    settings = load_settings(profile, params_path, overrides=input_overrides(inputs))
    # the pre-flight before validate and translate: a recipe that cannot fit fails in
    # seconds, not after hours of data stages
    from components.plan.preflight import preflight_retrain

    preflight_retrain(settings, tuple(stages_from(start, stop)),
                      Path(run_dir) if run_dir else None, nproc * nnodes)
    run_path = Path(run_dir) if run_dir else new_run_dir(Path(settings.runs_dir))
    run_path.mkdir(parents=True, exist_ok=True)
    logger = get_run_logger()
    logger.info("retrain: profile=%s run_dir=%s", settings.profile, run_path)

    launch = {"nproc": nproc, "nnodes": nnodes, "node_rank": node_rank,
              "rdzv_endpoint": rdzv_endpoint}
    manifests: dict[str, dict[str, Any]] = {}
    with parent_run(settings, run_path) as parent_id:
        for name in stages_from(start, stop):
            options = {"retries": RETRIES.get(name, DEFAULT_RETRIES),
                       "retry_delay_seconds": RETRY_DELAYS_S}
            if shard_count(name, settings) > 1:
                manifests[name] = run_sharded_stage(
                    name, settings, run_path, parent_id, params_path,
                    input_overrides(inputs), cache)
                continue
            if name in TRAINING_STAGES and settings.orchestration.training_deployment:
                manifests[name] = dispatched_stage_task.with_options(**options)(
                    name, settings.profile, params_path, str(run_path), parent_id, launch,
                    restart, cache, inputs)
                continue
            manifests[name] = stage_task.with_options(**options)(
                name, settings.profile, params_path, str(run_path), parent_id, progress,
                launch, restart, cache, inputs)
        results_md = run_path / "evaluate" / "results.md"
        if results_md.exists():
            create_markdown_artifact(
                key="amalia-vl-evaluation",
                markdown=f"# AMALIA-VL evaluation ({run_path.name})\n\n"
                         f"{run_link(parent_id)}\n\n{results_md.read_text()}",
                description="Held-out pt-PT task scores: candidate vs previous stage",
            )
        table = run_path / "evaluate" / "table.json"
        if table.exists():
            create_table_artifact(
                key="amalia-vl-evaluation-table", table=json.loads(table.read_text()),
                description="Per-task scores: dpo, sft, champion; dialect shares",
            )
    registration = manifests.get("register", {}).get("registration")
    return {
        "run_dir": str(run_path),
        "mlflow_parent_run_id": parent_id,
        "profile": settings.profile,
        "counts": {k: m["counts"] for k, m in manifests.items()},
        "metrics": {k: m["metrics"] for k, m in manifests.items()},
        "registration": registration,
        "reused": sorted(k for k, m in manifests.items() if m.get("cache")),
    }
