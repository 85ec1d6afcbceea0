"""The stage registry: one pure function per stage, run the same way by every face.

`run_stage(name, settings, run_dir)` checks that the prerequisite stages finished (their
manifests exist), gives the stage a clean `<run-dir>/<name>/` directory, calls its
function and writes the manifest. The CLI (`amalia-vl stage NAME`), `dvc.yaml` and the
Prefect tasks in `flows/` all go through here, so they cannot drift apart.

Training stages first pass the pre-flight (`components.plan.preflight.preflight_stage`:
memory per process at this launch's world size, batch resolution, max_length): a recipe
that cannot run fails with one line before its folder is touched.

A stage function takes a `StageContext` and returns a `StageOutput`. Implementations are
imported lazily so that `amalia-vl --help` stays fast (Great Expectations, torch and
transformers take seconds to import).
"""

from __future__ import annotations

import datetime as dt
import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import AmaliaError, MissingInputError, resource_error
from components.manifest import read_manifest, write_manifest
from components.settings import Settings

MetricLogger = Callable[[dict[str, float], int | None], None]


def _no_metrics(_metrics: dict[str, float], _step: int | None = None) -> None:
    return None


@dataclass
class StageContext:
    """What a stage may touch: its settings, its run directory and a metric sink."""

    name: str
    settings: Settings
    run_dir: Path
    log_metrics: MetricLogger = _no_metrics
    progress: bool = True

    @property
    def out_dir(self) -> Path:
        return self.run_dir / self.name

    def stage_dir(self, stage: str) -> Path:
        """Output directory of an earlier stage (its manifest was checked before the call)."""
        return self.run_dir / stage

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)


@dataclass
class StageOutput:
    """What a stage reports: counts and metrics go to the manifest and to MLflow;
    `params` are logged as MLflow params; `artifacts` are files or folders (relative to the
    stage dir) worth logging to MLflow; `model_dir` is a save_pretrained folder, if any."""

    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    model_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    requires: tuple[str, ...]
    target: str  # "module:function"

    def function(self) -> Callable[[StageContext], StageOutput]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("validate", "Great Expectations checks; bad records go to quarantine",
                  (), "components.validate:run"),
        StageSpec("translate", "EN -> pt-PT translation of the English seed set",
                  ("validate",), "components.translate:run"),
        StageSpec("mix", "per-stage data mix (align / sft / dpo / eval)",
                  ("validate", "translate"), "components.mix:run"),
        StageSpec("align", "stage 1: train only the connector on captions",
                  ("mix",), "components.train.stages:run_align"),
        StageSpec("sft", "stage 2: visual instruction tuning (connector + LLM [+ vision])",
                  ("mix", "align"), "components.train.stages:run_sft"),
        StageSpec("dpo", "stage 3: DPO on chosen/rejected answers vs a frozen reference",
                  ("mix", "sft"), "components.train.stages:run_dpo"),
        StageSpec("evaluate", "held-out pt-PT benchmarks; compares dpo with sft",
                  ("mix", "sft", "dpo"), "components.evaluate:run"),
        StageSpec("register", "log the model to MLflow and set the 'challenger' alias",
                  ("dpo", "evaluate"), "components.registry:run"),
    )
}
ORDER: tuple[str, ...] = tuple(STAGES)


def get_spec(name: str) -> StageSpec:
    if name not in STAGES:
        raise AmaliaError(f"unknown stage '{name}'", f"stages are: {', '.join(ORDER)}")
    return STAGES[name]


def check_prerequisites(name: str, run_dir: Path, settings: Settings) -> dict[str, str]:
    """Raise `MissingInputError` unless inputs exist; returns `{stage: outputs_digest}`."""
    spec = get_spec(name)
    if name == "validate" and not settings.ingest.inputs and not Path(settings.data_dir).is_dir():
        raise MissingInputError(
            f"data directory '{settings.data_dir}' not found",
            "run: dvc pull data.dvc  (or regenerate it: amalia-vl data generate)",
        )
    return {req: read_manifest(run_dir, req, needed_by=name)["outputs_digest"]
            for req in spec.requires}


def _clear(out_dir: Path, keep: tuple[str, ...]) -> None:
    """Empty `out_dir` except the entries named in `keep` (created when missing)."""
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def run_stage(
    name: str,
    settings: Settings,
    run_dir: Path,
    log_metrics: MetricLogger = _no_metrics,
    progress: bool = True,
    restart: bool = False,
) -> tuple[StageOutput, dict[str, Any]]:
    """Run one stage into `<run_dir>/<name>/`; returns its output and manifest.

    A re-run replaces the stage's outputs whole, except a training stage's
    `checkpoints/`, which it resumes from (`restart=True` discards them first). Under
    torchrun every rank runs the stage; rank 0 alone prepares the folder and writes the
    manifest (other ranks return an empty manifest).
    """
    from components.train.distributed import TRAINING_STAGES, world

    spec = get_spec(name)
    ws = world()
    inputs = check_prerequisites(name, run_dir, settings)
    ctx = StageContext(name, settings, Path(run_dir), log_metrics, progress)
    if name in TRAINING_STAGES:
        from components.plan.preflight import preflight_stage

        # before the folder is touched: a recipe that cannot fit fails here, in seconds,
        # and earlier checkpoints stay as they are
        preflight_stage(settings, name, Path(run_dir), ws.world_size)
    keep = ("checkpoints",) if name in TRAINING_STAGES and not restart else ()
    if ws.is_main:
        _clear(ctx.out_dir, keep)
    ws.barrier()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        output = spec.function()(ctx)
        if not ws.is_main:
            return output, {}
        manifest = write_manifest(
            ctx.out_dir, name, inputs=inputs, counts=output.counts, metrics=output.metrics,
            config_digest=settings.digest(), started=started,
            extra={"profile": settings.profile, **output.extra},
        )
    except (OSError, MemoryError, RuntimeError) as exc:
        resource = resource_error(name, exc, run_dir)
        if resource is None:
            raise
        raise resource from exc
    return output, manifest
