"""Model registry: register a run's model in MLflow, resolve `models:/` URIs, promote.

- `run(ctx)` (the `register` stage) logs `<run>/dpo/model` (a save_pretrained folder) as
  an MLflow pyfunc model wrapping that folder (MLflow has no transformers flavor for
  image-text-to-text), registers a new version of `settings.register.model_name` and
  points the alias `challenger` at it. Evaluation scores become version tags, so a
  promotion can be decided from the registry alone.
- `resolve_model_dir(ref)` turns a local folder, `models:/name@alias`,
  `models:/name/version` or `runs:/...` URI into a local save_pretrained folder.
- `promote()` moves `champion` to the `challenger` version only when its
  `eval.mean_score` beats the champion's (or there is no champion, or `force`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.errors import AmaliaError, MissingInputError
from components.stages import StageContext, StageOutput

HF_ARTIFACT = "hf_model"


def _pyfunc_class():
    import mlflow.pyfunc

    class AmaliaVLPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc face of an AMALIA-VL save_pretrained folder.

        `predict` takes a DataFrame (or list of dicts) with `image` (a path) and
        `question`, and returns one greedy answer per row.
        """

        def load_context(self, context):
            from components.model.build import load_model

            self.model, self.processor = load_model(Path(context.artifacts[HF_ARTIFACT]))

        def predict(self, context, model_input, params=None):
            from components.inference import generate_answers

            rows = (model_input.to_dict("records") if hasattr(model_input, "to_dict")
                    else list(model_input))
            items = [(Path(r["image"]), str(r["question"])) for r in rows]
            max_new = int((params or {}).get("max_new_tokens", 16))
            return generate_answers(self.model, self.processor, items, max_new_tokens=max_new,
                                    batch_size=8)

    return AmaliaVLPyfunc


def _client():
    from mlflow import MlflowClient

    from components.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def log_and_register(
    model_dir: Path, model_name: str, alias: str, tags: dict[str, str]
) -> dict[str, Any]:
    """Log `model_dir` as a pyfunc model in the active run, register it, set `alias`."""
    import mlflow

    if not (model_dir / "config.json").exists():
        raise MissingInputError(f"no model in {model_dir}", "run the dpo stage first")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=_pyfunc_class()(),
        artifacts={HF_ARTIFACT: str(model_dir)},
        registered_model_name=model_name,
        pip_requirements=["amalia-vl", "torch", "transformers", "mlflow"],
    )
    client = _client()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(model_name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return {"name": model_name, "version": version, "alias": alias,
            "model_uri": f"models:/{model_name}@{alias}", "version_uri":
            f"models:/{model_name}/{version}", "run_id": info.run_id,
            "model_id": getattr(info, "model_id", None)}


def run(ctx: StageContext) -> StageOutput:
    import mlflow

    from components.tracking import configure

    reg = ctx.settings.register_
    results = json.loads((ctx.stage_dir("evaluate") / "results.json").read_text())
    tags = {f"eval.{task}": f"{r['score']:.4f}" for task, r in results.items()
            if not task.startswith("_")}
    tags["eval.mean_score"] = f"{results['_summary']['mean_score']:.4f}"
    tags["amalia.run_dir"] = str(ctx.run_dir)
    tags["amalia.profile"] = ctx.settings.profile
    tags["amalia.config_digest"] = ctx.settings.digest()

    configure(ctx.settings.tracking.experiment)
    opened = mlflow.active_run() is None
    if opened:
        mlflow.start_run(run_name="register")
    try:
        registration = log_and_register(ctx.stage_dir("dpo") / "model", reg.model_name,
                                        reg.alias, tags)
    finally:
        if opened:
            mlflow.end_run()
    (ctx.out_dir / "registration.json").write_text(json.dumps(registration, indent=2))
    return StageOutput(
        counts={"versions": 1},
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
        raise MissingInputError(
            f"cannot resolve {text}: {str(exc).splitlines()[0]}",
            "run: amalia-vl retrain  (it registers amalia-vl@challenger)",
        ) from None
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


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    model_name: str
    challenger_version: str | None
    champion_version_before: str | None
    challenger_score: float | None
    champion_score: float | None


def promote(
    model_name: str,
    metric: str = "eval.mean_score",
    from_alias: str = "challenger",
    to_alias: str = "champion",
    force: bool = False,
    min_improvement: float = 0.0,
) -> PromotionDecision:
    """Gate: point `to_alias` at `from_alias` only if its `metric` tag is better."""
    challenger = alias_version(model_name, from_alias)
    if challenger is None:
        raise MissingInputError(f"no '{from_alias}' alias on model '{model_name}'",
                                "run: amalia-vl retrain")
    champion = alias_version(model_name, to_alias)

    def score(version: Any) -> float | None:
        value = (version.tags or {}).get(metric) if version is not None else None
        return float(value) if value is not None else None

    ch_score, cp_score = score(challenger), score(champion)
    if champion is not None and champion.version == challenger.version:
        promoted, reason = False, f"version {challenger.version} is already {to_alias}"
    elif force:
        promoted, reason = True, "forced"
    elif champion is None:
        promoted, reason = True, f"no {to_alias} yet"
    elif ch_score is None:
        promoted, reason = False, f"{from_alias} has no '{metric}' tag"
    elif cp_score is None:
        promoted, reason = True, f"{to_alias} has no '{metric}' tag"
    elif ch_score > cp_score + min_improvement:
        promoted, reason = True, f"{metric} {ch_score:.4f} beats {cp_score:.4f}"
    else:
        promoted, reason = False, f"{metric} {ch_score:.4f} does not beat {cp_score:.4f}"
    if promoted:
        _client().set_registered_model_alias(model_name, to_alias, challenger.version)
    return PromotionDecision(promoted, reason, model_name, str(challenger.version),
                             str(champion.version) if champion else None, ch_score, cp_score)


def decision_dict(decision: PromotionDecision) -> dict[str, Any]:
    return asdict(decision)
