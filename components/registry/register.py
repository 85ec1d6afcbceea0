"""Registration (the `register` stage): log the dpo model as a pyfunc with its
per-sample scores, create a version carrying its lineage, and only then move the alias;
and resolving a folder or `models:/` URI to a local save_pretrained folder.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from components.errors import AmaliaError, MissingInputError
from components.registry.serving import _pyfunc_class
from components.registry.tags import (
    HF_ARTIFACT,
    SAMPLE_SCORES,
    TAG_SCORES,
    TAG_STATUS,
)
from components.stages import StageContext, StageOutput


def _client():
    from mlflow import MlflowClient

    from components.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def git_commit() -> str:
    """`git rev-parse HEAD` of the checkout this code runs from, else "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(settings: Any, run_dir: Path) -> dict[str, str]:
    """Where a registered version comes from: code (git commit, code version), data (the md5
    DVC recorded in `data.dvc`, or "untracked"; each finished stage's `outputs_digest`),
    config (params digest, profile) and the run folder."""
    from components.manifest import MANIFEST, code_version
    from components.stages import ORDER
    from components.tracking import dvc_data_hash

    dvc = dvc_data_hash()
    tags = {"git.commit": git_commit(), "amalia.code_version": code_version(),
            "dvc.data_md5": dvc["md5"] if dvc and dvc["md5"] else "untracked",
            "amalia.params_digest": settings.digest(),
            "amalia.config_digest": settings.digest(),
            "amalia.profile": settings.profile, "amalia.run_dir": str(run_dir)}
    for stage in ORDER:
        manifest = Path(run_dir) / stage / MANIFEST
        if stage != "register" and manifest.exists():
            digest = json.loads(manifest.read_text()).get("outputs_digest")
            if digest:
                tags[f"amalia.input.{stage}"] = str(digest)
    return tags


def sample_scores_from(eval_dir: Path, model: str = "dpo") -> dict[str, Any] | None:
    """The compact per-sample scores of `model` in an evaluate folder: `{"format": 1,
    "model", "tasks": {task: {"scale", "n"}}, "scores": [[task, id, score], ...]}` (rows
    without a score are left out); None when `predictions.jsonl` is missing."""
    preds = Path(eval_dir) / "predictions.jsonl"
    if not preds.exists():
        return None
    comparison_path = Path(eval_dir) / "comparison.json"
    comparison = json.loads(comparison_path.read_text()) if comparison_path.exists() else {}
    scores: list[list[Any]] = []
    tasks: dict[str, dict[str, Any]] = {}
    for line in preds.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("model") != model or row.get("score") is None:
            continue
        task = str(row["task"])
        scores.append([task, str(row["id"]), float(row["score"])])
        entry = tasks.setdefault(task, {"scale": float(
            comparison.get(model, {}).get(task, {}).get("scale", 1.0)), "n": 0})
        entry["n"] += 1
    return {"format": 1, "model": model, "tasks": tasks, "scores": scores}


def _check_readable(model_dir: Path) -> None:
    """Every file of the folder opens: a broken folder fails before anything is logged."""
    for path in sorted(model_dir.rglob("*")):
        if path.is_dir():
            continue
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise MissingInputError(f"cannot read model file {path}: {exc.strerror or exc}",
                                    "re-run the dpo stage") from None


def log_and_register(
    model_dir: Path, model_name: str, alias: str, tags: dict[str, str],
    sample_scores: dict[str, Any] | None = None, description: str | None = None,
) -> dict[str, Any]:
    """Log `model_dir` as a pyfunc model in the active run (one is opened if none is),
    register a version carrying `tags` and point `alias` at it.

    Order, so that an alias never points at a broken version: the folder is read, the
    model and `sample_scores` (tag `eval.sample_scores` = their `runs:/` URI) are logged,
    the version is created with every tag and `amalia.registration=pending`, the tags are
    read back, the status becomes `complete`, and only then does `alias` move. A failure
    after the version exists leaves it `pending` (or `failed`), unaliased, and raises an
    `AmaliaError` naming the version.
    """
    import mlflow

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise MissingInputError(f"no model in {model_dir}", "run the dpo stage first")
    _check_readable(model_dir)
    opened = mlflow.active_run() is None
    run = mlflow.active_run() or mlflow.start_run(run_name="register")
    try:
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=_pyfunc_class()(),
                artifacts={HF_ARTIFACT: str(model_dir)},
                pip_requirements=["amalia-vl", "torch", "transformers", "mlflow"],
            )
        except Exception as exc:  # noqa: BLE001 - S3 / HTTP / disk: all one failure here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AmaliaError(
                f"uploading the model to the artifact store of run {run.info.run_id} failed "
                f"({type(exc).__name__}: {first[:300]}); no version was registered",
                "check the artifact store (MLFLOW_S3_ENDPOINT_URL, credentials) and register "
                "again") from None
        run_id = run.info.run_id
        tags = {str(k): str(v) for k, v in tags.items()}
        if sample_scores is not None:
            mlflow.log_dict(sample_scores, SAMPLE_SCORES)
            tags[TAG_SCORES] = f"runs:/{run_id}/{SAMPLE_SCORES}"
        tags.setdefault("amalia.registration_run_id", run_id)
        registered = mlflow.register_model(info.model_uri, model_name,
                                           tags={**tags, TAG_STATUS: "pending"})
        version = str(registered.version)
        client = _client()
        try:
            if description:
                client.update_model_version(model_name, version, description=description)
            stored = client.get_model_version(model_name, version).tags or {}
            lost = sorted(k for k, v in tags.items() if stored.get(k) != v)
            if lost:
                raise AmaliaError(f"tags not stored: {', '.join(lost)}")
            client.set_model_version_tag(model_name, version, TAG_STATUS, "complete")
        except Exception as exc:
            _mark_failed(client, model_name, version)
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise AmaliaError(
                f"registration of {model_name} version {version} failed "
                f"({type(exc).__name__}: {first}); alias '{alias}' was not moved",
                "fix the cause and run the register stage again") from exc
        client.set_registered_model_alias(model_name, alias, version)
        mlflow.set_tag("amalia.registered_version", f"{model_name}/{version}")
    finally:
        if opened:
            mlflow.end_run()
    return {"name": model_name, "version": version, "alias": alias,
            "model_uri": f"models:/{model_name}@{alias}", "version_uri":
            f"models:/{model_name}/{version}", "run_id": info.run_id,
            "model_id": getattr(info, "model_id", None)}


def _mark_failed(client: Any, model_name: str, version: str) -> None:
    try:
        client.set_model_version_tag(model_name, version, TAG_STATUS, "failed")
    except Exception:  # noqa: BLE001 - the version stays `pending`: broken all the same
        pass


def run(ctx: StageContext) -> StageOutput:
    """The `register` stage: `<run>/dpo/model` with its scores and lineage as a new
    version, aliased `register.alias` (see `log_and_register`)."""
    import mlflow

    from components.tracking import configure

    reg = ctx.settings.register_
    eval_dir = ctx.stage_dir("evaluate")
    results = json.loads((eval_dir / "results.json").read_text())
    tags = {f"eval.{task}": f"{r['score']:.4f}" for task, r in results.items()
            if not task.startswith("_")}
    tags["eval.mean_score"] = f"{results['_summary']['mean_score']:.4f}"
    tags.update(lineage_tags(ctx.settings, ctx.run_dir))
    scores = sample_scores_from(eval_dir)

    configure(ctx.settings.tracking.experiment)
    opened = mlflow.active_run() is None
    if opened:
        mlflow.start_run(run_name=f"register-{Path(ctx.run_dir).name}")
    try:
        run_id = mlflow.active_run().info.run_id
        parent = mlflow.get_run(run_id).data.tags.get("mlflow.parentRunId")
        tags["amalia.parent_run_id"] = parent or "none"
        tags["amalia.registration_run_id"] = run_id
        description = (f"run {Path(ctx.run_dir).name} (profile {ctx.settings.profile}): "
                       f"mean_score {tags['eval.mean_score']}, git {tags['git.commit'][:12]}")
        registration = log_and_register(ctx.stage_dir("dpo") / "model", reg.model_name,
                                        reg.alias, tags, sample_scores=scores,
                                        description=description)
    finally:
        if opened:
            mlflow.end_run()
    (ctx.out_dir / "registration.json").write_text(json.dumps(registration, indent=2))
    return StageOutput(
        counts={"versions": 1, "sample_scores": len(scores["scores"]) if scores else 0},
        metrics={"registered_version": float(registration["version"])},
        params={"model_name": reg.model_name, "alias": reg.alias},
        artifacts=["registration.json"],
        extra={"registration": registration},
    )





def resolve_model_dir(ref: str | Path) -> Path:
    """A local save_pretrained folder for a path or an MLflow model URI."""
    text = str(ref)
    if not text.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://")):
        path = Path(text)
        if not (path / "config.json").exists():
            raise MissingInputError(f"no model folder at {path} (config.json missing)",
                                    "pass a save_pretrained folder or models:/amalia-vl@challenger")
        return path
    import mlflow

    from components.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
    except Exception as exc:  # MLflow raises several types; the reason is in the text
        hint = ("run: amalia-vl promote  (it sets @champion)" if "@champion" in text
                else "run: amalia-vl retrain  (it registers amalia-vl@challenger)")
        raise MissingInputError(
            f"cannot resolve {text}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
            hint) from None
    folder = _hf_folder_of(local)
    if folder is None:
        raise AmaliaError(f"{text} holds no save_pretrained folder")
    return folder


def _hf_folder_of(local: Path) -> Path | None:
    """The save_pretrained folder inside a downloaded model: for our pyfunc models the
    MLmodel records it (`python_function.artifacts.hf_model.path`; MLflow 3 stores it under
    the source folder's name); a bare downloaded folder is accepted as is."""
    import yaml

    mlmodel = local / "MLmodel"
    if mlmodel.exists():
        meta = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        rel = artifacts.get(HF_ARTIFACT, {}).get("path")
        if rel and (local / rel / "config.json").exists():
            return local / rel
    return local if (local / "config.json").exists() else None


def alias_version(model_name: str, alias: str) -> Any | None:
    """The ModelVersion behind `alias`, or None when the alias or model is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
