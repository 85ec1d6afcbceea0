"""Map one raw row of any supported layout onto the normalised `Record` fields.

`normalise(row, defaults)` never raises: it returns a dict for `Record.model_validate` (bad
types surface there as `schema:` reasons) plus the images that arrived as bytes, keyed by
the synthetic locator the record uses for them. Layouts recognised, in this order:

- the pipeline's own records (a `kind` field): passed through as they are (strict);
- LLaVA: `conversations` of `{from: human|gpt|system, value}` turns (or `{role, content}`);
- chat `messages` of `{role, content}` (content a string or `[{type: text|image}]` parts);
- FineVision / the Cauldron: `texts` of `{user, assistant}` pairs (`<image>` placeholders
  are put in front of the first user turn when the rows have none: images come first);
- preference pairs: `chosen` + `rejected` (+ `prompt` or `question`);
- grounding: `boxes` / `bboxes` / `bbox` (+ `question`, `expression`, `phrase`, `caption`);
- multiple choice: `options` / `choices` + `answer` (text, 0-based index or letter A..Z);
- QA: `question` + `answer` / `answers` (VQAv2-style lists: the most frequent answer);
- text-only instructions: `instruction` (+ `input`) + `output`;
- captions: `caption` / `captions` / `text` (+ an image).

Images: `image` / `images` / `image_path` / `file_name` values are paths (relative to the
input's image root unless absolute or `s3://`), bytes, or `{bytes, path}` dicts (the
Hugging Face `Image` feature undecoded). Foreign rows get ids `<source>/<row id>` so that
sources cannot collide, and `language` / `split` / `task_family` from the input's options
when the row has none (`val`, `validation`, `dev`, `eval` and `test` splits become `test`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from components.records import PLACEHOLDER, RECORD_FIELDS

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "model": "assistant", "bot": "assistant", "system": "system"}
TEST_SPLITS = {"test", "val", "valid", "validation", "dev", "eval", "evaluation"}
DEFAULT_FAMILY = {"caption": "captioning", "qa": "general_vqa",
                  "multiple_choice": "multiple_choice", "conversation": "general_vqa",
                  "grounding": "grounding", "preference": "preference"}
IMAGE_KEYS = ("images", "image", "image_path", "file_name", "img", "image_bytes")


def _first(row: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    return None


def _text(value: Any) -> Any:
    """Strings pass; a list of strings becomes its first element; other types pass through
    (and fail the schema check, with a reason)."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value[0]
    return value


def _majority(answers: Any) -> Any:
    if isinstance(answers, list) and answers:
        flat = [a.get("answer") if isinstance(a, dict) else a for a in answers]
        flat = [a for a in flat if isinstance(a, str)]
        if flat:
            return Counter(flat).most_common(1)[0][0]
    return _text(answers)


def _content(value: Any) -> Any:
    """Chat content: a string, or parts `[{type: text, text} | {type: image}]`."""
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "image":
                parts.append(PLACEHOLDER)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return value


def _turns(items: Any, role_key: str, content_key: str) -> Any:
    if not isinstance(items, list):
        return items
    turns = []
    for item in items:
        if not isinstance(item, dict):
            return items  # leaves a schema error
        role = ROLE_MAP.get(str(item.get(role_key, "")).lower(), item.get(role_key))
        turns.append({"role": role, "content": _content(item.get(content_key))})
    return turns


def _cauldron_turns(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    turns: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            return items
        for key, role in (("system", "system"), ("user", "user"), ("assistant", "assistant")):
            if item.get(key) is not None:
                turns.append({"role": role, "content": item[key]})
    return turns


def _option_answer(answer: Any, options: Any) -> Any:
    if not isinstance(options, list):
        return answer
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, int) and 0 <= answer < len(options):
        return options[answer]
    if isinstance(answer, str) and answer not in options:
        letter = answer.strip().strip("().").upper()
        if len(letter) == 1 and "A" <= letter <= "Z" and ord(letter) - 65 < len(options):
            return options[ord(letter) - 65]
    return answer


def _boxes(value: Any, box_format: str) -> Any:
    """Boxes as `[{bbox: [x0, y0, x1, y1], label}]`; `xywh` is converted here, `xyxy_norm`
    (0..1) later, once the image size is known (marked by `_norm_boxes`)."""
    if isinstance(value, list) and len(value) == 4 and all(
            isinstance(v, int | float) for v in value):
        value = [value]
    if not isinstance(value, list):
        return value
    out = []
    for item in value:
        label = None
        if isinstance(item, dict):
            label = _first(item, "label", "phrase", "category", "name")
            item = _first(item, "bbox", "box", "xyxy")
        if isinstance(item, list | tuple) and len(item) == 4 and box_format == "xywh":
            try:
                x, y, w, h = (float(v) for v in item)
                item = [x, y, x + w, y + h]
            except (TypeError, ValueError):
                pass
        out.append({"bbox": list(item) if isinstance(item, tuple) else item,
                    **({"label": label} if label is not None else {})})
    return out


class ImageSink:
    """Collects a row's image references: paths become locators, bytes are kept inline."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.inline: dict[str, bytes] = {}
        self.locators: list[Any] = []

    def add(self, value: Any, column: str, index: int) -> None:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data:
                self._inline(bytes(data), column, index, path)
            elif path:
                self.locators.append(path)
            return
        if isinstance(value, bytes | bytearray | memoryview):
            self._inline(bytes(value), column, index, None)
            return
        self.locators.append(value)  # a path (or junk: the schema check reports it)

    def _inline(self, data: bytes, column: str, index: int, path: str | None) -> None:
        name = f"{self.prefix}/{column}[{index}]" + (f":{path}" if path else "")
        self.inline[name] = data
        self.locators.append(name)


def _image_column(row: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """`(column, values)` of the first `IMAGE_KEYS` column of a foreign row holding an
    image or a non-empty list of them (a lone value as a list); None when there is none."""
    for key in IMAGE_KEYS:
        value = row.get(key)
        if value is None or (isinstance(value, list) and not value):
            continue
        return key, value if isinstance(value, list) else [value]
    return None


def _collect_images(row: dict[str, Any], sink: ImageSink) -> None:
    column = _image_column(row)
    if column is not None:
        key, values = column
        for i, v in enumerate(values):
            if v is not None:
                sink.add(v, key, i)


def image_paths(row: dict[str, Any]) -> list[str]:
    """The image values of a raw row that are paths (strings, or `{path}` dicts without
    bytes), from the columns `normalise` reads them from; bytes are skipped, not copied."""
    if "kind" in row:
        value = row.get("images") or row.get("image")
    else:
        value = (_image_column(row) or ("", []))[1]
    out = []
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, dict) and not v.get("bytes"):
            v = v.get("path")
        if isinstance(v, str) and v.strip():
            out.append(v)
    return out


def _foreign(row: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The record fields of a row in a foreign layout (see the module docstring)."""
    box_format = defaults.get("box_format", "xyxy")
    out: dict[str, Any] = {}
    if row.get("conversations") is not None:
        convs = row["conversations"]
        keys = ("role", "content") if convs and isinstance(convs[0], dict) and "role" in convs[0] \
            else ("from", "value")
        out.update(kind="conversation", conversations=_turns(convs, *keys))
    elif row.get("messages") is not None:
        out.update(kind="conversation", conversations=_turns(row["messages"], "role", "content"))
    elif row.get("texts") is not None and isinstance(row["texts"], list):
        out.update(kind="conversation", conversations=_cauldron_turns(row["texts"]))
        out["_images_first"] = True
    elif row.get("chosen") is not None and row.get("rejected") is not None:
        out.update(kind="preference", question=_first(row, "prompt", "question", "instruction"),
                   chosen=_content(row["chosen"]), rejected=_content(row["rejected"]))
    elif _first(row, "boxes", "bboxes", "bbox") is not None:
        out.update(kind="grounding",
                   question=_text(_first(row, "question", "expression", "phrase", "caption",
                                         "prompt", "text")),
                   boxes=_boxes(_first(row, "boxes", "bboxes", "bbox"), box_format))
        if row.get("answer") is not None:
            out["answer"] = _text(row["answer"])
        if box_format == "xyxy_norm":
            out["_norm_boxes"] = True
    elif _first(row, "options", "choices") is not None and row.get("answer") is not None:
        options = _first(row, "options", "choices")
        if isinstance(options, list):
            options = [str(o) if isinstance(o, int | float) else o for o in options]
        out.update(kind="multiple_choice", question=_first(row, "question", "prompt"),
                   options=options, answer=_option_answer(row["answer"], options))
    elif row.get("question") is not None and _first(row, "answer", "answers") is not None:
        out.update(kind="qa", question=row["question"],
                   answer=_majority(_first(row, "answer", "answers")))
    elif row.get("instruction") is not None and row.get("output") is not None:
        question = row["instruction"]
        if isinstance(question, str) and isinstance(row.get("input"), str) and row["input"]:
            question = f"{question}\n\n{row['input']}"
        out.update(kind="qa", question=question, answer=row["output"])
    elif _first(row, "caption", "captions", "text") is not None:
        out.update(kind="caption", text=_text(_first(row, "caption", "captions", "text")))
    elif any(row.get(k) is not None for k in IMAGE_KEYS):  # an image without its text
        out.update(kind="caption", text=None)
    else:
        out["_unknown_layout"] = True
    for key in ("id", "source", "language", "split", "task_family"):
        if row.get(key) is not None:
            out[key] = row[key]
    if "id" not in out and row.get("question_id") is not None:
        out["id"] = row["question_id"]
    return out


def normalise(row: Any, defaults: dict[str, Any],
              prefix: str) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]:
    """`(record fields, inline image bytes by locator, hints)` of one raw row.

    `defaults` holds the input's `source`, `language`, `split`, `task_family`,
    `box_format`; `prefix` names the row (`file#line`) for ids and inline-image locators.
    Hints: `raw_images` (the image values as written, for path checks), `norm_boxes`,
    `unknown_layout`, `foreign`.
    """
    if not isinstance(row, dict):
        return {}, {}, {"not_object": True}
    sink = ImageSink(prefix)
    if "kind" in row:  # the pipeline's own schema: strict, extras are schema errors
        rec = dict(row)
        raw = rec.get("images") or ([rec["image"]] if rec.get("image") is not None else [])
        for key in ("image", "images"):
            rec.pop(key, None)
        for i, value in enumerate(raw if isinstance(raw, list) else [raw]):
            sink.add(value, "image", i)
        hints: dict[str, Any] = {"foreign": False}
    else:
        rec = _foreign(row, defaults)
        _collect_images(row, sink)
        hints = {"foreign": True, "norm_boxes": rec.pop("_norm_boxes", False),
                 "unknown_layout": rec.pop("_unknown_layout", False)}
        images_first = rec.pop("_images_first", False)
        source = rec.get("source") or defaults.get("source")
        row_id = rec.get("id")
        rec["id"] = f"{source}/{row_id}" if row_id is not None else prefix
        if images_first and sink.locators:
            turns = rec.get("conversations")
            if isinstance(turns, list) and not any(
                    isinstance(t.get("content"), str) and PLACEHOLDER in t["content"]
                    for t in turns):
                first_user = next((t for t in turns if t.get("role") == "user"), None)
                if first_user is not None and isinstance(first_user.get("content"), str):
                    first_user["content"] = (PLACEHOLDER + "\n") * len(sink.locators) \
                        + first_user["content"]
    for key in ("source", "language", "split", "task_family"):
        if rec.get(key) is None and defaults.get(key) is not None:
            rec[key] = defaults[key]
    if hints["foreign"]:
        if isinstance(rec.get("split"), str):
            rec["split"] = "test" if rec["split"].lower() in TEST_SPLITS else "train"
        if isinstance(rec.get("id"), int | float):
            rec["id"] = str(rec["id"])
        kind = rec.get("kind")
        if rec.get("task_family") is None and kind in DEFAULT_FAMILY:
            rec["task_family"] = DEFAULT_FAMILY[kind] if sink.locators or kind == "caption" \
                else "text_instruction"
    hints["raw_images"] = list(sink.locators)
    if len(sink.locators) == 1:
        rec["image"] = sink.locators[0]
    elif len(sink.locators) > 1:
        rec["images"] = list(sink.locators)
        rec["image"] = sink.locators[0]
    rec = {k: v for k, v in rec.items() if k in RECORD_FIELDS or not hints["foreign"]}
    return rec, sink.inline, hints
