"""Exact benchmark metrics for AMALIA-VL evaluation, in two modes: `lmms` and `pt`.

One table, `METRICS`, maps a metric name to its `Metric` (see `base.py` for the contract and
the two scoring modes); `get_metric(name)` looks one up and fails with the list of known
names. Each module cites the lmms-eval 0.7.3 scorer its `lmms` mode reproduces and lists
what the `pt` mode adds (README.md in this folder: the whole list, and lmms-eval's bugs):

- `vqa.py`        vqa_accuracy (profiles textvqa, vqav2)   TextVQA / VQAv2 consensus
- `choice.py`     mc_accuracy, mmmu_accuracy (profiles)    per-task option readers, MMMU
- `mcq.py`        (extract_letter)                         lmms-eval's shared MCQ extractor
- `text.py`       exact_match, token_f1, anls, relaxed_accuracy, ocrbench_accuracy,
                  yes_no_accuracy                          HF exact_match, SQuAD, DocVQA, ChartQA,
                                                           OCRBench, MME parse
- `mathvision.py` mathvision_accuracy                      MATH-Vision is_equal
- `pope.py`       pope_* (corpus)                          POPE
- `mme.py`        mme, mme_perception, mme_cognition       MME
- `captions.py`   bleu4, rouge_l, cider (corpus)           coco-caption
- `meteor.py`     meteor (corpus)                          METEOR 1.0 exact + stem (no Java)
- `boxes.py`      box_iou, box_iou_accuracy (ACC@0.5), box_iou_accuracy_01/03/07/09,
                  box_center_accuracy                      RefCOCO bbox_rec

Per-item extra fields a metric reads are listed in its `fields` (the task YAML's `profile:`
reaches the metrics that take one as the `profile` field); the highest score it can give is
its `best` (10 for CIDEr-D, 2800 for MME, else 1).
"""

from __future__ import annotations

from components.errors import AmaliaError
from components.metrics import boxes, captions, choice, mathvision, meteor, mme, pope, text, vqa
from components.metrics.base import (
    DEFAULT_MODE,
    MODES,
    CorpusResult,
    Metric,
    UnknownModeError,
    check_mode,
    mean,
)

__all__ = ["DEFAULT_MODE", "METRICS", "MODES", "PROFILES", "CorpusResult", "Metric",
           "UnknownMetricError", "UnknownModeError", "check_mode", "get_metric", "mean"]

_BOX_FIELDS = ("image_width", "image_height", "box_format", "answer_format")
_MC = tuple(choice.PROFILES)
_LMMS = "lmms-eval 0.7.3 "

_ALL = [
    Metric("vqa_accuracy", "VQA consensus accuracy: mean of min(1, matches/3) over "
           "leave-one-out annotator subsets", vqa.vqa_accuracy, fields=("profile",),
           reference=_LMMS + "textvqa/vqav2 process_results (EvalAIAnswerProcessor)"),
    Metric("mc_accuracy", "multiple choice: the option letter read as the task's lmms-eval "
           "reader does (profile), vs gold", choice.mc_accuracy, corpus=choice.mc_corpus,
           fields=("options", "question_id", "fallback", "profile", "category"),
           reference=_LMMS + "ai2d/mmstar/seedbench/realworldqa/embspatial/mmmu readers"),
    Metric("mmmu_accuracy", "MMMU: option reading for multiple-choice, eval_open otherwise",
           choice.mmmu_accuracy,
           fields=("options", "question_type", "question_id", "fallback", "profile"),
           reference=_LMMS + "mmmu/mmmu_pro process_results"),
    Metric("exact_match", "exact match ignoring case and punctuation", text.exact_match,
           reference=_LMMS + "api/metrics.py exact_match (ignore_case, ignore_punctuation)"),
    Metric("token_f1", "SQuAD token F1", text.token_f1, reference="SQuAD v1.1 f1_score"),
    Metric("anls", "Average Normalized Levenshtein Similarity, threshold 0.5", text.anls,
           reference=_LMMS + "api/metrics.py anls"),
    Metric("relaxed_accuracy", "ChartQA relaxed accuracy: numbers within 5%, else exact",
           text.relaxed_accuracy, reference=_LMMS + "chartqa relaxed_correctness"),
    Metric("ocrbench_accuracy", "OCRBench: normalised answer is a substring of the prediction",
           text.ocrbench_accuracy, fields=("dataset",),
           reference=_LMMS + "ocrbench_process_results"),
    Metric("yes_no_accuracy", "yes/no accuracy (MME's answer parse)", text.yes_no_accuracy,
           reference=_LMMS + "mme parse_pred_ans"),
    Metric("mathvision_accuracy", "MATH-Vision: final answer equal by math value (rounded to "
           "2 decimals) to the gold answer or option", mathvision.mathvision_accuracy,
           fields=("options",), reference=_LMMS + "mathvision_process_results (is_equal)"),
    *[
        Metric(f"pope_{key}", f"POPE {key.replace('_', '-')} (positive class: yes)",
               pope.pope_correct, corpus=pope.pope_corpus(key),
               reference=_LMMS + f"pope_aggregate_{'f1_score' if key == 'f1' else key}")
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio")
    ],
    Metric("mme", "MME total: perception + cognition, subtask score (acc + acc+) * 100",
           mme.mme_correct, corpus=mme.mme_corpus("total"),
           fields=("category", "question_id", "image_id"), best=2800.0,
           reference=_LMMS + "mme_aggregate_results (perception + cognition)"),
    Metric("mme_perception", "MME perception: sum of the 10 perception subtask scores",
           mme.mme_correct, corpus=mme.mme_corpus("perception"),
           fields=("category", "question_id", "image_id"), best=2000.0,
           reference=_LMMS + "mme_perception_score"),
    Metric("mme_cognition", "MME cognition: sum of the 4 cognition subtask scores",
           mme.mme_correct, corpus=mme.mme_corpus("cognition"),
           fields=("category", "question_id", "image_id"), best=800.0,
           reference=_LMMS + "mme_cognition_score"),
    Metric("bleu4", "corpus BLEU-4 as coco-caption computes it", captions.sentence_bleu4,
           corpus=captions.bleu_corpus, reference="pycocoevalcap Bleu(4)"),
    Metric("rouge_l", "coco-caption ROUGE-L F-measure, beta 1.2", captions.rouge_l,
           reference="pycocoevalcap Rouge"),
    Metric("cider", "coco-caption CIDEr-D (sigma 6, clipped, x10; at most 10)",
           captions.cider_one, corpus=captions.cider_corpus, best=10.0,
           reference="pycocoevalcap Cider"),
    Metric("meteor", "METEOR 1.0, exact + Porter-stem matching (no Java; not METEOR 1.5)",
           meteor.meteor, corpus=meteor.meteor_corpus,
           reference="METEOR 1.0 (pycocoevalcap runs Java METEOR 1.5)"),
    Metric("box_iou_accuracy", "RefCOCO ACC@0.5: IoU >= 0.5 with the reference box",
           boxes.box_accuracy, fields=_BOX_FIELDS,
           reference=_LMMS + "refcoco_bbox_rec ACC@0.5"),
    *[
        Metric(f"box_iou_accuracy_{int(t * 10):02d}", f"RefCOCO ACC@{t}: IoU >= {t}",
               boxes.box_accuracy_at(t), fields=_BOX_FIELDS,
               reference=_LMMS + f"refcoco_bbox_rec ACC@{t}")
        for t in boxes.THRESHOLDS if t != 0.5
    ],
    Metric("box_center_accuracy", "RefCOCO Center_ACC: the predicted box's centre inside the "
           "reference box", boxes.box_center_accuracy, fields=_BOX_FIELDS,
           reference=_LMMS + "refcoco_bbox_rec Center_ACC"),
    Metric("box_iou", "mean IoU of predicted and reference boxes", boxes.box_iou,
           fields=_BOX_FIELDS, reference=_LMMS + "refcoco_bbox_rec IoU"),
]  # fmt: skip

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
METRICS["pope"] = METRICS["pope_f1"]  # the headline POPE number

# profile -> the metrics that read it (a task YAML's `profile:` must suit its metrics)
PROFILES: dict[str, tuple[str, ...]] = {
    **{p: ("mc_accuracy", "mmmu_accuracy") for p in _MC},
    **{p: ("vqa_accuracy",) for p in vqa.VQA_PROFILES},
}


class UnknownMetricError(AmaliaError, KeyError):
    """A metric name that is not in `METRICS`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return AmaliaError.__str__(self)


def get_metric(name: str) -> Metric:
    """The registered metric called `name`."""
    try:
        return METRICS[name]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}", hint="known: " + ", ".join(sorted(METRICS))
        ) from None
