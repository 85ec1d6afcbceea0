"""The promotion gate: a paired bootstrap over two versions' per-sample scores,
paired by (task, id), per task and over the mean of tasks.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.registry.tags import (
    TAG_SCORES,
)
from components.settings import GateSettings


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
