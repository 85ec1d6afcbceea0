"""Benchmark: how well the pt-PT / pt-BR detector separates the varieties, and how fast.

    python bench/variety_eval.py [--kind cues|hf] [--model PATH]

Evaluates on the labelled sample `components/variety/data/variety_sample.jsonl` (held-out
`test` split, and all samples; the cue model was fitted on `train`), measures throughput
(sentences/s, single process), and how far `normalise_br_to_pt` moves the pt-BR sentences
towards pt-PT. Writes `bench/results/variety.json` (or `variety-<kind>.json` for another
detector). Target (issue #4): held-out accuracy and macro-F1 >= 0.85.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.variety.detector import PT_BR, PT_PT, load_samples, make_detector  # noqa: E402
from components.variety.normalise import normalise_br_to_pt  # noqa: E402
from components.variety.report import evaluate_detector  # noqa: E402


def throughput(detector, texts: list[str], min_seconds: float = 2.0) -> float:
    """Sentences per second classifying `texts` repeatedly for at least `min_seconds`."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_seconds:
        detector.classify(texts)
        n += len(texts)
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kind", default="cues")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    detector = make_detector(args.kind, args.model)
    samples = load_samples()
    test = [r for r in samples if r["split"] == "test"]
    by_domain = {d: evaluate_detector(detector, [r for r in test if r["domain"] == d])
                 for d in sorted({r["domain"] for r in test})}
    br = [r["text"] for r in samples if r["label"] == PT_BR]
    before = detector.classify(br)
    after = detector.classify([normalise_br_to_pt(t) for t in br])
    result = {
        "command": "python bench/variety_eval.py" + (f" --kind {args.kind}" if args.kind != "cues"
                                                     else "")
        + (f" --model {args.model}" if args.model else ""),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "detector": {"kind": args.kind, "model": args.model},
        "data": {"n": len(samples), "n_test": len(test),
                 "n_train": sum(r["split"] == "train" for r in samples)},
        "heldout": evaluate_detector(detector, test),
        "heldout_by_domain": {d: {k: m[k] for k in ("n", "accuracy", "macro_f1", "unknown_rate")}
                              for d, m in by_domain.items()},
        "all": evaluate_detector(detector, samples),
        "sentences_per_s": round(throughput(detector, [r["text"] for r in samples]), 1),
        "normaliser_on_pt_br": {
            "n": len(br),
            "mean_score_before": round(sum(p["score"] for p in before) / len(br), 4),
            "mean_score_after": round(sum(p["score"] for p in after) / len(br), 4),
            "labelled_pt_pt_after": round(sum(p["label"] == PT_PT for p in after) / len(br), 4),
        },
    }
    out = args.out or REPO / "bench" / "results" / (
        "variety.json" if args.kind == "cues" else f"variety-{args.kind}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    h = result["heldout"]
    print(f"held-out: accuracy {h['accuracy']:.3f}, macro-F1 {h['macro_f1']:.3f}, "
          f"Brier {h['brier']:.4f}, ECE {h['ece']:.4f}, unknown {h['unknown_rate']:.3f}; "
          f"{result['sentences_per_s']:.0f} sentences/s -> {out}")


if __name__ == "__main__":
    main()
