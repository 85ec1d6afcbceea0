"""Benchmark: cross-run stage caching of the retrain (components/stage_cache.py).

    python bench/retrain_cache.py                 # tiny profile, ~6 min on 2 cores
    python bench/retrain_cache.py --profile ci    # quicker

Three `amalia-vl retrain` commands (the real CLI and Prefect flow, one process each, a
fresh runs folder, SQLite MLflow in it), timed end to end:

1. `first`: the full retrain;
2. `unchanged`: the same command again (new run dir): every stage must be reused;
3. `changed`: `dpo.beta` changed: validate..sft reused, dpo / evaluate / register run.

Writes `bench/results/retrain_cache.json` with the wall seconds, the reused stages
(from each run's manifests) and `unchanged_over_first`. Target (issue #10): an unchanged
rerun takes <= 10% of the first run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = ("validate", "translate", "mix", "align", "sft", "dpo", "evaluate", "register")


def _params(root: Path, profile: str, **changes) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = profile
    raw["base"]["runs_dir"] = str(root / "runs")
    raw["base"]["data_dir"] = str(REPO / "data")
    for section, values in changes.items():
        raw["base"].setdefault(section, {}).update(values)
    path = root / f"params-{len(list(root.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _retrain(root: Path, params: Path, name: str) -> dict:
    env = {**os.environ, "AMALIA_PARAMS": str(params),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    run_dir = root / "runs" / name
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "amalia_vl", "retrain", "--run-dir", str(run_dir),
                    "--no-progress"], check=True, cwd=root, env=env)
    seconds = time.perf_counter() - started
    reused = [s for s in STAGES if json.loads((run_dir / s / "manifest.json").read_text()
                                              ).get("cache")]
    return {"wall_seconds": round(seconds, 1), "reused": reused,
            "ran": [s for s in STAGES if s not in reused]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrain_cache.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = _params(root, args.profile)
        result = {
            "command": "python bench/retrain_cache.py " + " ".join(sys.argv[1:]),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "profile": args.profile,
            "first": _retrain(root, base, "first"),
            "unchanged": _retrain(root, base, "unchanged"),
            "changed": _retrain(root, _params(root, args.profile, dpo={"beta": 0.2}),
                                "changed"),
        }
    result["unchanged_over_first"] = round(
        result["unchanged"]["wall_seconds"] / result["first"]["wall_seconds"], 4)
    result["changed_over_first"] = round(
        result["changed"]["wall_seconds"] / result["first"]["wall_seconds"], 4)
    result["targets"] = {
        "unchanged<=10%": result["unchanged_over_first"] <= 0.10,
        "unchanged reuses every stage": result["unchanged"]["reused"] == list(STAGES),
        "changed dpo.beta re-runs dpo onwards": result["changed"]["ran"] == [
            "dpo", "evaluate", "register"],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
