"""Measure a variety detector, and the line-in / JSON-out face of `amalia-vl variety`.

- `evaluate_detector(detector, samples)`: accuracy, macro-F1, per-class precision/recall/
  F1, coverage / unknown rate, accuracy on covered, Brier score and ECE of P(pt-PT)
  against gold labels. This is the one definition every bench uses: an `unknown`
  prediction counts as wrong for `accuracy` (it lowers recall of the gold class, not
  anyone's precision); `coverage` is the share of texts given a variety and
  `accuracy_on_covered` the accuracy on those alone.
- `classify_lines(lines, detector)`: one `{"text", "label", "score"}` per input line, in
  order, batched; an empty line gives `unknown`.
- `variety_command(stdin, stdout, kind, model)`: reads lines from `stdin`, writes one JSON
  object per line to `stdout`; the CLI command is a one-liner around it:

      @app.command()
      def variety(kind: str = "cues", model: str | None = None):
          variety_command(sys.stdin, sys.stdout, kind=kind, model=model)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO, Any

from components.variety.detector import (
    LABELS,
    PT_PT,
    UNKNOWN,
    VarietyDetector,
    brier_score,
    expected_calibration_error,
    make_detector,
)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 6), "recall": round(r, 6), "f1": round(f, 6)}


def evaluate_detector(detector: VarietyDetector, samples: Iterable[dict],
                      batch_size: int = 256) -> dict[str, Any]:
    """Scores of `detector` on `samples` (dicts with `text` and gold `label`)."""
    rows = list(samples)
    preds: list[dict] = []
    for start in range(0, len(rows), batch_size):
        preds += detector.classify([r["text"] for r in rows[start:start + batch_size]])
    gold = [r["label"] for r in rows]
    labels = [p["label"] for p in preds]
    scores = [float(p["score"]) for p in preds]
    n = len(rows)
    per_class = {}
    for c in LABELS:
        tp = sum(g == c and p == c for g, p in zip(gold, labels, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, labels, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, labels, strict=True))
        per_class[c] = {**_prf(tp, fp, fn), "support": sum(g == c for g in gold)}
    covered = [(g, p) for g, p in zip(gold, labels, strict=True) if p != UNKNOWN]
    y = [1.0 if g == PT_PT else 0.0 for g in gold]
    return {
        "detector": getattr(detector, "name", type(detector).__name__),
        "n": n,
        "accuracy": round(sum(g == p for g, p in zip(gold, labels, strict=True)) / n, 6)
        if n else 0.0,
        "macro_f1": round(sum(m["f1"] for m in per_class.values()) / len(LABELS), 6),
        "per_class": per_class,
        "unknown_rate": round(labels.count(UNKNOWN) / n, 6) if n else 0.0,
        "coverage": round(len(covered) / n, 6) if n else 0.0,
        "accuracy_on_covered": round(sum(g == p for g, p in covered) / len(covered), 6)
        if covered else 0.0,
        "brier": round(brier_score(scores, y), 6),
        "ece": round(expected_calibration_error(scores, y), 6),
        "confusion": {g: {p: sum(a == g and b == p for a, b in zip(gold, labels, strict=True))
                          for p in (*LABELS, UNKNOWN)} for g in LABELS},
    }


def classify_lines(lines: Iterable[str], detector: VarietyDetector,
                   batch_size: int = 64) -> Iterator[dict]:
    """`{"text", "label", "score"}` per line (trailing newline stripped), streaming."""
    it = iter(lines)
    while batch := [line.rstrip("\r\n") for line in islice(it, batch_size)]:
        for text, res in zip(batch, detector.classify(batch), strict=True):
            yield {"text": text, "label": res["label"], "score": res["score"]}


def variety_command(stdin: IO[str], stdout: IO[str], kind: str = "cues",
                    model: str | None = None, batch_size: int | None = None) -> int:
    """Read `stdin` line by line, write one JSON line per input line; returns the count.
    Batches of `batch_size` lines (default: 1 for the cue model, so interactive use answers
    each line at once; 64 for a neural classifier)."""
    detector = make_detector(kind, model)
    if batch_size is None:
        batch_size = 1 if detector.name == "cues" else 64
    n = 0
    for row in classify_lines(stdin, detector, batch_size=batch_size):
        stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    stdout.flush()
    return n
