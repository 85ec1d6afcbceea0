"""Referring-expression grounding: box IoU and accuracy at IoU >= 0.5 (RefCOCO style).

Definition (Kazemzadeh et al. 2014 / Mao et al. 2016, RefCOCO/+/g; lmms-eval
`refcoco_bbox_rec` "ACC@0.5"): a predicted box is correct when its intersection over union
with the reference box is at least 0.5. IoU uses continuous coordinates (no +1 pixel), and a
box with x2 <= x1 or y2 <= y1 has no area (IoU 0), as in lmms-eval's `compute_iou`.

Parsing: the first "[x1, y1, x2, y2]" or "(x1, y1, x2, y2)" in the text, or Qwen-VL's
"(x1,y1),(x2,y2)"; numbers may be negative or decimal. No box found scores 0.

Coordinate spaces (`box_format`, per item or per call; the reference uses `answer_format`):
- "auto" (default): all four values within [0, 1] -> normalised 0-1, else pixels;
- "pixel", "norm1" (0-1 of width/height), "norm1000" (integers 0-1000 of width/height,
  Qwen-VL / Qwen2-VL style; never guessed, since 0-1000 cannot be told from pixels).
Boxes in the same space are compared directly (IoU does not change under per-axis scaling);
across spaces `image_width` and `image_height` are needed to bring both to pixels, and their
absence is an error rather than a silent wrong score. References may be written as
"[x1, y1, x2, y2]" strings or 4-number lists; `answer_format="xywh"` reads COCO
[x, y, w, h] references.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BRACKETED = re.compile(rf"[\[\(]{_NUM},{_NUM},{_NUM},{_NUM}[\]\)]")
_QWEN = re.compile(rf"\({_NUM},{_NUM}\)\s*,?\s*\({_NUM},{_NUM}\)")
_FORMATS = ("auto", "pixel", "norm1", "norm1000")

Box = tuple[float, float, float, float]


def parse_box(text: str | Sequence[float]) -> Box | None:
    """The first box written in `text` (or a 4-number sequence), else None."""
    if not isinstance(text, str):
        values = list(text)
        if len(values) != 4:
            return None
        return (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
    m = _BRACKETED.search(text) or _QWEN.search(text)
    if not m:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return (x1, y1, x2, y2)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 0.0
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    if right <= left or bottom <= top:
        return 0.0
    inter = (right - left) * (bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


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


def box_iou(
    prediction: str,
    answers: list[str],
    image_width: float | None = None,
    image_height: float | None = None,
    box_format: str = "auto",
    answer_format: str = "auto",
) -> float:
    """Best IoU of the predicted box with any reference box (0 if none parses)."""
    pred = parse_box(prediction)
    if pred is None:
        return 0.0
    pred, pred_space = _space(pred, box_format)
    best = 0.0
    for answer in answers:
        ref = parse_box(answer)
        if ref is None:
            raise ValueError(f"reference is not a box: {answer!r}")
        if answer_format == "xywh":
            ref, answer_format_eff = (ref[0], ref[1], ref[0] + ref[2], ref[1] + ref[3]), "auto"
        else:
            answer_format_eff = answer_format
        ref, ref_space = _space(ref, answer_format_eff)
        p = pred
        if ref_space != pred_space:
            if pred_space == "norm":
                p = _to_pixels(p, image_width, image_height)
            else:
                ref = _to_pixels(ref, image_width, image_height)
        best = max(best, iou(p, ref))
    return best


def box_accuracy(prediction: str, answers: list[str], threshold: float = 0.5, **kw) -> float:
    """1.0 if the predicted box reaches IoU >= 0.5 with a reference box."""
    return float(box_iou(prediction, answers, **kw) >= threshold)
