"""Training stages on other machines: what the retrain flow does before and after sending
a stage to a work pool, and what the worker does, with the stage outputs passing through
the run store (`components.run_store`, S3) rather than a shared disk.

- flow side, `before_dispatch`: push the stage's prerequisites (content-addressed: what the
  store already holds is not uploaded again);
- worker side, `run_from_store`: pull those prerequisites into a fresh local run
  directory, run the stage (`components.pipeline.run_tracked_stage`, torchrun included),
  push its outputs, delete the local copy;
- flow side, `after_dispatch`: pull the stage back into the flow's run directory (every
  file checked against its sha256) and record it in the cross-run cache.

Plain Python (no Prefect): `flows/retrain.py` and `flows/remote.py` call these.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.run_store import RunStore
from components.settings import Settings
from components.stages import get_spec
from components.train.distributed import Launch


def store_for(settings: Settings) -> RunStore:
    o = settings.orchestration
    return RunStore(o.run_store, endpoint_url=o.s3_endpoint_url)


def before_dispatch(name: str, settings: Settings, run_dir: Path) -> dict[str, Any]:
    """Push the stages `name` reads; returns {stage: push counts}."""
    store = store_for(settings)
    return {req: store.push_stage(run_dir, req) for req in get_spec(name).requires}


def run_from_store(name: str, settings: Settings, run_name: str,
                   parent_run_id: str | None = None, launch: Launch | None = None,
                   params_path: str | None = None, restart: bool = False,
                   work_dir: Path | None = None) -> dict[str, Any]:
    """On a worker: stage `name` of run `run_name`, inputs pulled from and outputs pushed
    to the run store; returns the stage manifest (with its MLflow run id)."""
    from components.pipeline import run_tracked_stage

    store = store_for(settings)
    base = Path(tempfile.mkdtemp(prefix=f"amalia-{name}-", dir=work_dir))
    try:
        run_dir = base / run_name
        for req in get_spec(name).requires:
            store.pull_stage(run_dir, req, run=run_name)
        manifest = run_tracked_stage(name, settings, run_dir, parent_run_id, progress=False,
                                     restart=restart, launch=launch, params_path=params_path)
        store.push_stage(run_dir, name)
        return manifest
    finally:
        shutil.rmtree(base, ignore_errors=True)


def after_dispatch(name: str, settings: Settings, run_dir: Path,
                   cache_key: str | None) -> dict[str, Any]:
    """Pull the dispatched stage back into `run_dir`; returns its manifest."""
    from components import stage_cache

    target = Path(run_dir) / name
    if target.exists():
        shutil.rmtree(target)
    manifest = store_for(settings).pull_stage(run_dir, name)
    if cache_key:
        stage_cache.record(name, cache_key, run_dir, manifest.get("mlflow_run_id"))
    return manifest
