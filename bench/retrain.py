"""Benchmark: wall time of a full retrain and what it learned.

    python bench/retrain.py --profile tiny

Runs `amalia-vl retrain` (the real Prefect flow) into a fresh run directory, then writes
`bench/results/retrain-<profile>.json`: wall seconds, seconds per stage (from the
manifests), training throughput, held-out scores vs chance per task (after sft and after
dpo) and the DPO margin before/after. Targets (issue #2): tiny retrain <= 15 min on 2
cores; every task >= 2x chance.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_seconds(manifest: dict) -> float:
    start = dt.datetime.fromisoformat(manifest["started"])
    end = dt.datetime.fromisoformat(manifest["finished"])
    return (end - start).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--summarise-only", action="store_true",
                    help="only summarise an existing --run-dir (wall time = sum of stages)")
    args = ap.parse_args()
    run_dir = args.run_dir or REPO / "runs" / f"bench-{args.profile}-{int(time.time())}"

    wall = None
    if not args.summarise_only:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "amalia_vl", "retrain", "--profile", args.profile,
                        "--run-dir", str(run_dir), "--no-progress"], check=True, cwd=REPO)
        wall = time.perf_counter() - t0

    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    comparison = json.loads((run_dir / "evaluate" / "comparison.json").read_text())
    per_task = {
        model: {t: {"score": r["score"], "chance": r["chance"],
                    "x_chance": r["score"] / r["chance"] if r["chance"] else None}
                for t, r in res.items() if not t.startswith("_")}
        for model, res in comparison.items() if not model.startswith("_")
    }
    dpo = manifests["dpo"]["metrics"]
    result = {
        "command": f"python bench/retrain.py --profile {args.profile}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "wall_seconds": round(wall, 1) if wall is not None else None,
        "stage_seconds": {k: round(stage_seconds(m), 1) for k, m in manifests.items()},
        "train_samples_per_s": {k: manifests[k]["metrics"].get("samples_per_s")
                                for k in ("align", "sft", "dpo")},
        "scores": per_task,
        "min_x_chance_after_sft": min(v["x_chance"] for v in per_task["sft"].values()),
        "min_x_chance_after_dpo": min(v["x_chance"] for v in per_task["dpo"].values()),
        "dpo_margin": {k: dpo.get(k) for k in ("margin_before", "margin_after",
                                               "pref_accuracy_before", "pref_accuracy_after")},
        "run_dir": str(run_dir),
    }
    out = REPO / "bench" / "results" / f"retrain-{args.profile}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
