"""Images as the trainers and the inference path read them, and shared constants.

`load_image` turns any readable image (file path or file object) into RGB: transparency
flattened onto white, greyscale, palette, 16-bit and CMYK converted, EXIF rotation
applied, the longer side capped at `MAX_IMAGE_SIDE`. Chat rendering and labels live in
`components.train.chat`; streaming samples in `components.train.dataset`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from components.errors import AmaliaError

IGNORE_INDEX = -100
# batch keys the collators add beside the model's inputs (never passed to forward)
META_KEYS = ("real_images", "sample_index", "segment_ids", "ref_chosen_logps",
             "ref_rejected_logps", "packed_rows")
CAPTION_PROMPT = "Descreve a imagem."
# Larger photos are shrunk on load (aspect kept): the tiles are far smaller anyway, and a
# 50-megapixel upload should not cost seconds of resizing or gigabytes of memory.
MAX_IMAGE_SIDE = 2048


def load_image(path: Path | str, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Any readable image as RGB: transparency flattened onto white, greyscale, palette,
    16-bit and CMYK converted, EXIF rotation applied, the longer side capped at `max_side`.

    Raises `AmaliaError("cannot read image PATH: reason")` for a missing or broken file.
    """
    try:
        with Image.open(path) as raw:
            raw.load()
            image = ImageOps.exif_transpose(raw) or raw
            image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        raise AmaliaError(f"cannot read image {path}: {reason}") from None
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # high bit depth: stretch to 8 bits (a plain convert would clip everything to white)
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without `META_KEYS`: what the model's forward takes."""
    return {k: v for k, v in batch.items() if k not in META_KEYS}


def to_device(batch: dict[str, torch.Tensor], device, dtype=None) -> dict[str, torch.Tensor]:
    """Tensors of `batch` on `device`; floating ones (pixels) also in `dtype` when given
    (the model's, for inference in bf16)."""
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return out
