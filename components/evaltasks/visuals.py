"""Document images to files: the adapter between dataset rows and `generate_answers`.

Hub datasets hand images over as PIL images, `{"bytes", "path"}` dicts (parquet read
without features) or lists of those; the embedded data gives paths relative to the data
root. `generate_answers` takes `(path, question)` pairs, so every image is written once,
as PNG named by the hash of its pixels, under a cache folder (the evaluate stage uses
`<run>/evaluate/_cache/images/<task>/`, removed when the stage ends unless
`evaluate.keep_cache`).
Plain paths pass through untouched when no drawing is asked for.

Optional transforms, per task (`visual:` in the YAML): outline a box (RefCOCO region
description, as lmms-eval's `refcoco_bbox_doc_to_visual` does) and combine several images
side by side into one (the prompt holds one image).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from components.errors import AmaliaError


def to_pil(value: Any, root: Path | None = None) -> Image.Image:
    """A PIL image from a PIL image, bytes, a `{"bytes", "path"}` dict or a path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, bytes | bytearray):
        return Image.open(io.BytesIO(value))
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return to_pil(value["path"], root)
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_absolute() and root is not None:
            path = root / path
        try:
            return Image.open(path)
        except (OSError, ValueError) as exc:
            raise AmaliaError(f"cannot read image {path}: {exc}") from None
    raise AmaliaError(f"not an image: {type(value).__name__}")


def image_values(doc: dict[str, Any], fields: str | list[str] | None) -> list[Any]:
    """The non-empty image values of `doc` in field order (lists flattened)."""
    if fields is None:
        return []
    out: list[Any] = []
    for name in [fields] if isinstance(fields, str) else fields:
        value = doc.get(name)
        if value is None or value == "":
            continue
        out += [v for v in value if v is not None] if isinstance(value, list | tuple) else [value]
    return out


def concat(images: list[Image.Image]) -> Image.Image:
    """Images side by side on white, tops aligned."""
    images = [im.convert("RGB") for im in images]
    width = sum(im.width for im in images)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


def draw_box(image: Image.Image, box: Any, box_format: str = "xywh") -> Image.Image:
    """A copy of `image` with `box` (pixels) outlined in red."""
    x0, y0, a, b = (float(v) for v in box)
    x1, y1 = (x0 + a, y0 + b) if box_format == "xywh" else (a, b)
    out = image.convert("RGB").copy()
    ImageDraw.Draw(out).rectangle([x0, y0, x1, y1], outline="red")
    return out


def save_cached(image: Image.Image, cache_dir: Path) -> Path:
    """Write `image` as PNG named by the sha256 of its size and pixels (written once)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()[:32]
    path = cache_dir / f"{digest}.png"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        rgb.save(tmp, format="PNG")
        tmp.replace(path)
    return path


def doc_pil(doc: dict[str, Any], fields: str | list[str] | None, *, root: Path | None,
            box: Any = None, box_format: str = "xywh",
            multi: str = "concat") -> tuple[Image.Image | None, int]:
    """`(RGB image, n_images)` the model sees for `doc` (None when it has no image)."""
    values = image_values(doc, fields)
    if not values:
        return None, 0
    images = [to_pil(v, root) for v in values]
    image = images[0] if multi == "first" or len(images) == 1 else concat(images)
    if box is not None:
        image = draw_box(image, box, box_format)
    return image.convert("RGB"), len(values)


def doc_image(doc: dict[str, Any], fields: str | list[str] | None, *, root: Path | None,
              cache_dir: Path, box: Any = None, box_format: str = "xywh",
              multi: str = "concat") -> tuple[Path | None, tuple[int, int] | None, int]:
    """`(path, (width, height), n_images)` of the one image the model sees for `doc`.

    A single path-valued image with nothing to draw is returned as is (no copy); anything
    else is decoded, transformed and written to `cache_dir`. No image gives `(None, None, 0)`.
    """
    values = image_values(doc, fields)
    if len(values) == 1 and box is None and isinstance(values[0], str | Path):
        path = Path(values[0])
        path = path if path.is_absolute() or root is None else root / path
        with to_pil(path) as im:
            return path, im.size, 1
    image, n = doc_pil(doc, fields, root=root, box=box, box_format=box_format, multi=multi)
    if image is None:
        return None, None, 0
    return save_cached(image, cache_dir), image.size, n
