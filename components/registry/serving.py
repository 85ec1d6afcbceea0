"""The pyfunc face of a registered AMALIA-VL model: `predict` answers rows of `image`
(a path, raw bytes, a base64 string or a data: URL) and `question`, from a DataFrame
or a list of dicts, also behind `mlflow models serve`.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

from components.errors import AmaliaError
from components.registry.tags import (
    HF_ARTIFACT,
)


def _image_source(value: Any, row: int) -> Path | io.BytesIO:
    """A path or an in-memory file for one row's `image`: a path (str or Path), raw bytes,
    or a base64 string (optionally a `data:image/...;base64,` URL)."""
    if isinstance(value, Path):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        else:
            try:
                if len(text) < 4096 and Path(text).is_file():
                    return Path(text)
            except OSError:  # a long base64 string is no valid file name
                pass
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AmaliaError(f"row {row}: 'image' is neither an existing file nor base64 "
                              f"({text[:40]!r})") from None
    else:
        raise AmaliaError(f"row {row}: 'image' must be a path, bytes or a base64 string, "
                          f"not {type(value).__name__}")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise AmaliaError(f"row {row}: 'image' bytes are not a readable image "
                          f"({str(exc) or type(exc).__name__})") from None
    return io.BytesIO(raw)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (
        isinstance(value, str) and not value.strip())


def prepare_rows(model_input: Any) -> list[tuple[Path | io.BytesIO, str]]:
    """`(image, question)` per row of a DataFrame, a list of dicts or one dict; a row
    without an image or a question is an `AmaliaError` naming the row."""
    if hasattr(model_input, "to_dict"):
        rows = model_input.to_dict("records")
    elif isinstance(model_input, dict):
        rows = [model_input]
    else:
        rows = list(model_input)
    items = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise AmaliaError(f"row {i}: expected a mapping with 'image' and 'question', "
                              f"got {type(row).__name__}")
        for key in ("image", "question"):
            if _missing(row.get(key)):
                raise AmaliaError(f"row {i} has no '{key}' (each row needs 'image': a path, "
                                  f"bytes or base64, and 'question')")
        items.append((_image_source(row["image"], i), str(row["question"])))
    return items


def _pyfunc_class():
    import mlflow.pyfunc

    class AmaliaVLPyfunc(mlflow.pyfunc.PythonModel):
        """pyfunc face of an AMALIA-VL save_pretrained folder.

        `predict` takes a DataFrame, a list of dicts or one dict with `image` (a path, raw
        bytes or a base64 string) and `question`, and returns one greedy answer per row
        (`params.max_new_tokens`, default 16).
        """

        def load_context(self, context):
            from components.model.build import load_model

            self.model, self.processor = load_model(Path(context.artifacts[HF_ARTIFACT]))

        def predict(self, context, model_input, params=None):
            from components.inference import generate_answers
            from components.registry import prepare_rows

            items = prepare_rows(model_input)
            max_new = int((params or {}).get("max_new_tokens", 16))
            return generate_answers(self.model, self.processor, items, max_new_tokens=max_new,
                                    batch_size=8)

    return AmaliaVLPyfunc
