"""A training stage run on a work pool's worker (the GPU pool), its inputs and outputs
passing through the run store: what `retrain` dispatches with
`orchestration.training_deployment` (deployed as `amalia-vl-stage-remote/<stage>-gpu` in
`prefect.yaml`).

The flow run fails with the one-line error of an expected failure (missing input in the
store, bad config), which the dispatching retrain reports as the stage's failure.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from components.dispatch import run_from_store
from components.errors import AmaliaError
from components.redact import redact
from components.settings import load_settings
from components.train.distributed import Launch


@flow(name="amalia-vl-stage-remote", flow_run_name="{name}-{run_name}")
def remote_stage_flow(
    name: str,
    run_name: str,
    profile: str | None = None,
    params_path: str | None = None,
    parent_run_id: str | None = None,
    nproc: int | None = None,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    restart: bool = False,
) -> Any:
    """Stage `name` of run `run_name`: prerequisites pulled from
    `orchestration.run_store`, the stage run here (torchrun with `nproc` > 1), outputs
    pushed back. `nproc` default: the pool's `AMALIA_NPROC` (its job template sets one
    torchrun process per GPU), else 1. Returns the stage's counts and MLflow run id."""
    from flows.stage import default_nproc

    try:
        settings = load_settings(profile, params_path)
        launch = Launch(nproc=nproc or default_nproc(name), nnodes=nnodes, node_rank=node_rank,
                        rdzv_endpoint=rdzv_endpoint)
        manifest = run_from_store(name, settings, run_name, parent_run_id, launch,
                                  params_path, restart)
    except AmaliaError as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=redact(str(exc)))
    get_run_logger().info("stage %s of %s done and pushed: counts=%s", name, run_name,
                          manifest["counts"])
    return {"counts": manifest["counts"], "mlflow_run_id": manifest.get("mlflow_run_id")}
