"""MME perception and cognition scores.

Definition (Fu et al. 2023, "MME: A Comprehensive Evaluation Benchmark for Multimodal Large
Language Models", official `eval_tool/calculation.py`; subtask lists as in lmms-eval's mme
task): every image has two yes/no questions. Per subtask,
  acc   = correct questions / questions,
  acc+  = images with both questions correct / images,
  score = (acc + acc+) * 100   (at most 200).
Perception = sum of the 10 perception subtask scores (at most 2000), cognition = sum of the 4
cognition subtasks (at most 800); `mme` is their sum. A subtask absent from the file adds 0.

Answers are parsed by `normalise_yes_no`: MME's `parse_pred_ans` (lmms-eval 0.7.3
`mme/utils.py`) in the lmms mode, with "sim"/"não" and the em+o guard in the pt mode; an
unparseable answer is "other" and wrong. References are read with "sim"/"não" in both
modes (lmms-eval asserts English ones; ours are translated). Items need `category` (the
subtask name, case and spaces ignored: "OCR", "commonsense reasoning") and an image key:
`image_id` if present, else `question_id` (in the lmms-eval MME set the question id is the
image path). The official code requires exactly two questions per image (and lmms-eval
asserts it); we accept any number and count an image for acc+ when all its questions are
right, which is the same number for pairs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from components.metrics.base import CorpusResult
from components.metrics.text import PT, normalise_yes_no

PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
    "artwork", "ocr",
)  # fmt: skip
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def subtask(category: str) -> str:
    """Canonical subtask name; raises on a name outside MME's 14 subtasks."""
    name = "_".join(str(category).strip().lower().replace("-", " ").split())
    if name not in PERCEPTION and name not in COGNITION:
        raise ValueError(
            f"unknown MME subtask {category!r}; expected one of {PERCEPTION + COGNITION}"
        )
    return name


def mme_correct(prediction: str, answers: list[str], mode: str = PT) -> float:
    """1.0 if the parsed yes/no of the prediction equals the reference's."""
    gold = {normalise_yes_no(a) for a in answers}
    if len(gold) != 1 or None in gold:
        raise ValueError(f"MME references must be yes/no (sim/não): {answers!r}")
    pred = normalise_yes_no(prediction, mode)
    return float(pred is not None and pred in gold)


def mme_scores(
    predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]],
    mode: str = PT,
) -> tuple[dict[str, float], list[float]]:
    """Per-subtask scores plus `perception`, `cognition`, `total`; and per-item correctness."""
    per_item: list[float] = []
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, (pred, refs, extra) in enumerate(zip(predictions, answers, extras, strict=True)):
        if "category" not in extra:
            raise ValueError(f"MME item {i} has no 'category' (subtask)")
        image = extra.get("image_id", extra.get("question_id"))
        if image is None:
            raise ValueError(f"MME item {i} has no 'image_id' or 'question_id' to pair questions")
        correct = mme_correct(pred, refs, mode)
        per_item.append(correct)
        by_task[subtask(extra["category"])][str(image)].append(correct)

    details: dict[str, float] = {}
    for task, images in sorted(by_task.items()):
        flat = [c for cs in images.values() for c in cs]
        acc = sum(flat) / len(flat)
        acc_plus = sum(all(c == 1.0 for c in cs) for cs in images.values()) / len(images)
        details[task] = (acc + acc_plus) * 100.0
    details["perception"] = sum(v for k, v in details.items() if k in PERCEPTION)
    details["cognition"] = sum(v for k, v in details.items() if k in COGNITION)
    details["total"] = details["perception"] + details["cognition"]
    return details, per_item


def mme_corpus(key: str):
    """A corpus function whose score is `mme_scores(...)[key]`."""

    def corpus(
        predictions: list[str], answers: list[list[str]], extras: list[dict[str, Any]],
        mode: str = PT,
    ) -> CorpusResult:
        details, per_item = mme_scores(predictions, answers, extras, mode)
        return CorpusResult(score=details[key], scores=list(per_item), details=details)

    return corpus
