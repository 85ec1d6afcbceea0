"""POPE object-hallucination metrics: accuracy, precision, recall, F1, yes-ratio.

lmms mode (lmms-eval 0.7.3 `pope/utils.py`): the answer is lower-cased and stripped and
must then be exactly "yes" or "no" ("Yes." is neither); accuracy counts exact equality with
the reference; precision = TP / (TP + FP) over answers that are exactly "yes"; recall =
TP / (TP + FN) with FN counting only answers that are exactly "no" (a "Yes." to a yes
question is in neither); F1 their harmonic mean; `pope_yes_ratio` is the share of
*reference* yeses (a bug: it says nothing about the model).

pt mode (the official POPE `evaluate.py` rule, Li et al. 2023, extended): keep the text
before the first ".", delete commas, split on spaces, call it "no" when a word is "No",
"no" or "not", else "yes"; yes-ratio = the share of predictions mapped to "yes" (the
official one). pt-PT additions: words are compared lower-cased with punctuation stripped
("No!" counts); "não"/"nao" and the negative pronouns "nenhum", "nenhuma", "nenhuns",
"nenhumas", "nada" are negations ("Nenhum gato.", "Não há nada."); a first word
"sim"/"yes" means yes and a first negation means no before the word rule runs; and when the
first sentence reads as Portuguese (`reads_portuguese`: a pt function word such as "há",
"é", "um", "de", or a Portuguese diacritic) a "no" followed by a word is the contraction
em+o ("há um gato no sofá", "No sofá está um gato") and does not count as a negation; only
a "no" standing alone ("No.", "No, não há") does.

References go through `normalise_yes_no` ("sim"/"não" accepted) in both modes: lmms-eval
asserts English yes/no references, ours are translated. A zero denominator gives 0.
"""

from __future__ import annotations

from typing import Any

from components.metrics.base import CorpusResult
from components.metrics.text import (
    LMMS,
    PT,
    nfc,
    normalise_yes_no,
    opens_with_standalone_no,
    reads_portuguese,
    strip_punct,
)

_NEGATIONS = frozenset(
    {"no", "not", "não", "nao", "nenhum", "nenhuma", "nenhuns", "nenhumas", "nada"}
)


def pope_label(answer: str, mode: str = PT) -> str:
    """"yes" or "no" by the mode's rule (lmms: also "other", see module doc)."""
    if mode == LMMS:
        text = answer.lower().strip()
        return text if text in ("yes", "no") else "other"
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


def pope_counts(predictions: list[str], answers: list[list[str]],
                mode: str = PT) -> dict[str, int]:
    """TP/FP/TN/FN with "yes" as the positive class (lmms: "other" answers apart)."""
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "other": 0}
    for pred, refs in zip(predictions, answers, strict=True):
        p, g = pope_label(pred, mode), _gold_label(refs)
        if p == "other":
            counts["other"] += 1
            continue
        key = ("t" if p == g else "f") + ("p" if p == "yes" else "n")
        counts[key] += 1
    return counts


def pope_scores(predictions: list[str], answers: list[list[str]],
                mode: str = PT) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio (and the raw counts)."""
    c = pope_counts(predictions, answers, mode)
    n = sum(c.values())
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if mode == LMMS:  # sic: the share of yes references
        yes = sum(_gold_label(refs) == "yes" for refs in answers)
        yes_ratio = yes / n if n else 0.0
    else:
        yes_ratio = (c["tp"] + c["fp"]) / n if n else 0.0
    out = {
        "accuracy": (c["tp"] + c["tn"]) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": yes_ratio,
        **{k: float(v) for k, v in c.items()},
    }
    if mode == PT:
        del out["other"]
    return out


def pope_correct(prediction: str, answers: list[str], mode: str = PT) -> float:
    """Per-item POPE correctness (1.0 if the mapped label equals the reference)."""
    return float(pope_label(prediction, mode) == _gold_label(answers))


def pope_corpus(key: str):
    """A corpus function whose score is `pope_scores(...)[key]`."""

    def corpus(
        predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]],
        mode: str = PT,
    ) -> CorpusResult:
        scores = pope_scores(predictions, answers, mode)
        per_item: list[float | None] = [
            pope_correct(p, a, mode) for p, a in zip(predictions, answers, strict=True)
        ]
        return CorpusResult(score=scores[key], scores=per_item, details=scores)

    return corpus
