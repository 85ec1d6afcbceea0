"""Score a predictions JSONL file with one registered metric (backs `amalia-vl score`).

Input: one JSON object per line with `prediction` (string) and `answers` (a list of strings
or one string; numbers are read as their decimal text, and for box metrics a list of four
numbers is one box). Other fields (`question_id`, `options`, `category`, ...) are passed to
the metric when it declares them. Blank lines are skipped. A malformed line raises
`PredictionsFileError` naming the file, the 1-based line number and the field ("preds.jsonl:3:
field 'prediction' must be a string, not int"); an unknown metric raises
`UnknownMetricError`, an unknown mode `UnknownModeError` (all `AmaliaError`s: one line).

`mode` is the scoring mode (`pt`, the default, or `lmms`; see `components.metrics.base`).

Output: `{"metric", "score", "n", "scores"}`, where `scores` lists the per-line values in
file order (None where a corpus metric has no meaningful per-line value) and `score` is the
metric's aggregate or corpus value. With `details=True` a `details` dict is added (POPE
precision/recall, MME per-subtask, BLEU-1..3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.metrics import DEFAULT_MODE, check_mode, get_metric

RESULT_KEYS = ("metric", "score", "n", "scores")


class PredictionsFileError(AmaliaError, ValueError):
    """A predictions file that cannot be scored as given."""


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r} {message}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _answers(value: Any, box_metric: bool) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool) or value is None:
        raise _FieldError("answers", f"must be a string or a list of strings, not {_kind(value)}")
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list) and value:
        if box_metric and len(value) == 4 and all(_is_number(v) for v in value):
            return [json.dumps(value)]
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif _is_number(item):
                out.append(str(item))
            elif isinstance(item, list) and box_metric:
                out.append(json.dumps(item))
            else:
                raise _FieldError("answers", f"holds {item!r} ({_kind(item)}), not a string")
        return out
    if isinstance(value, list):
        raise _FieldError("answers", "is an empty list")
    raise _FieldError("answers", f"must be a string or a list of strings, not {_kind(value)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _row(line: str) -> tuple[str, Any, dict[str, Any]]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"a line must be a JSON object, not {_kind(row)}")
    for field in ("prediction", "answers"):
        if field not in row:
            raise _FieldError(field, "is missing")
    if not isinstance(row["prediction"], str):
        raise _FieldError("prediction", f"must be a string, not {_kind(row['prediction'])}")
    return row["prediction"], row["answers"], row


def read_predictions(path: Path, box_metric: bool = False):
    """(predictions, answers, extras, line numbers) from a JSONL file; errors name the file,
    the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsFileError(f"predictions file not found: {path}")
    preds: list[str] = []
    refs: list[list[str]] = []
    extras: list[dict[str, Any]] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                prediction, raw_answers, row = _row(line)
                answers = _answers(raw_answers, box_metric)
            except ValueError as exc:
                raise PredictionsFileError(f"{path}:{lineno}: {exc}") from None
            preds.append(prediction)
            refs.append(answers)
            extras.append({k: v for k, v in row.items() if k not in ("prediction", "answers")})
            lines.append(lineno)
    if not preds:
        raise PredictionsFileError(f"{path}: no predictions to score (empty file)")
    return preds, refs, extras, lines


def score_predictions_file(path: Path, metric: str, details: bool = False,
                           mode: str = DEFAULT_MODE) -> dict:
    """Score every line of `path` with `metric`: `{"metric", "score", "n", "scores"}`."""
    check_mode(mode)
    m = get_metric(metric)
    preds, refs, extras, lines = read_predictions(Path(path), box_metric=metric.startswith("box"))
    try:
        result = m.evaluate(preds, refs, extras, mode=mode)
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise PredictionsFileError(
            f"{path}: {metric}: {_locate(m, preds, refs, extras, lines, mode)}{exc}"
        ) from exc
    out: dict[str, Any] = {
        "metric": metric,
        "score": float(result.score),
        "n": len(preds),
        "scores": [None if s is None else float(s) for s in result.scores],
    }
    if details:
        out["details"] = dict(result.details)
        out["mode"] = mode
    return out


def _locate(m, preds, refs, extras, lines, mode) -> str:
    """'line N: ' for the first line whose per-item score fails, or '' for a corpus error."""
    for p, r, e, lineno in zip(preds, refs, extras, lines, strict=True):
        try:
            m.score(p, r, mode=mode, **e)
        except (ValueError, TypeError, ZeroDivisionError):
            return f"line {lineno}: "
    return ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def summary_text(result: dict) -> str:
    """A readable multi-line summary of a `score_predictions_file` result."""
    scores = result.get("scores") or []
    known = [s for s in scores if s is not None]
    lines = [
        f"metric: {result['metric']}",
        *([f"mode:   {result['mode']}"] if "mode" in result else []),
        f"score:  {_fmt(float(result['score']))}",
        f"n:      {result['n']}",
    ]
    if known:
        lines.append(
            f"per-line: min {_fmt(min(known))}, max {_fmt(max(known))}, "
            f"{sum(1 for s in known if s > 0)} of {len(known)} above 0"
        )
    for key, value in (result.get("details") or {}).items():
        lines.append(f"  {key}: {_fmt(value)}")
    return "\n".join(lines)


def score_command(metric: str, path: Path, as_json: bool = False,
                  mode: str = DEFAULT_MODE) -> str:
    """What `amalia-vl score --metric METRIC [--mode lmms|pt] PATH [--json]` prints."""
    result = score_predictions_file(Path(path), metric, details=not as_json, mode=mode)
    if as_json:
        return json.dumps({k: result[k] for k in RESULT_KEYS}, ensure_ascii=False)
    return summary_text(result)
