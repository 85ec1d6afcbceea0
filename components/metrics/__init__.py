"""Exact benchmark metrics for AMALIA-VL evaluation, matching the standard scorers.

One table, `METRICS`, maps a metric name to its `Metric` (see `base.py` for the contract);
`get_metric(name)` looks one up and fails with the list of known names. Each module cites
the official definition it follows and lists where and why it deviates:

- `vqa.py`      vqa_accuracy                       VQAv2 10-annotator consensus
- `choice.py`   mc_accuracy, mmmu_accuracy         MMMU option extraction / eval_open
- `text.py`     exact_match, token_f1, anls, relaxed_accuracy, ocrbench_accuracy,
                yes_no_accuracy                     SQuAD, DocVQA, ChartQA, OCRBench, MME parse
- `pope.py`     pope_* (corpus)                    POPE evaluate.py
- `mme.py`      mme, mme_perception, mme_cognition MME calculation.py
- `captions.py` bleu4, rouge_l, cider (corpus)     coco-caption
- `boxes.py`    box_iou_accuracy, box_iou          RefCOCO ACC@0.5

Per-item extra fields a metric reads are listed in its `fields`; the highest score it can
give is its `best` (10 for CIDEr-D, 2800 for MME, else 1).
"""

from __future__ import annotations

from components.errors import AmaliaError
from components.metrics import boxes, captions, choice, mme, pope, text, vqa
from components.metrics.base import CorpusResult, Metric, mean

__all__ = ["METRICS", "CorpusResult", "Metric", "UnknownMetricError", "get_metric", "mean"]

_BOX_FIELDS = ("image_width", "image_height", "box_format", "answer_format")

_ALL = [
    Metric("vqa_accuracy", "VQAv2 consensus accuracy: mean of min(1, matches/3) over "
           "leave-one-out annotator subsets", vqa.vqa_accuracy),
    Metric("mc_accuracy", "multiple choice: option letter extracted MMMU-style, vs gold",
           choice.mc_accuracy, fields=("options", "question_id", "fallback")),
    Metric("mmmu_accuracy", "MMMU: option extraction for multiple-choice, eval_open otherwise",
           choice.mmmu_accuracy,
           fields=("options", "question_type", "question_id", "fallback")),
    Metric("exact_match", "normalised exact match (case, whitespace, edge punctuation)",
           text.exact_match),
    Metric("token_f1", "SQuAD token F1 (pt-PT and English articles removed)", text.token_f1),
    Metric("anls", "Average Normalized Levenshtein Similarity, threshold 0.5", text.anls),
    Metric("relaxed_accuracy", "ChartQA relaxed accuracy: numbers within 5%, else exact",
           text.relaxed_accuracy),
    Metric("ocrbench_accuracy", "OCRBench: normalised answer is a substring of the prediction",
           text.ocrbench_accuracy, fields=("dataset",)),
    Metric("yes_no_accuracy", "yes/no accuracy (sim/não understood)", text.yes_no_accuracy),
    *[
        Metric(f"pope_{key}", f"POPE {key.replace('_', '-')} (positive class: yes)",
               pope.pope_correct, corpus=pope.pope_corpus(key))
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio")
    ],
    Metric("mme", "MME total: perception + cognition, subtask score (acc + acc+) * 100",
           mme.mme_correct, corpus=mme.mme_corpus("total"),
           fields=("category", "question_id", "image_id"), best=2800.0),
    Metric("mme_perception", "MME perception: sum of the 10 perception subtask scores",
           mme.mme_correct, corpus=mme.mme_corpus("perception"),
           fields=("category", "question_id", "image_id"), best=2000.0),
    Metric("mme_cognition", "MME cognition: sum of the 4 cognition subtask scores",
           mme.mme_correct, corpus=mme.mme_corpus("cognition"),
           fields=("category", "question_id", "image_id"), best=800.0),
    Metric("bleu4", "corpus BLEU-4 as coco-caption computes it", captions.sentence_bleu4,
           corpus=captions.bleu_corpus),
    Metric("rouge_l", "coco-caption ROUGE-L F-measure, beta 1.2", captions.rouge_l),
    Metric("cider", "coco-caption CIDEr-D (sigma 6, clipped, x10; at most 10)",
           captions.cider_one, corpus=captions.cider_corpus, best=10.0),
    Metric("box_iou_accuracy", "RefCOCO accuracy: IoU >= 0.5 with the reference box",
           boxes.box_accuracy, fields=_BOX_FIELDS),
    Metric("box_iou", "mean IoU of predicted and reference boxes", boxes.box_iou,
           fields=_BOX_FIELDS),
]  # fmt: skip

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
METRICS["pope"] = METRICS["pope_f1"]  # the headline POPE number


class UnknownMetricError(AmaliaError, KeyError):
    """A metric name that is not in `METRICS`."""


def get_metric(name: str) -> Metric:
    """The registered metric called `name`."""
    try:
        return METRICS[name]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}", hint="known: " + ", ".join(sorted(METRICS))
        ) from None
