"""From a dataset row to what the model is asked and what it is scored against.

`render_prompt(spec, doc)` is the one place a task's pt-PT prompt is built (the harness, the
prompt snapshots and the exported lmms-eval `doc_to_text` all call it, so they cannot
drift apart). `doc_answers` reads the references as the metrics expect them (option
indices become letters, boxes become "[x, y, w, h]" text); `metric_extras` gathers the
per-item keywords a metric declares (`options`, `category`, `question_id`, ...);
`extract_answer` applies the task's stop strings and extraction to a raw generation.
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections.abc import Mapping
from typing import Any

from components.errors import ConfigError
from components.evaltasks.spec import IMAGE_HEIGHT, IMAGE_WIDTH, TaskSpec

LETTERS = string.ascii_uppercase
IMAGE_TOKEN = "<image>"


def _as_list(value: Any) -> list[Any] | None:
    """A list from a list/tuple, or from its JSON / Python text ("['a', 'b']")."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        return list(value.tolist())
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            for parse in (json.loads, ast.literal_eval):
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, list | tuple):
                    return list(parsed)
        return [value]
    return [value]


def doc_options(spec: TaskSpec, doc: Mapping[str, Any]) -> list[str] | None:
    """The document's options as strings (None when it has none)."""
    field = spec.fields.options
    if field is None:
        return None
    if isinstance(field, list):
        values = [doc.get(f) for f in field]
        values = [v for v in values if v is not None and str(v) != ""]
    else:
        values = _as_list(doc.get(field)) or []
    return [str(v) for v in values] or None


def render_options(spec: TaskSpec, options: list[str] | None) -> str:
    if not options:
        return ""
    p = spec.prompt
    lines = [p.option_format.format(letter=LETTERS[i], option=o, index=i)
             for i, o in enumerate(options)]
    return p.options_prefix + p.options_separator.join(lines)


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def render_prompt(spec: TaskSpec, doc: Mapping[str, Any], *, pre_prompt: str | None = None,
                  post_prompt: str | None = None,
                  post_prompt_no_options: str | None = None) -> str:
    """`pre_prompt + template + post_prompt` for `doc` (see `PromptSpec`); the keyword
    arguments override the task's (lmms-eval's per-model `lmms_eval_specific_kwargs`)."""
    p = spec.prompt
    overrides = {k: v for k, v in (("pre_prompt", pre_prompt), ("post_prompt", post_prompt),
                                   ("post_prompt_no_options", post_prompt_no_options))
                 if v is not None}
    if overrides:
        p = p.model_copy(update=overrides)
    options = doc_options(spec, doc)
    question = ""
    if spec.fields.question:
        question = str(doc.get(spec.fields.question) or "").strip()
        for junk in p.question_strip:
            question = question.replace(junk, "")
    values = _Fields({k: v for k, v in doc.items() if isinstance(k, str)})
    values.update(question=question, options=render_options(spec, options))
    try:
        body = string.Formatter().vformat(p.template, (), values)
    except KeyError as exc:
        raise ConfigError(f"task {spec.task}: prompt template names field {exc} that the "
                          f"document lacks (fields: {sorted(values)})") from None
    post = p.post_prompt_no_options if (not options and p.post_prompt_no_options is not None) \
        else p.post_prompt
    # a literal "<image>" in a document would add image tokens that have no image
    return f"{p.pre_prompt}{body}{post}".replace(IMAGE_TOKEN, "<imagem>")


def _box_text(value: Any) -> str:
    values = _as_list(value) or []
    if len(values) != 4:
        raise ValueError(f"a box needs 4 numbers, got {value!r}")
    return json.dumps([float(v) for v in values])


def doc_answers(spec: TaskSpec, doc: Mapping[str, Any],
                options: list[str] | None = None) -> list[str]:
    """The reference answers of `doc` as a non-empty list of strings."""
    f = spec.fields
    if f.answers is None or doc.get(f.answers) is None:
        raise ValueError(f"task {spec.task}: document has no reference in field {f.answers!r}")
    value = doc[f.answers]
    if f.answer_kind == "box":
        return [_box_text(value)]
    if f.answer_kind == "option_index":
        return [LETTERS[int(value)]]
    if f.answer_kind == "list":
        refs = [str(v) for v in _as_list(value) or [] if v is not None]
    else:
        refs = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    if not refs:
        raise ValueError(f"task {spec.task}: empty reference list")
    return refs


def metric_extras(spec: TaskSpec, doc: Mapping[str, Any], options: list[str] | None,
                  image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Per-item keywords for the task's metrics: `profile`, `constants`, mapped `extras`,
    `options`."""
    out: dict[str, Any] = {"profile": spec.profile} if spec.profile else {}
    out.update(spec.fields.constants)
    if options:
        out["options"] = options
    for key, field in spec.fields.extras.items():
        if field == IMAGE_WIDTH:
            out[key] = image_size[0] if image_size else None
        elif field == IMAGE_HEIGHT:
            out[key] = image_size[1] if image_size else None
        else:
            value = doc.get(field)
            out[key] = value if value is None or isinstance(value, int | float | bool) \
                else str(value)
    return out


def extract_answer(spec: TaskSpec, text: str) -> str:
    """Cut a raw generation at the first stop string, then apply `extract`."""
    out = text or ""
    for stop in spec.generation.until:
        if stop and stop in out:
            out = out[: out.index(stop)]
    if spec.extract.first_line:
        out = next((line for line in out.splitlines() if line.strip()), "")
    if spec.extract.regex:
        m = re.search(spec.extract.regex, out)
        if m:
            out = m.group(1) if m.groups() else m.group(0)
    return out.strip()


_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s+\S", re.MULTILINE)


def options_in_text(text: str) -> int:
    """How many options "A. ...", "B) ...", "(C) ..." are listed, one per line, in `text`
    (consecutive letters from A; 0 when there is no such list)."""
    letters = {m.group(1) for m in _OPTION_LINE.finditer(text or "")}
    n = 0
    while n < len(LETTERS) and LETTERS[n] in letters:
        n += 1
    return n


def chance_of(spec: TaskSpec, options: list[str] | None,
              doc: Mapping[str, Any] | None = None) -> float:
    """Expected headline score of guessing for one item: `options` = 1/#options,
    `options_in_question` = 1/#options listed in the question text (0 with fewer than 2)."""
    if spec.chance == "options":
        return 1.0 / len(options) if options else 0.0
    if spec.chance == "options_in_question":
        question = str((doc or {}).get(spec.fields.question or "") or "")
        n = options_in_text(question)
        return 1.0 / n if n >= 2 else 0.0
    return float(spec.chance)
