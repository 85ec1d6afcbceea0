"""Model registry: register a run's model in MLflow, resolve `models:/` URIs, promote,
roll back.

- `run(ctx)` (the `register` stage) logs `<run>/dpo/model` (a save_pretrained folder) as
  an MLflow pyfunc model wrapping that folder (MLflow has no transformers flavor for
  image-text-to-text), logs the candidate's per-sample evaluation scores
  (`eval/sample_scores.json`, from `<run>/evaluate/predictions.jsonl`) beside it, registers
  a new version of `settings.register.model_name` carrying its lineage as tags (git commit,
  DVC data md5, upstream stage digests, params digest, per-task scores, parent run) and
  only then points the alias `challenger` at it (see `log_and_register`: a version whose
  registration failed half-way is left `amalia.registration=pending|failed`, unaliased).
- `resolve_model_dir(ref)` turns a local folder, `models:/name@alias`,
  `models:/name/version` or `runs:/...` URI into a local save_pretrained folder.
- `promote()` moves `champion` to the `challenger` version only when a paired bootstrap
  over both versions' per-sample scores passes the gate (`RegisterSettings.gate`), or
  there is no champion yet, or it is forced with a reason. Promotions and rollbacks of one
  store are serialised (`promotion_lock`) and compare-and-set the alias; each promotion
  leaves a decision record on the version and appends to the registered model's
  `champion.history`, which `rollback()` walks back.
- The pyfunc's `predict` answers rows of `image` (a path, raw bytes or a base64 string)
  and `question`, from a DataFrame or a list of dicts (`mlflow models serve` included).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import getpass
import io
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.errors import AmaliaError, ConfigError, MissingInputError
from components.settings import GateSettings
from components.stages import StageContext, StageOutput

HF_ARTIFACT = "hf_model"
SAMPLE_SCORES = "eval/sample_scores.json"  # artifact of the registration run
TAG_SCORES = "eval.sample_scores"  # version tag: runs:/ URI of SAMPLE_SCORES
TAG_STATUS = "amalia.registration"  # pending at creation, complete before the alias moves
TAG_DECISION = "promotion.decision"  # version tag: JSON record of the last gate decision
TAG_PREVIOUS = "champion.previous"  # version tag: the champion it replaced
TAG_HISTORY = "champion.history"  # registered-model tag: JSON list of champion versions
TAG_LOCK = "promotion.lock"  # registered-model tag: the registry lease (remote stores)
HISTORY_KEEP = 100
LEASE_S = 300.0
LEASE_SETTLE_S = 0.5


# --------------------------------------------------------------------------- serving


def _image_source(value: Any, row: int) -> Path | io.BytesIO:
    """A path or an in-memory file for one row's `image`: a path (str or Path), raw bytes,
    or a base64 string (optionally a `data:image/...;base64,` URL)."""
    if isinstance(value, Path):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        else:
            try:
                if len(text) < 4096 and Path(text).is_file():
                    return Path(text)
            except OSError:  # a long base64 string is no valid file name
                pass
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AmaliaError(f"row {row}: 'image' is neither an existing file nor base64 "
                              f"({text[:40]!r})") from None
    else:
        raise AmaliaError(f"row {row}: 'image' must be a path, bytes or a base64 string, "
                          f"not {type(value).__name__}")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise AmaliaError(f"row {row}: 'image' bytes are not a readable image "
                          f"({str(exc) or type(exc).__name__})") from None
    return io.BytesIO(raw)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (
        isinstance(value, str) and not value.strip())


def prepare_rows(model_input: Any) -> list[tuple[Path | io.BytesIO, str]]:
    """`(image, question)` per row of a DataFrame, a list of dicts or one dict; a row
    without an image or a question is an `AmaliaError` naming the row."""
    if hasattr(model_input, "to_dict"):
        rows = model_input.to_dict("records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    else:
        rows = list(model_input)
    items = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise AmaliaError(f"row {i}: expected a mapping with 'image' and 'question', "
                              f"got {type(row).__name__}")
        for key in ("image", "question"):
            if _missing(row.get(key)):
                raise AmaliaError(f"row {i} has no '{key}' (each row needs 'image': a path, "
                                  f"bytes or base64, and 'question')")
        items.append((_image_source(row["image"], i), str(row["question"])))
    return items


def _pyfunc_class():
    import mlflow.pyfunc

    class AmaliaVLPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc face of an AMALIA-VL save_pretrained folder.

        `predict` takes a DataFrame, a list of dicts or one dict with `image` (a path, raw
        bytes or a base64 string) and `question`, and returns one greedy answer per row
        (`params.max_new_tokens`, default 16).
        """

        def load_context(self, context):
            from components.model.build import load_model

            self.model, self.processor = load_model(Path(context.artifacts[HF_ARTIFACT]))

        def predict(self, context, model_input, params=None):
            from components.inference import generate_answers
            from components.registry import prepare_rows

            items = prepare_rows(model_input)
            max_new = int((params or {}).get("max_new_tokens", 16))
            return generate_answers(self.model, self.processor, items, max_new_tokens=max_new,
                                    batch_size=8)

    return AmaliaVLPyfunc


# ---------------------------------------------------------------------- registration


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
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_class()(),
            artifacts={HF_ARTIFACT: str(model_dir)},
            pip_requirements=["amalia-vl", "torch", "transformers", "mlflow"],
        )
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


# ------------------------------------------------------------------------- resolving


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


# ------------------------------------------------------------------------------ gate


@dataclass
class TaskComparison:
    """One gated task: means over the paired samples (in units of the task's scale)."""

    task: str
    n: int
    champion: float | None
    challenger: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    ok: bool
    verdict: str


@dataclass
class GateResult:
    passed: bool
    reason: str
    mean_delta: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    resamples: int
    margin: float
    max_task_drop: float
    tasks: list[TaskComparison] = field(default_factory=list)


def load_sample_scores(version: Any) -> dict[str, Any] | None:
    """The per-sample scores a version logged at registration (tag `eval.sample_scores`),
    or None when it has none. An unreachable artifact is an `AmaliaError`."""
    uri = (version.tags or {}).get(TAG_SCORES)
    if not uri:
        return None
    import mlflow

    from components.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(quiet)
    os.environ[quiet] = "false"  # a bar per small file would drown the gate's table
    try:
        with tempfile.TemporaryDirectory(prefix="amalia-scores-") as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            return json.loads(Path(path).read_text())
    except Exception as exc:  # noqa: BLE001 - store errors come in many types
        raise AmaliaError(f"cannot read the per-sample scores of version {version.version} "
                          f"({uri}): {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    finally:
        if before is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = before


def _by_task(scores: dict[str, Any]) -> dict[str, dict[tuple[str, int], float]]:
    """`{task: {(id, occurrence): score / scale}}`: a repeated id pairs by occurrence."""
    scale = {t: float(v.get("scale") or 1.0) for t, v in (scores.get("tasks") or {}).items()}
    out: dict[str, dict[tuple[str, int], float]] = {}
    seen: dict[tuple[str, str], int] = {}
    for task, sid, value in scores.get("scores", []):
        k = seen.get((task, sid), 0)
        seen[(task, sid)] = k + 1
        out.setdefault(task, {})[(sid, k)] = float(value) / scale.get(task, 1.0)
    return out


def paired_bootstrap(champion: dict[str, Any], challenger: dict[str, Any],
                     gate: GateSettings) -> GateResult:
    """The promotion gate over two versions' per-sample scores (see `GateSettings`).

    Samples pair by (task, id); per task the paired differences (challenger - champion)
    are resampled with replacement; the statistic is the mean over tasks of each task's
    mean difference. Passes when the interval's lower end of that mean is above
    `gate.margin` and no gated task's lower end is below `-gate.max_task_drop`.
    """
    import numpy as np

    cp, ch = _by_task(champion), _by_task(challenger)
    names = list(gate.tasks) or sorted(set(cp) & set(ch))
    rows: list[TaskComparison] = []
    diffs: list[np.ndarray] = []
    for task in names:
        keys = sorted(set(cp.get(task, {})) & set(ch.get(task, {})))
        if not keys:
            rows.append(TaskComparison(task, 0, None, None, None, None, None, False,
                                       "unpaired"))
            continue
        a = np.array([cp[task][k] for k in keys])
        b = np.array([ch[task][k] for k in keys])
        diffs.append(b - a)
        rows.append(TaskComparison(task, len(keys), float(a.mean()), float(b.mean()),
                                   float((b - a).mean()), None, None, True, ""))
    common = dict(confidence=gate.confidence, resamples=gate.resamples, margin=gate.margin,
                  max_task_drop=gate.max_task_drop, tasks=rows)
    unpaired = [r.task for r in rows if r.n == 0]
    if not names or unpaired:
        why = (f"task(s) {', '.join(unpaired)} not evaluated on both versions" if unpaired
               else "no task evaluated on both versions")
        return GateResult(False, why, None, None, None, **common)

    rng = np.random.default_rng(gate.seed)
    boot = np.empty((gate.resamples, len(diffs)))
    for j, d in enumerate(diffs):
        step = max(1, 2_000_000 // len(d))  # bounds the index block's memory
        for start in range(0, gate.resamples, step):
            m = min(step, gate.resamples - start)
            boot[start:start + m, j] = d[rng.integers(0, len(d), size=(m, len(d)))].mean(1)
    q = [(1 - gate.confidence) / 2, 1 - (1 - gate.confidence) / 2]
    paired = [r for r in rows if r.n]
    for j, row in enumerate(paired):
        row.ci_low, row.ci_high = (float(x) for x in np.quantile(boot[:, j], q))
        row.ok = row.ci_low >= -gate.max_task_drop - 1e-12
        row.verdict = "ok" if row.ok else "drop"
    overall = boot.mean(axis=1)
    lo, hi = (float(x) for x in np.quantile(overall, q))
    mean = float(np.mean([d.mean() for d in diffs]))
    level = f"{gate.confidence:.0%} CI [{lo:+.4f}, {hi:+.4f}]"
    clears = lo > gate.margin
    drops = [r for r in paired if not r.ok]
    why = []
    if not clears:
        why.append(f"mean delta {mean:+.4f}, {level} does not clear margin {gate.margin:.4f}")
    if drops:
        why.append("; ".join(f"task {r.task} may drop by more than {gate.max_task_drop:.4f} "
                             f"(CI lower end {r.ci_low:+.4f})" for r in drops))
    if not why:
        why.append(f"mean delta {mean:+.4f}, {level} clears margin {gate.margin:.4f}; no task "
                   f"drops by more than {gate.max_task_drop:.4f} ({len(paired)} tasks, "
                   f"{sum(r.n for r in paired)} paired samples)")
    ungated = sorted((set(cp) ^ set(ch)) - set(names))
    if ungated:
        why.append(f"not gated (scored for one version only): {', '.join(ungated)}")
    return GateResult(clears and not drops, "; ".join(why), mean, lo, hi, **common)


# --------------------------------------------------------------------------- locking


@contextmanager
def promotion_lock(model_name: str, kind: str = "auto", timeout_s: float = 120.0
                   ) -> Iterator[str]:
    """Serialise promotions and rollbacks of `model_name`; yields what was locked.

    `file` (default for a `sqlite:///` store): an exclusive `flock` on
    `<db>.promote.lock` beside the database, real mutual exclusion for every process
    sharing that file on one host. `registry` (default otherwise, e.g. an MLflow server):
    a lease in the registered-model tag `promotion.lock` (owner, expiry), taken by writing
    it, waiting `LEASE_SETTLE_S` and reading it back; the last writer wins the lease.
    MLflow has no compare-and-set, so the lease assumes no contender stalls longer than
    the settle time between reading and writing it; `promote` re-checks the alias on top.
    """
    from components.tracking import tracking_uri

    uri = tracking_uri()
    if kind == "auto":
        kind = "file" if uri.startswith("sqlite:///") else "registry"
    if kind == "file":
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"a file lock needs a sqlite:/// store, not {uri}")
        db = Path(uri[len("sqlite:///"):])
        with _file_lock(db.with_name(db.name + ".promote.lock"), timeout_s) as where:
            yield where
    elif kind == "registry":
        with _registry_lease(model_name, timeout_s) as where:
            yield where
    else:
        raise ConfigError(f"unknown promotion lock '{kind}' (auto, file, registry)")


@contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[str]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AmaliaError(f"another promotion has held {path} for over "
                                      f"{timeout_s:.0f} s", "wait for it, then retry") from None
                time.sleep(0.05)
        try:
            yield f"file:{path}"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _registry_lease(model_name: str, timeout_s: float) -> Iterator[str]:
    import random

    client = _client()
    owner = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + timeout_s
    while True:
        held = _lease(client.get_registered_model(model_name).tags or {})
        if held and held["expires"] > time.time():
            if time.monotonic() > deadline:
                raise AmaliaError(f"promotion lease on '{model_name}' held by {held['owner']}",
                                  f"wait, or delete the model tag '{TAG_LOCK}' if it is stale")
            time.sleep(0.1 + random.random() * 0.2)
            continue
        value = json.dumps({"token": uuid.uuid4().hex, "owner": owner,
                            "expires": time.time() + LEASE_S})
        client.set_registered_model_tag(model_name, TAG_LOCK, value)
        time.sleep(LEASE_SETTLE_S)
        if (client.get_registered_model(model_name).tags or {}).get(TAG_LOCK) == value:
            break
    try:
        yield f"registry:{model_name}"
    finally:
        if (client.get_registered_model(model_name).tags or {}).get(TAG_LOCK) == value:
            client.delete_registered_model_tag(model_name, TAG_LOCK)


def _lease(tags: dict[str, str]) -> dict[str, Any] | None:
    try:
        held = json.loads(tags[TAG_LOCK])
        return {"owner": str(held["owner"]), "expires": float(held["expires"])}
    except (KeyError, ValueError, TypeError):
        return None


# ------------------------------------------------------------------ promote, rollback


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    model_name: str
    challenger_version: str | None
    champion_version_before: str | None
    challenger_score: float | None
    champion_score: float | None
    forced: bool = False
    by: str = ""
    at: str = ""
    gate: GateResult | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _version(v: Any) -> str | None:
    return str(v.version) if v is not None else None


def history(model_name: str) -> list[str]:
    """The versions that were champion, oldest first (registered-model tag)."""
    tags = _client().get_registered_model(model_name).tags or {}
    try:
        return [str(v) for v in json.loads(tags.get(TAG_HISTORY, "[]"))]
    except ValueError:
        return []


def _set_history(model_name: str, versions: list[str]) -> None:
    _client().set_registered_model_tag(model_name, TAG_HISTORY,
                                       json.dumps(versions[-HISTORY_KEEP:]))


def _decide(model_name: str, challenger: Any, champion: Any, gate: GateSettings,
            force: bool, reason: str | None, from_alias: str, to_alias: str) -> PromotionDecision:
    def mean_tag(v: Any) -> float | None:
        value = (v.tags or {}).get("eval.mean_score") if v is not None else None
        return float(value) if value is not None else None

    decision = PromotionDecision(False, "", model_name, _version(challenger),
                                 _version(champion), mean_tag(challenger), mean_tag(champion),
                                 forced=force, by=getpass.getuser(), at=_now())
    status = (challenger.tags or {}).get(TAG_STATUS)
    if champion is not None and champion.version == challenger.version:
        decision.reason = f"version {challenger.version} is already {to_alias}"
        return decision
    if status in ("pending", "failed"):  # refused even when forced: it may be incomplete
        decision.reason = (f"version {challenger.version}'s registration did not complete "
                           f"({TAG_STATUS}={status}); register again")
        return decision
    if champion is None:
        decision.promoted = True
        decision.reason = f"no {to_alias} yet" + (f" (forced: {reason})" if force else "")
        return decision
    try:
        ch, cp = load_sample_scores(challenger), load_sample_scores(champion)
    except AmaliaError:
        if not force:
            raise
        ch = cp = None
    if ch is not None and cp is not None:
        decision.gate = paired_bootstrap(cp, ch, gate)
    if force:
        decision.promoted = True
        gate_note = f"; the gate said: {decision.gate.reason}" if decision.gate else ""
        decision.reason = f"forced by {decision.by}: {reason}{gate_note}"
    elif ch is None:
        decision.reason = (f"{from_alias} v{challenger.version} has no per-sample scores "
                           f"(tag {TAG_SCORES}); register it again")
    elif cp is None:
        decision.reason = (f"{to_alias} v{champion.version} has no per-sample scores "
                           f"(tag {TAG_SCORES}): promote with --force --reason TEXT")
    else:
        decision.promoted = decision.gate.passed
        decision.reason = decision.gate.reason
    return decision


def _record(decision: PromotionDecision) -> dict[str, Any]:
    out = asdict(decision)
    if decision.gate is not None:  # the per-task table stays readable, the record compact
        out["gate"] = {k: v for k, v in out["gate"].items() if k != "tasks"}
        out["gate"]["tasks"] = {t.task: {"n": t.n, "delta": t.delta, "ci": [t.ci_low, t.ci_high],
                                         "ok": t.ok} for t in decision.gate.tasks}
    return out


def promote(
    model_name: str,
    from_alias: str = "challenger",
    to_alias: str = "champion",
    force: bool = False,
    reason: str | None = None,
    gate: GateSettings | None = None,
    lock: str = "auto",
) -> PromotionDecision:
    """Point `to_alias` at the `from_alias` version if the gate passes (see
    `paired_bootstrap`), if there is no `to_alias` yet, or if `force` (with a `reason`).

    Under `promotion_lock`: the aliases are read, the decision made, recorded on the
    challenger (tag `promotion.decision`; on promotion also `promotion.by/at/reason/forced`
    and `champion.previous`), the alias re-read (it moved: decide again against the new
    champion), set, read back, and the version appended to `champion.history`. Promoting
    the version that already is champion changes nothing.
    """
    gate = gate or GateSettings()
    if force and not (reason and reason.strip()):
        raise ConfigError("a forced promotion needs a reason", "pass --reason TEXT")
    if alias_version(model_name, from_alias) is None:
        raise MissingInputError(f"no '{from_alias}' alias on model '{model_name}'",
                                "run: amalia-vl retrain")
    client = _client()
    with promotion_lock(model_name, lock):
        for _attempt in range(3):
            challenger = alias_version(model_name, from_alias)
            champion = alias_version(model_name, to_alias)
            if challenger is None:
                raise MissingInputError(f"no '{from_alias}' alias on model '{model_name}'",
                                        "run: amalia-vl retrain")
            decision = _decide(model_name, challenger, champion, gate, force, reason,
                               from_alias, to_alias)
            version = str(challenger.version)
            if champion is not None and champion.version == challenger.version:
                return decision
            if not decision.promoted:
                client.set_model_version_tag(model_name, version, TAG_DECISION,
                                             json.dumps(_record(decision)))
                return decision
            if _version(alias_version(model_name, to_alias)) != _version(champion):
                continue  # moved while deciding (a lease lost to a stall): decide again
            for key, value in {TAG_DECISION: json.dumps(_record(decision)),
                               "promotion.at": decision.at, "promotion.by": decision.by,
                               "promotion.reason": decision.reason,
                               "promotion.forced": str(force).lower(),
                               TAG_PREVIOUS: _version(champion) or "none"}.items():
                client.set_model_version_tag(model_name, version, key, value)
            client.set_registered_model_alias(model_name, to_alias, version)
            after = _version(alias_version(model_name, to_alias))
            if after != version:
                raise AmaliaError(f"lost a promotion race: {to_alias} is now v{after}, "
                                  f"not v{version}", "run: amalia-vl promote  (to re-check)")
            past = history(model_name)
            if champion is not None and (not past or past[-1] != _version(champion)):
                past.append(_version(champion))  # a champion set by hand joins the history
            _set_history(model_name, [*past, version])
            return decision
    raise AmaliaError(f"'{to_alias}' of '{model_name}' kept moving during the promotion",
                      "run: amalia-vl promote  (again)")


@dataclass
class RollbackResult:
    model_name: str
    alias: str
    from_version: str
    to_version: str
    by: str
    at: str


def rollback(model_name: str, alias: str = "champion", reason: str | None = None,
             lock: str = "auto") -> RollbackResult:
    """Point `alias` back at the version it replaced: the one before it in
    `champion.history` (else its `champion.previous` tag). Rolling back again goes one
    further. Records `rollback.by/at/from/reason` on the restored version."""
    from mlflow.exceptions import MlflowException

    if alias_version(model_name, alias) is None:
        raise MissingInputError(f"no '{alias}' alias on model '{model_name}': nothing to roll "
                                f"back", "run: amalia-vl promote")
    client = _client()
    with promotion_lock(model_name, lock):
        current = alias_version(model_name, alias)
        if current is None:
            raise MissingInputError(f"no '{alias}' alias on model '{model_name}'")
        cur = str(current.version)
        past = history(model_name)
        if past and past[-1] == cur:
            past = past[:-1]
        target = past[-1] if past else (current.tags or {}).get(TAG_PREVIOUS)
        if not target or target == "none":
            raise AmaliaError(f"no previous {alias} of '{model_name}' to roll back to "
                              f"(v{cur} is the first)")
        try:
            client.get_model_version(model_name, target)
        except MlflowException:
            raise AmaliaError(f"the previous {alias} v{target} of '{model_name}' no longer "
                              f"exists") from None
        result = RollbackResult(model_name, alias, cur, str(target), getpass.getuser(), _now())
        for key, value in {"rollback.at": result.at, "rollback.by": result.by,
                           "rollback.from": cur, "rollback.reason": reason or ""}.items():
            client.set_model_version_tag(model_name, target, key, value)
        client.set_registered_model_alias(model_name, alias, target)
        if _version(alias_version(model_name, alias)) != str(target):
            raise AmaliaError(f"'{alias}' moved during the rollback", "check, then retry")
        _set_history(model_name, past if past else [str(target)])
        return result


def decision_dict(decision: PromotionDecision) -> dict[str, Any]:
    return asdict(decision)
