"""MLflow tracking for pipeline runs (plain Python; no Prefect here).

Defaults: the tracking store is `sqlite:///mlflow.db` in the working directory unless
`MLFLOW_TRACKING_URI` is set (e.g. a shared server with S3 artifacts). A retrain is one
parent run with a nested run per stage; a stage run alone from the CLI or DVC is a
top-level run. Every stage run records its params, per-step and final metrics, counts,
the stage manifest and chosen artifacts, and the DVC hash of the raw data it used
(`mlflow.log_input`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def configure(experiment: str) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    import logging

    import mlflow

    # MLflow's INFO lines (table migrations, experiment creation) drown the stage output.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.set_experiment(experiment)
    return exp.experiment_id


def dvc_data_hash(data_dvc: Path = Path("data.dvc")) -> dict[str, str] | None:
    """The md5 and path DVC recorded for the raw data (`data.dvc`), if tracked."""
    if not data_dvc.exists():
        return None
    meta = yaml.safe_load(data_dvc.read_text()) or {}
    outs = meta.get("outs") or [{}]
    out = outs[0]
    return {"path": str(out.get("path", "data")), "md5": str(out.get("md5", "")),
            "nfiles": str(out.get("nfiles", ""))}


def _log_data_input(mlflow: Any) -> None:
    info = dvc_data_hash()
    if not info:
        return
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both local
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(info["path"]).resolve()))
    dataset = MetaDataset(source=source, name=f"dvc:{info['path']}", digest=info["md5"][:36])
    mlflow.log_input(dataset, context="raw-data", tags={"dvc_md5": info["md5"]})
    mlflow.set_tag("dvc.data_md5", info["md5"])


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


class StageRun:
    """Handle on an active MLflow stage run: metric sink for training loops."""

    def __init__(self, mlflow: Any, run_id: str):
        self._mlflow = mlflow
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def finish(self, stage_dir: Path, output: Any, manifest: dict[str, Any]) -> None:
        """Log a finished stage: params, counts, metrics, manifest and artifacts."""
        mlflow = self._mlflow
        params = {k: (json.dumps(v) if isinstance(v, list | dict) else v)
                  for k, v in output.params.items()}
        if params:
            mlflow.log_params(params)
        mlflow.log_metrics({f"count.{k}": float(v) for k, v in output.counts.items()})
        mlflow.log_metrics({k: float(v) for k, v in output.metrics.items()})
        mlflow.log_dict(manifest, "manifest.json")
        for rel in output.artifacts:
            path = stage_dir / rel
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=rel)
            elif path.exists():
                mlflow.log_artifact(str(path))


@contextmanager
def parent_run(settings: Any, run_dir: Path, run_name: str | None = None) -> Iterator[str]:
    """Open the parent run of a retrain; yields its run id."""
    import mlflow

    configure(settings.tracking.experiment)
    tags = {"amalia.run_dir": str(run_dir), "amalia.profile": settings.profile,
            "amalia.config_digest": settings.digest()}
    with mlflow.start_run(run_name=run_name or f"retrain-{Path(run_dir).name}", tags=tags) as run:
        flat: dict[str, Any] = {}
        _flatten("", settings.as_dict(), flat)
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        _log_data_input(mlflow)
        yield run.info.run_id


@contextmanager
def stage_run(
    settings: Any, stage: str, run_dir: Path, parent_run_id: str | None = None
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage (nested under `parent_run_id` when given).

    Works from any thread or process: the parent is named explicitly, not taken from
    MLflow's thread-local active-run stack.
    """
    import mlflow

    configure(settings.tracking.experiment)
    tags = {"amalia.stage": stage, "amalia.run_dir": str(run_dir),
            "amalia.profile": settings.profile, "amalia.config_digest": settings.digest()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_name=stage, tags=tags, nested=bool(parent_run_id)) as run:
        if stage == "validate":
            _log_data_input(mlflow)
        yield StageRun(mlflow, run.info.run_id)
