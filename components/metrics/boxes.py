"""Referring-expression grounding (RefCOCO): box IoU, ACC@t and Center_ACC.

Reference: lmms-eval 0.7.3 `refcoco/utils_rec.py` (`refcoco_bbox_rec_*`): the reference box
is COCO [x, y, w, h] in pixels, turned into [x1, y1, x2, y2] divided by the image width and
height; the model answers normalised [x1, y1, x2, y2]. Metrics: IoU (mean), ACC@0.1 / 0.3 /
0.5 / 0.7 / 0.9 (IoU >= t) and Center_ACC (the centre of the predicted box inside the
reference box, edges included).

lmms mode (quirks kept):
- parsing: the first "[a, b, c, d]" with square brackets, numbers written as digits with an
  optional ".digits" (no ".5", no exponent), a comma right after each of the first three
  numbers (`[0.1 , 0.2, ...]` does not parse); nothing found is the box [0, 0, 0, 0];
- IoU of the raw numbers, no validity check: an inverted box has a negative area (its
  intersection is 0, so IoU 0 or -0.0), and a zero union (a degenerate reference with the
  [0, 0, 0, 0] fallback) raises ZeroDivisionError upstream; we score such an item 0;
- so the unparsed [0, 0, 0, 0] has IoU 0 but its centre (0, 0) is "inside" any reference
  box touching the image's top-left corner: Center_ACC 1 for an answer that has no box.
pt mode (the boxes models emit, and the bugs fixed):
- the first box written as "[a, b, c, d]" or "(a, b, c, d)" with any spaces, commas or
  semicolons between the numbers, "; "-separated pt-PT decimal commas ("[0,1; 0,2; 0,5;
  0,6]"), numbers like ".5" or "1e-1", Qwen-VL's "(x1,y1),(x2,y2)" and "<box>(..),(..)</box>",
  and JSON such as {"bbox_2d": [..]}; nothing found scores 0 everywhere (Center_ACC too);
- a box with x2 <= x1 or y2 <= y1 has no area (IoU 0, no centre);
- coordinate spaces (`box_format`, per item or per call; the reference uses
  `answer_format`): "auto" (default: all four values within [0, 1] -> normalised 0-1, else
  pixels), "pixel", "norm1" (0-1 of width/height), "norm1000" (integers 0-1000, Qwen-VL
  style; never guessed). Boxes in different spaces need `image_width`/`image_height` (their
  absence is an error, not a silent wrong score). The lmms mode reads every box as given
  (RefCOCO's answers are normalised and the references normalised by the task).
References may be "[x1, y1, x2, y2]" strings or 4-number lists; `answer_format="xywh"`
reads COCO [x, y, w, h] references.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from components.metrics.text import LMMS, PT

_LMMS_BOX = re.compile(r"\[\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),"
                       r"\s*(-?\d+(?:\.\d+)?)\s*\]")
_N = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_SEP = r"(?:,|;|\s)"
_BRACKETED = re.compile(rf"[\[\(]{_N}{_SEP}{_N}{_SEP}{_N}{_SEP}{_N}[\]\)]")
_PT_COMMAS = re.compile(r"[\[\(]\s*" + r"\s*;\s*".join([r"(-?\d+(?:,\d+)?)"] * 4) + r"\s*[\]\)]")
_QWEN = re.compile(rf"\({_N},{_N}\)\s*,?\s*\({_N},{_N}\)")
_FORMATS = ("auto", "pixel", "norm1", "norm1000")
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)

Box = tuple[float, float, float, float]


def parse_box(text: str | Sequence[float], mode: str = PT) -> Box | None:
    """The first box written in `text` (or a 4-number sequence), else None."""
    if not isinstance(text, str):
        values = list(text)
        if len(values) != 4:
            return None
        return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
    if mode == LMMS:
        m = _LMMS_BOX.search(text)
        return tuple(float(g) for g in m.groups()) if m else None  # type: ignore[return-value]
    m = _PT_COMMAS.search(text)
    if m:
        return tuple(float(g.replace(",", ".")) for g in m.groups())  # type: ignore[return-value]
    m = _BRACKETED.search(text) or _QWEN.search(text)
    if not m:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return (x1, y1, x2, y2)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 for a box without area)."""
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 0.0
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    if right <= left or bottom <= top:
        return 0.0
    inter = (right - left) * (bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def lmms_iou(gt: Box, pred: Box) -> float:
    """lmms-eval's `compute_iou`, verbatim arithmetic (negative areas included); a zero or
    negative union, where upstream divides by zero or goes negative, is 0."""
    inter = max(0.0, min(gt[2], pred[2]) - max(gt[0], pred[0])) * \
        max(0.0, min(gt[3], pred[3]) - max(gt[1], pred[1]))
    union = (gt[2] - gt[0]) * (gt[3] - gt[1]) + (pred[2] - pred[0]) * (pred[3] - pred[1]) - inter
    if union == 0:
        return 0.0
    return inter / union


def center_inside(gt: Box, pred: Box) -> bool:
    """The centre of `pred` within `gt`, edges included (lmms-eval `compute_center_accuracy`)."""
    cx, cy = (pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def _space(box: Box, fmt: str) -> tuple[Box, str]:
    """(box, 'pixel' | 'norm') with 0-1000 boxes rescaled to 0-1."""
    if fmt not in _FORMATS:
        raise ValueError(f"box format must be one of {_FORMATS}, not {fmt!r}")
    if fmt == "norm1000":
        return (box[0] / 1000, box[1] / 1000, box[2] / 1000, box[3] / 1000), "norm"
    if fmt == "norm1" or (fmt == "auto" and all(0.0 <= v <= 1.0 for v in box)):
        return box, "norm"
    return box, "pixel"


def _to_pixels(box: Box, width: float | None, height: float | None) -> Box:
    if not width or not height:
        raise ValueError(
            "prediction and reference use different coordinate spaces (pixels vs normalised): "
            "give image_width and image_height"
        )
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def _reference(answer: str, answer_format: str, mode: str) -> tuple[Box, str]:
    ref = parse_box(answer, PT)
    if ref is None:
        raise ValueError(f"reference is not a box: {answer!r}")
    if answer_format == "xywh":
        return (ref[0], ref[1], ref[0] + ref[2], ref[1] + ref[3]), "auto"
    return ref, answer_format


def _pairs(prediction: str, answers: list[str], image_width, image_height, box_format,
           answer_format, mode):
    """(reference, prediction) boxes in one space, one pair per reference; None: no box."""
    pred = parse_box(prediction, mode)
    if pred is None and mode == LMMS:
        pred = (0.0, 0.0, 0.0, 0.0)  # upstream's fallback box
    if pred is None:
        return None
    pairs = []
    for answer in answers:
        ref, ref_fmt = _reference(answer, answer_format, mode)
        if mode == LMMS:
            # the task divides the reference by the image size; the answer is taken as is
            if answer_format == "xywh" or _space(ref, ref_fmt)[1] == "pixel":
                w, h = _need(image_width), _need(image_height)
                ref = (ref[0] / w, ref[1] / h, ref[2] / w, ref[3] / h)
            pairs.append((ref, pred))
            continue
        p, pred_space = _space(pred, box_format)
        ref, ref_space = _space(ref, ref_fmt)
        if ref_space != pred_space:
            if pred_space == "norm":
                p = _to_pixels(p, image_width, image_height)
            else:
                ref = _to_pixels(ref, image_width, image_height)
        pairs.append((ref, p))
    return pairs


def _need(value: float | None) -> float:
    if not value:
        raise ValueError("a pixel reference needs image_width and image_height")
    return float(value)


def box_iou(
    prediction: str,
    answers: list[str],
    image_width: float | None = None,
    image_height: float | None = None,
    box_format: str = "auto",
    answer_format: str = "auto",
    mode: str = PT,
) -> float:
    """Best IoU of the predicted box with any reference box (0 if none parses)."""
    pairs = _pairs(prediction, answers, image_width, image_height, box_format, answer_format,
                   mode)
    if not pairs:
        return 0.0
    measure = lmms_iou if mode == LMMS else iou
    return max(measure(ref, pred) for ref, pred in pairs)


def box_accuracy(prediction: str, answers: list[str], threshold: float = 0.5, **kw) -> float:
    """1.0 if the predicted box reaches IoU >= `threshold` with a reference box (ACC@t)."""
    return float(box_iou(prediction, answers, **kw) >= threshold)


def box_accuracy_at(threshold: float):
    """`box_accuracy` at a fixed threshold (ACC@0.1 ... ACC@0.9)."""

    def score(prediction: str, answers: list[str], **kw) -> float:
        return box_accuracy(prediction, answers, threshold, **kw)

    score.__name__ = f"box_accuracy_{int(threshold * 10):02d}"
    return score


def box_center_accuracy(
    prediction: str,
    answers: list[str],
    image_width: float | None = None,
    image_height: float | None = None,
    box_format: str = "auto",
    answer_format: str = "auto",
    mode: str = PT,
) -> float:
    """1.0 if the centre of the predicted box lies in a reference box (Center_ACC)."""
    pairs = _pairs(prediction, answers, image_width, image_height, box_format, answer_format,
                   mode)
    if not pairs:
        return 0.0
    if mode == PT:
        pairs = [(r, p) for r, p in pairs if p[2] > p[0] and p[3] > p[1]]
    return float(any(center_inside(ref, pred) for ref, pred in pairs))
