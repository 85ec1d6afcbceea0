"""Reading user images: any format Pillow knows, any mode, converted to RGB.

`open_rgb` is the one gate for user-supplied images (`amalia-vl ask`, evaluation): an
unreadable file is an `AmaliaError` naming the path and the reason, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from components.errors import AmaliaError


def open_rgb(path: Path) -> Image.Image:
    """Decode `path` fully and return an RGB image (alpha composited on white)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(canvas, rgba).convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise AmaliaError(f"cannot read image {path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AmaliaError(f"cannot read image {path}: {exc}") from None
