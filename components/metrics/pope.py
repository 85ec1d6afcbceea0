"""POPE object-hallucination metrics: accuracy, precision, recall, F1 and yes-ratio.

Definition (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language
Models", official `evaluate.py`): each free-form answer is mapped to yes/no by keeping its
first sentence (text before the first "."), deleting commas, splitting on spaces, and calling
it "no" when a word is "No", "no" or "not", else "yes". The positive class is "yes":
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean, accuracy =
(TP + TN) / N, yes-ratio = share of predictions mapped to "yes" (the official yes-ratio;
lmms-eval's `pope_yes_ratio` counts ground-truth yeses instead, which says nothing about
the model).

pt-PT additions: words are compared lower-cased with punctuation stripped ("No!" counts);
"não"/"nao" and the negative pronouns "nenhum", "nenhuma", "nenhuns", "nenhumas", "nada"
are negations ("Nenhum gato.", "Não há nada.", "não há" through its "não"); a first word
"sim"/"yes" means yes and a first negation means no before the word rule runs; and when the
first sentence reads as Portuguese (`reads_portuguese`: a pt function word such as "há",
"é", "um", "de", or a Portuguese diacritic) a "no" followed by a word is the contraction
em+o ("há um gato no sofá", "No sofá está um gato") and does not count as a negation; only
a "no" standing alone ("No.", "No, não há") does. References go
through `normalise_yes_no` ("sim"/"não" accepted). A zero denominator gives 0, where the
official script would raise.
"""

from __future__ import annotations

from typing import Any

from components.metrics.base import CorpusResult
from components.metrics.text import (
    nfc,
    normalise_yes_no,
    opens_with_standalone_no,
    reads_portuguese,
    strip_punct,
)

_NEGATIONS = frozenset(
    {"no", "not", "não", "nao", "nenhum", "nenhuma", "nenhuns", "nenhumas", "nada"}
)


def pope_label(answer: str) -> str:
    """Map a free-form answer to "yes" or "no" by the POPE rule (see module doc)."""
    text = nfc(answer)
    if "." in text:
        text = text.split(".")[0]
    words = [strip_punct(w).lower() for w in text.replace(",", "").split()]
    words = [w for w in words if w]
    if not words:
        return "yes"
    if words[0] in ("sim", "yes"):
        return "yes"
    portuguese = reads_portuguese(words)
    contraction = words[0] == "no" and portuguese and not opens_with_standalone_no(text)
    if words[0] in _NEGATIONS and not contraction:
        return "no"
    negations = set(_NEGATIONS)
    if portuguese:
        negations.discard("no")
    return "no" if negations.intersection(words) else "yes"


def _gold_label(answers: list[str]) -> str:
    labels = {normalise_yes_no(a) for a in answers}
    if len(labels) != 1 or None in labels:
        raise ValueError(f"POPE references must all be yes/no (sim/não): {answers!r}")
    return labels.pop()  # type: ignore[return-value]


def pope_counts(predictions: list[str], answers: list[list[str]]) -> dict[str, int]:
    """TP/FP/TN/FN with "yes" as the positive class."""
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for pred, refs in zip(predictions, answers, strict=True):
        p, g = pope_label(pred), _gold_label(refs)
        key = ("t" if p == g else "f") + ("p" if p == "yes" else "n")
        counts[key] += 1
    return counts


def pope_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio (and the raw counts)."""
    c = pope_counts(predictions, answers)
    n = sum(c.values())
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (c["tp"] + c["tn"]) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (c["tp"] + c["fp"]) / n if n else 0.0,
        **{k: float(v) for k, v in c.items()},
    }


def pope_correct(prediction: str, answers: list[str]) -> float:
    """Per-item POPE correctness (1.0 if the mapped label equals the reference)."""
    return float(pope_label(prediction) == _gold_label(answers))


def pope_corpus(key: str):
    """A corpus function whose score is `pope_scores(...)[key]`."""

    def corpus(
        predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]]
    ) -> CorpusResult:
        scores = pope_scores(predictions, answers)
        per_item: list[float | None] = [
            pope_correct(p, a) for p, a in zip(predictions, answers, strict=True)
        ]
        return CorpusResult(score=scores[key], scores=per_item, details=scores)

    return corpus
