"""MLflow tracking for pipeline runs (plain Python; no Prefect here).

Defaults: the tracking store is `sqlite:///mlflow.db` in the working directory unless
`MLFLOW_TRACKING_URI` is set (e.g. a shared server with S3 artifacts). A retrain is one
parent run with a nested run per stage; a stage run alone from the CLI or DVC is a
top-level run. Every stage run records its params, per-step and final metrics, counts,
the stage manifest and chosen artifacts, and the data it read as MLflow dataset inputs
(`mlflow.log_input`, see `log_stage_inputs`).

Nothing secret reaches the store: every param, tag, dataset input and logged manifest
passes through `components.redact` first (secret-named keys, URL userinfo and the values
of secret-named environment variables are masked).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from components.redact import is_secret_name, redact, redact_value

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def run_link(run_id: str) -> str:
    """Where a person opens MLflow run `run_id`: its page on a tracking server's UI, else
    the command that opens the local store's UI (markdown)."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        from mlflow import MlflowClient

        experiment = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
        return f"[MLflow run {run_id[:8]}]({uri.rstrip('/')}/#/experiments/{experiment}/runs/" \
            f"{run_id})"
    return f"MLflow run `{run_id}` (open with `mlflow ui --backend-store-uri {uri}`)"


def configure(experiment: str) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    import logging

    import mlflow

    from components.redact import install_log_redaction

    install_log_redaction()  # no secret in any log line of a tracked run
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


def safe_params(params: dict[str, Any], max_chars: int | None = None) -> dict[str, str]:
    """MLflow params with secrets masked: a secret-named key's value whole, URL userinfo
    and known secret values inside the others; lists and dicts as JSON; values cut to
    `max_chars` after masking (so a cut never exposes half a secret)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if is_secret_name(str(key)) and value not in (None, ""):
            text = "***"
        else:
            value = redact_value(value)
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        out[str(key)] = text[:max_chars] if max_chars else text
    return out


def safe_tags(tags: dict[str, Any]) -> dict[str, str]:
    """MLflow tags with secrets masked (as `safe_params`)."""
    return safe_params(tags)


def _source(uri: str, hub_config: str | None = None) -> Any:
    """The MLflow dataset source of a local path, an s3 URI or (`hf://`) a hub id."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if uri.startswith("hf://"):
        uri = uri[len("hf://"):]
        if not Path(uri).exists():  # a hub id
            from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

            return HuggingFaceDatasetSource(path=uri, config_name=hub_config)
    if "://" not in uri:
        uri = str(Path(uri).resolve())
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both local
        warnings.simplefilter("ignore", UserWarning)
        try:
            return resolve_dataset_source(uri)
        except MlflowException:  # a scheme MLflow has no source for: keep the URI as a tag
            from mlflow.data.code_dataset_source import CodeDatasetSource

            return CodeDatasetSource(tags={"uri": uri})


def _log_dataset(mlflow: Any, source: Any, name: str, digest: str, context: str,
                 tags: dict[str, str]) -> None:
    """One dataset input; MLflow keeps 36 characters of a digest (the tags keep it all)."""
    from mlflow.data.meta_dataset import MetaDataset

    mlflow.log_input(MetaDataset(source=source, name=redact(name)[:500], digest=digest[:36]),
                     context=context, tags=safe_tags(tags))


def _log_raw_inputs(mlflow: Any, settings: Any) -> None:
    """The raw data a run reads: each `ingest.inputs` spec (name: the spec, digest: sha256
    of the spec text; context `input`), else the data dir, with the md5 DVC recorded for it
    (context `raw-data`, tag `dvc.data_md5`) when `data.dvc` tracks that very folder."""
    from components.ingest import split_spec

    specs = list(getattr(settings.ingest, "inputs", None) or [])
    for text in specs:
        _fmt, location, options, is_hf = split_spec(text)
        # credentials in a spec (URL userinfo, ?token=) are masked before anything is
        # logged, the digest included: the same data read with other keys is the same input
        shown = redact(text.strip())
        digest = hashlib.sha256(shown.encode()).hexdigest()
        source = _source(("hf://" if is_hf else "") + redact(location), options.get("config"))
        _log_dataset(mlflow, source, shown, digest, "input",
                     {"spec": shown[:500], "spec_sha256": digest})
    if specs:
        return
    info = dvc_data_hash()
    data_dir = Path(settings.data_dir).resolve()
    if info and Path(info["path"]).resolve() == data_dir:
        _log_dataset(mlflow, _source(str(data_dir)), f"dvc:{info['path']}", info["md5"],
                     "raw-data", {"dvc_md5": info["md5"]})
        mlflow.set_tag("dvc.data_md5", info["md5"])


def log_stage_inputs(mlflow: Any, settings: Any, stage: str, run_dir: Path) -> None:
    """Record what `stage` reads as dataset inputs of the active run.

    Each upstream stage it consumes (`check_prerequisites`: `{stage: outputs_digest}`) is a
    dataset `<stage>-outputs` (source: its folder in `run_dir`; digest: its manifest's
    `outputs_digest`, whole in the input tag `outputs_digest` and the run tag
    `amalia.input.<stage>`; context `upstream`). `validate` also records its raw inputs
    (see `_log_raw_inputs`). Raises `MissingInputError` as `run_stage` would.
    """
    from components.stages import check_prerequisites

    for upstream, digest in check_prerequisites(stage, Path(run_dir), settings).items():
        _log_dataset(mlflow, _source(str(Path(run_dir) / upstream)), f"{upstream}-outputs",
                     digest, "upstream", {"outputs_digest": digest, "stage": upstream})
        mlflow.set_tag(f"amalia.input.{upstream}", digest)
    if stage == "validate":
        _log_raw_inputs(mlflow, settings)


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
        params = safe_params(output.params)
        if params:
            mlflow.log_params(params)
        mlflow.log_metrics({f"count.{k}": float(v) for k, v in output.counts.items()})
        mlflow.log_metrics({k: float(v) for k, v in output.metrics.items()})
        mlflow.log_dict(redact_value(manifest), "manifest.json")
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
    with mlflow.start_run(run_name=run_name or f"retrain-{Path(run_dir).name}",
                          tags=safe_tags(tags)) as run:
        flat: dict[str, Any] = {}
        _flatten("", settings.as_dict(), flat)
        mlflow.log_params(safe_params({k: str(v) for k, v in flat.items()}, max_chars=500))
        _log_raw_inputs(mlflow, settings)
        yield run.info.run_id


def end_abandoned_runs(mlflow: Any, experiment_id: str, stage: str, run_dir: Path) -> list[str]:
    """Mark KILLED the runs of `stage` on `run_dir` still RUNNING in `experiment_id`: an
    attempt that was killed (SIGKILL, a lost node) and is now being redone. Returns their
    ids. Only the stage's own runs on this run directory are touched."""
    from mlflow.entities import RunStatus

    client = mlflow.MlflowClient()
    rd = str(run_dir).replace("'", "\\'")
    stale = client.search_runs(
        [experiment_id], filter_string=f"tags.`amalia.stage` = '{stage}' and "
        f"tags.`amalia.run_dir` = '{rd}' and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    return [r.info.run_id for r in stale]


@contextmanager
def stage_run(
    settings: Any, stage: str, run_dir: Path, parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage (nested under `parent_run_id` when given), or
    reopen `resume_run_id` (a training stage resuming from its checkpoints).

    Works from any thread or process: the parent is named explicitly, not taken from
    MLflow's thread-local active-run stack. The run records the datasets the stage reads
    (`log_stage_inputs`) before the stage starts.
    """
    import mlflow

    experiment_id = configure(settings.tracking.experiment)
    tags = {"amalia.stage": stage, "amalia.run_dir": str(run_dir),
            "amalia.profile": settings.profile, "amalia.config_digest": settings.digest()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if resume_run_id:
        from mlflow.exceptions import MlflowException

        try:
            mlflow.get_run(resume_run_id)
        except MlflowException:  # another tracking store: start a new run
            resume_run_id = None
    if resume_run_id:
        context = mlflow.start_run(run_id=resume_run_id, nested=bool(parent_run_id))
    else:
        end_abandoned_runs(mlflow, experiment_id, stage, run_dir)
        context = mlflow.start_run(run_name=stage, tags=safe_tags(tags),
                                   nested=bool(parent_run_id))
    with context as run:
        if resume_run_id:
            mlflow.set_tags(safe_tags({**tags, "amalia.resumed": "true"}))
        else:
            log_stage_inputs(mlflow, settings, stage, run_dir)
        yield StageRun(mlflow, run.info.run_id)
