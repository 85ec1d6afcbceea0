"""One pipeline stage as its own Prefect flow, for deployments (`prefect.yaml`).

`stage_flow(name, profile, run_dir, ...)` runs a single stage through
`components.pipeline.run_tracked_stage`, the call `flows/retrain.py::stage_task`, the CLI
(`amalia-vl stage NAME`) and `dvc.yaml` share, so a deployment of one stage (e.g. `sft`
on the GPU work pool) behaves like `amalia-vl stage sft --run-dir RUN`. The stage's
prerequisites are checked before MLflow opens a run.

An expected failure (unknown profile or stage, missing inputs, bad data) ends the flow
run in a Failed state whose message is the one-line error, also logged at ERROR, with no
traceback: what an operator reads in the Prefect UI.

`nproc` left unset on a training stage comes from `AMALIA_NPROC`, which the GPU work
pool's job template (`infra/prefect/gpu-job-template.json`) sets from its `nproc`
variable, so a pod starts one torchrun process per GPU it was given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from components.errors import AmaliaError, ConfigError
from components.manifest import new_run_dir
from components.pipeline import run_tracked_stage
from components.redact import redact
from components.settings import load_settings
from components.stages import check_prerequisites, get_spec
from components.train.distributed import TRAINING_STAGES, Launch
from flows.sharded import run_sharded_stage, shard_count

NPROC_ENV = "AMALIA_NPROC"


def failed(exc: AmaliaError) -> State:
    """Log `exc` as one ERROR line and return the Failed state that ends the flow run."""
    get_run_logger().error("%s", exc)
    return Failed(message=redact(str(exc)))


def default_nproc(name: str) -> int:
    """Processes for stage `name`: `AMALIA_NPROC` for a training stage, else 1."""
    if name not in TRAINING_STAGES:
        return 1
    raw = os.environ.get(NPROC_ENV, "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{NPROC_ENV}={raw!r} is not an integer") from None


def run_one(
    name: str,
    profile: str | None = None,
    run_dir: str | None = None,
    params_path: str | None = None,
    inputs: list[str] | None = None,
    progress: bool = False,
    launch: Launch | None = None,
    restart: bool = False,
    cache: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run stage `name` into `run_dir` (new under `runs_dir` when None); returns a summary.
    Raises `AmaliaError` for anything the caller can fix."""
    get_spec(name)
    if inputs and name != "validate":
        raise ConfigError("inputs apply to the validate stage only")
    merged = dict(overrides or {})
    if inputs:
        merged["ingest"] = {**merged.get("ingest", {}), "inputs": list(inputs)}
    settings = load_settings(profile, params_path, overrides=merged or None)
    run_path = Path(run_dir) if run_dir else new_run_dir(Path(settings.runs_dir))
    launch = launch or Launch()
    if launch.distributed:
        from components.train.distributed import check_nproc

        if name not in TRAINING_STAGES:
            raise ConfigError(f"nproc applies to the training stages "
                              f"({', '.join(TRAINING_STAGES)}), not '{name}'")
        check_nproc(launch.nproc, launch.nnodes)
    check_prerequisites(name, run_path, settings)  # fail before MLflow opens a run
    if shard_count(name, settings) > 1:
        manifest = run_sharded_stage(name, settings, run_path, None, params_path,
                                     merged or None, cache)
    else:
        manifest = run_tracked_stage(name, settings, run_path, None, progress,
                                     restart=restart, launch=launch,
                                     params_path=params_path, cache=cache)
    get_run_logger().info("stage %s done -> %s counts=%s", name, run_path / name,
                          manifest["counts"])
    return {"stage": name, "run_dir": str(run_path), "profile": settings.profile,
            "counts": manifest["counts"], "metrics": manifest["metrics"],
            "mlflow_run_id": manifest.get("mlflow_run_id")}


@flow(name="amalia-vl-stage", flow_run_name="stage-{name}")
def stage_flow(
    name: str,
    profile: str | None = None,
    run_dir: str | None = None,
    params_path: str | None = None,
    inputs: list[str] | None = None,
    progress: bool = False,
    nproc: int | None = None,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    restart: bool = False,
    cache: bool = False,
) -> Any:
    """Run one stage (`validate`, ..., `register`) on `run_dir`, which must hold the
    outputs of the stages it needs (a new run dir under `runs_dir` when None).

    `inputs` (validate only): data specs to ingest instead of `data_dir`, as
    `amalia-vl stage validate --input`. `nproc`/`nnodes`/`node_rank`/`rdzv_endpoint`:
    torchrun launch of a training stage (`nproc` default: `AMALIA_NPROC`, else 1);
    `restart`: discard its checkpoints; `cache`: reuse an identical finished stage.
    Returns the stage's counts, metrics and MLflow run id.
    """
    try:
        launch = Launch(nproc=nproc or default_nproc(name), nnodes=nnodes,
                        node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
        return run_one(name, profile, run_dir, params_path, inputs, progress, launch,
                       restart, cache)
    except AmaliaError as exc:
        return failed(exc)
