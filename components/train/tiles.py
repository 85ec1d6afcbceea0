"""Fast anyres (LlavaNext) tiling of ONE image, equal to the Hugging Face image processor.

`AnyresTiler.from_processor(image_processor)` reads every setting of a
`transformers.LlavaNextImageProcessorPil` and `tiler(image)` returns what
`image_processor(images=[image], return_tensors="pt")["pixel_values"][0][:tiles]` returns:
a (tiles, 3, side, side) float32 tensor, `tiles = image_size_to_num_patches(...)` (the HF
output is padded with zero tiles to the most tiles in its batch; that padding is not
returned). Equality is bitwise, not approximate:

- geometry is HF's, step by step, with the same PIL calls: RGB conversion (alpha composited
  on white), `select_best_resolution` (HF's own function) over `image_grid_pinpoints`, an
  aspect-keeping PIL resize to fit that resolution (`get_patch_output_size`, ceil), zero
  (black, before normalisation) padding centred with the odd pixel at the right/bottom,
  row-major `patch_size` squares (`crop_size.height`, else `size.height`, else
  `size.shortest_edge`; edge squares may be partial), the whole image PIL-resized to the
  base size as the FIRST tile, then per tile `do_resize` to `size` (PIL, skipped when the
  tile already has that size: PIL's resize to the same size is a copy) and
  `do_center_crop` to `crop_size` (zero padded when smaller, as HF does);
- the per-pixel math (rescale, normalise) runs once over all tiles (numpy, in place, on
  a channel-first uint8 canvas whose grid squares are strided views: no per-tile copies).
  Its kernel is chosen at construction by checking it against the processor's own
  `rescale`/`normalize` on all 256 values of every channel; the kernels are elementwise
  IEEE ops (correctly rounded, so the same value gives the same bits anywhere), hence a
  kernel that matches on the 256 values matches on every pixel. Where no float kernel
  matches, a 256-entry lookup table of HF's own results is used (exact by construction).

Refused (`from_processor` raises `TilerRefused`, with the reason; `tiler_for` returns None
so callers fall back to the HF processor): any other image processor class (the torchvision
`LlavaNextImageProcessor` resizes with torch, not PIL) or a subclass/instance overriding a
method the pipeline calls; `do_convert_rgb` off; `size` other than {height, width} or
{shortest_edge}; resample that is not a PIL filter; neither `do_rescale` nor
`do_normalize` (HF would return uint8); mean/std not of 3 channels; tiles that would not
all be squares of one side; missing values HF would reject. Settings HF's LlavaNext PIL
pipeline ignores for pixel values (`do_pad`: only pads the batch; `data_format`,
`input_data_format`, `pad_size`, `device`, `return_tensors`) are ignored here too.

Settings are read when the tiler is built; `tiler_for` re-reads them on every call and
rebuilds when one changed, so a mutated processor is never served stale tiles.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import LlavaNextImageProcessorPil
from transformers.image_processing_utils import select_best_resolution
from transformers.image_utils import SizeDict
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

# settings that decide the pixel values (all read through the processor's own
# `_standardize_kwargs`, as `preprocess` does)
SETTINGS = (
    "do_convert_rgb", "do_resize", "size", "default_to_square", "resample", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_center_crop", "crop_size",
    "image_grid_pinpoints",
)
# methods of the HF pipeline this module replicates: a subclass or an instance that
# overrides any of them may compute something else, so it is refused
REPLICATED = (
    "preprocess", "__call__", "_preprocess_image_like_inputs", "_prepare_image_like_inputs",
    "_prepare_images_structure", "process_image", "convert_to_rgb", "_preprocess",
    "get_image_patches", "_resize_for_patching", "_pad_for_patching", "_get_padding_size",
    "resize", "center_crop", "rescale", "normalize", "_standardize_kwargs",
)
RESAMPLE_DEFAULT = Image.Resampling.BILINEAR  # HF's `resize` when `resample` is None

log = logging.getLogger(__name__)


class TilerRefused(ValueError):
    """The processor has a setting `AnyresTiler` does not replicate: use the HF processor."""


def to_rgb(image: Image.Image) -> Image.Image:
    """HF's `convert_to_rgb`: images with an alpha band or a `transparency` entry are
    composited onto white, anything else is `convert("RGB")` (RGB images as they are)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """HF's `get_patch_output_size`: (height, width) of `hw` scaled to fit `target`
    (height, width), aspect kept, the scaled side rounded up and capped at the target."""
    (h, w), (th, tw) = hw, target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


def _center_crop(tile: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """HF's `center_crop` on an (H, W, 3) uint8 tile: a centred (ch, cw) window, the tile
    first zero padded (odd pixel at the top/left, `ceil`) where it is smaller."""
    h, w = tile.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
        return tile[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)
    canvas = np.zeros((nh, nw, tile.shape[2]), dtype=tile.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    canvas[tp:tp + h, lp:lp + w] = tile
    top, left = top + tp, left + lp
    return canvas[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]


def _refuse_overrides(ip: Any) -> None:
    if not isinstance(ip, LlavaNextImageProcessorPil):
        raise TilerRefused(f"{type(ip).__name__} is not a LlavaNextImageProcessorPil")
    for name in REPLICATED:
        if name in vars(ip) or (getattr(type(ip), name, None)
                                is not getattr(LlavaNextImageProcessorPil, name, None)):
            raise TilerRefused(f"{type(ip).__name__} overrides {name}")


def _settings(ip: Any) -> dict[str, Any]:
    """The settings `preprocess` would use, standardised by the processor itself."""
    raw = {k: getattr(ip, k, None) for k in getattr(ip, "_valid_kwargs_names", SETTINGS)}
    return ip._standardize_kwargs(**raw)


def settings_key(ip: Any) -> tuple:
    """A cheap snapshot of everything `AnyresTiler.from_processor` reads (for caching):
    the class, the repr of every setting (in-place edits of `size` or the pinpoints show)
    and which replicated methods the instance overrides."""
    names = getattr(ip, "_valid_kwargs_names", SETTINGS)
    return (type(ip), *(repr(getattr(ip, k, None)) for k in names),
            *(name in vars(ip) for name in REPLICATED))


@dataclass(frozen=True)
class _Normalise:
    """uint8 -> float32 kernel, in numpy (single-threaded like HF's, so it does not fight
    a busy machine's cores the way torch's intra-op threads do): `x / divisor` in float32,
    or HF's `float32(float64(x) * scale)`, then `- mean`, then `/ std` in float32, each step
    optional; or a (3, 256) lookup table of HF's results."""

    divisor: float | None = None
    scale: float | None = None
    mean: np.ndarray | None = None  # (3, 1, 1) float32
    std: np.ndarray | None = None
    table: np.ndarray | None = None  # (3, 256) float32

    def __call__(self, tiles_u8: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`tiles_u8` (..., 3, h, w) uint8 (any strides) -> `out` (same shape) float32."""
        for c in range(3):  # one channel plane at a time: contiguous writes
            src, dst = tiles_u8[..., c, :, :], out[..., c, :, :]
            if self.table is not None:
                np.take(self.table[c], src, out=dst)
            elif self.scale is not None:
                np.multiply(src, self.scale, out=dst, dtype=np.float64, casting="same_kind")
            elif self.divisor is not None:
                np.divide(src, np.float32(self.divisor), out=dst, dtype=np.float32)
            else:
                np.copyto(dst, src, casting="safe")
        if self.table is None and self.mean is not None:
            np.subtract(out, self.mean, out=out)
        if self.table is None and self.std is not None:
            np.divide(out, self.std, out=out)
        return out


def _reference(ip: Any, s: dict[str, Any]) -> np.ndarray:
    """HF's own rescale/normalise of all 256 values per channel: (3, 256) float32."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()
    if s["do_rescale"]:
        values = ip.rescale(image=values, scale=s["rescale_factor"])
    if s["do_normalize"]:
        values = ip.normalize(image=values, mean=s["image_mean"], std=s["image_std"])
    return np.asarray(values, dtype=np.float32).reshape(3, 256)


def _pick_kernel(ip: Any, s: dict[str, Any]) -> _Normalise:
    """The fastest kernel that reproduces HF bit for bit on every uint8 value."""
    want = _reference(ip, s)
    norm: dict[str, Any] = {}
    if s["do_normalize"]:
        mean, std = s["image_mean"], s["image_std"]
        # HF's `normalize`: a Collection per channel, anything else one value for all
        mean = list(mean) if isinstance(mean, Collection) else [mean] * 3
        std = list(std) if isinstance(std, Collection) else [std] * 3
        norm = {"mean": np.array(mean, dtype=np.float32).reshape(3, 1, 1),
                "std": np.array(std, dtype=np.float32).reshape(3, 1, 1)}
    candidates = []
    if s["do_rescale"]:
        inverse = 1.0 / float(s["rescale_factor"])
        if inverse == round(inverse):  # 1/255: a float32 division, cheaper than float64
            k = float(round(inverse))
            if norm and len(set(norm["std"].ravel().tolist())) == 1:
                # one pass fewer: (x/k - m)/s as x/(k*s) - m/s, exact when s is a power
                # of two (SigLIP's 0.5); the check below decides
                sd = float(norm["std"].ravel()[0])
                candidates.append(_Normalise(divisor=k * sd, mean=norm["mean"] / np.float32(sd)))
            candidates.append(_Normalise(divisor=k, **norm))
        candidates.append(_Normalise(scale=float(s["rescale_factor"]), **norm))
    else:
        candidates.append(_Normalise(**norm))
    probe = np.broadcast_to(np.arange(256, dtype=np.uint8), (1, 3, 1, 256))
    for kernel in candidates:
        got = kernel(probe, np.empty((1, 3, 1, 256), dtype=np.float32)).reshape(3, 256)
        if np.array_equal(got.view(np.uint32), want.view(np.uint32)):  # bits, not values
            return kernel
    return _Normalise(table=want)


class AnyresTiler:
    """Anyres tiles of one PIL image, bitwise equal to a `LlavaNextImageProcessorPil`.

    Build with `from_processor`; `tiler(image)` -> (tiles, 3, side, side) float32.
    `side`: the side of every returned tile; `patch_size`: the grid step on the padded
    best resolution (HF's `patch_size`); `num_tiles((h, w))`: the tile count of an image
    of that (height, width), `image_size_to_num_patches` with `patch_size`.
    """

    def __init__(self, *, pinpoints: list[list[int]], base_hw: tuple[int, int],
                 patch_size: int, resize_to: SizeDict | None, crop_hw: tuple[int, int] | None,
                 resample: int, side: int, kernel: _Normalise) -> None:
        self.pinpoints = pinpoints
        self.base_hw = base_hw
        self.patch_size = patch_size
        self.resize_to = resize_to
        self.crop_hw = crop_hw
        self.resample = resample
        self.side = side
        self.kernel = kernel
        # `_finish` leaves a side x side tile as it is, and the base and grid squares are
        # that size: the tiles are plain views of the resized image (`_planar`)
        self._planar = (
            side == patch_size and base_hw == (side, side) and crop_hw in (None, (side, side))
            and (resize_to is None or (resize_to.height or resize_to.shortest_edge) == side))

    @classmethod
    def from_processor(cls, image_processor: Any) -> AnyresTiler:
        """Read every setting of `image_processor`; raises `TilerRefused` (with the
        reason) for one this module does not replicate exactly (module docstring)."""
        ip = image_processor
        _refuse_overrides(ip)
        try:
            s = _settings(ip)
            ip._validate_preprocess_kwargs(**s)
        except (TypeError, ValueError) as err:
            raise TilerRefused(f"settings HF would reject: {err}") from err
        if not s.get("do_convert_rgb"):
            raise TilerRefused("do_convert_rgb is off (non-RGB images keep their bands)")
        size, crop = s.get("size"), s.get("crop_size")
        keys = set(dict(size)) if isinstance(size, SizeDict) else None
        if keys not in ({"height", "width"}, {"shortest_edge"}):
            raise TilerRefused(f"size {size!r} is not {{height, width}} or {{shortest_edge}}")
        if not (s.get("do_rescale") or s.get("do_normalize")):
            raise TilerRefused("neither do_rescale nor do_normalize: HF returns uint8")
        if s.get("do_rescale") and s.get("rescale_factor") is None:
            raise TilerRefused("do_rescale without rescale_factor")
        if s.get("do_normalize"):
            for name in ("image_mean", "image_std"):
                v = s.get(name)
                if v is None or (isinstance(v, Collection) and len(v) != 3):
                    raise TilerRefused(f"{name} {v!r} is not 3 channels")
        resample = s.get("resample")
        resample = RESAMPLE_DEFAULT if resample is None else resample
        if not isinstance(resample, int) or resample not in set(Image.Resampling):
            raise TilerRefused(f"resample {resample!r} is not a PIL filter")
        pinpoints = s.get("image_grid_pinpoints")
        if not isinstance(pinpoints, list) or not pinpoints:
            raise TilerRefused("image_grid_pinpoints is not a non-empty list")
        pinpoints = [[int(h), int(w)] for h, w in pinpoints]
        # HF's _preprocess: base size and grid step
        if size.height and size.width:
            base_hw = (int(size.height), int(size.width))
        else:
            base_hw = (int(size.shortest_edge),) * 2
        if crop and crop.height:
            patch_size = int(crop.height)
        else:
            patch_size = int(size.height or size.shortest_edge)
        do_crop = bool(s.get("do_center_crop"))
        if do_crop and not (crop and crop.height and crop.width):
            raise TilerRefused("do_center_crop without crop_size height and width")
        crop_hw = (int(crop.height), int(crop.width)) if do_crop else None
        resize_to = size if s.get("do_resize") else None
        side = cls._uniform_side(base_hw, patch_size, resize_to, crop_hw, pinpoints)
        return cls(pinpoints=pinpoints, base_hw=base_hw, patch_size=patch_size,
                   resize_to=resize_to, crop_hw=crop_hw, resample=int(resample), side=side,
                   kernel=_pick_kernel(ip, s))

    @staticmethod
    def _uniform_side(base_hw, patch_size, resize_to, crop_hw, pinpoints) -> int:
        """The one side every tile ends with, or `TilerRefused` when tiles would differ
        (HF would fail to stack them, or return tiles no model reads)."""
        if crop_hw is not None:
            if crop_hw[0] != crop_hw[1]:
                raise TilerRefused(f"crop_size {crop_hw} is not square")
            return crop_hw[0]
        regular = all(h % patch_size == 0 and w % patch_size == 0 for h, w in pinpoints)
        if resize_to is not None and resize_to.height:
            if resize_to.height != resize_to.width:
                raise TilerRefused(f"size {resize_to!r} is not square")
            return int(resize_to.height)
        if resize_to is not None:  # shortest_edge: squares stay squares, partial ones don't
            if regular:
                return int(resize_to.shortest_edge)
        elif regular and base_hw == (patch_size, patch_size):
            return patch_size
        raise TilerRefused("tiles of different shapes (partial edge tiles or base != grid)")

    def num_tiles(self, hw: tuple[int, int]) -> int:
        """Tiles of an image of (height, width) `hw`: 1 base + the grid of its best
        resolution (partial edge squares count), `image_size_to_num_patches`."""
        return int(image_size_to_num_patches(tuple(hw), self.pinpoints, self.patch_size))

    def _resized(self, image: Image.Image, hw: tuple[int, int]) -> Image.Image:
        """PIL resize to (height, width) `hw`, as HF's (a same-size resize is a copy)."""
        if (image.height, image.width) == hw:
            return image
        return image.resize((hw[1], hw[0]), resample=self.resample)

    def _resize(self, image: Image.Image, hw: tuple[int, int]) -> np.ndarray:
        return np.asarray(self._resized(image, hw))

    def _planes_into(self, image: Image.Image, hw: tuple[int, int], dst: np.ndarray) -> None:
        """`image` resized to `hw`, written channel-first into `dst` (3, *hw) uint8: PIL
        splits the bands, cheaper than numpy's transpose of interleaved pixels."""
        for plane, band in zip(dst, self._resized(image, hw).split(), strict=True):
            plane[...] = np.asarray(band)

    def _finish(self, tile: np.ndarray) -> np.ndarray:
        """Per-tile `do_resize` (to `size`) and `do_center_crop`, on uint8 (H, W, 3)."""
        if self.resize_to is not None:
            h, w = tile.shape[:2]
            if self.resize_to.height:
                target = (int(self.resize_to.height), int(self.resize_to.width))
            else:  # get_resize_output_image_size(default_to_square=False)
                short, long = (w, h) if w <= h else (h, w)
                edge = int(self.resize_to.shortest_edge)
                new_long = int(edge * long / short)
                target = (new_long, edge) if w <= h else (edge, new_long)
            if target != (h, w):
                tile = self._resize(Image.fromarray(np.ascontiguousarray(tile)), target)
        if self.crop_hw is not None:
            tile = _center_crop(tile, *self.crop_hw)
        return tile

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(tiles, 3, side, side) float32 anyres tiles of `image`, base tile first, then
        the grid row by row: equal to the HF processor's output for this image alone."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"AnyresTiler takes a PIL image, got {type(image).__name__}")
        rgb = to_rgb(image)
        hw = (rgb.height, rgb.width)
        best = tuple(select_best_resolution(hw, self.pinpoints))
        nh, nw = fit_size(hw, best)
        top, left = (best[0] - nh) // 2, (best[1] - nw) // 2
        p = self.patch_size
        count = 1 + math.ceil(best[0] / p) * math.ceil(best[1] / p)  # = self.num_tiles(hw)
        out = np.empty((count, 3, self.side, self.side), dtype=np.float32)
        if self._planar and best[0] % p == 0 and best[1] % p == 0:
            # channel-first canvas; the grid is a strided view of it: one kernel pass
            canvas = np.zeros((3, best[0], best[1]), dtype=np.uint8)
            self._planes_into(rgb, (nh, nw), canvas[:, top:top + nh, left:left + nw])
            base = np.empty((1, 3, p, p), dtype=np.uint8)
            self._planes_into(rgb, self.base_hw, base[0])
            gh, gw = best[0] // p, best[1] // p
            self.kernel(canvas.reshape(3, gh, p, gw, p).transpose(1, 3, 0, 2, 4),
                        out[1:].reshape(gh, gw, 3, p, p))
            self.kernel(base, out[:1])
            return torch.from_numpy(out)
        canvas = np.zeros((best[0], best[1], 3), dtype=np.uint8)
        canvas[top:top + nh, left:left + nw] = self._resize(rgb, (nh, nw))
        tiles = [self._finish(self._resize(rgb, self.base_hw))]
        tiles += [self._finish(canvas[i:i + p, j:j + p]) for i in range(0, best[0], p)
                  for j in range(0, best[1], p)]
        if any(t.shape != (self.side, self.side, 3) for t in tiles):
            # HF cannot stack such tiles either (np.array of ragged tiles fails)
            raise ValueError(f"tiles of shapes {sorted({t.shape for t in tiles})}, "
                             f"not ({self.side}, {self.side}, 3)")
        self.kernel(np.stack(tiles).transpose(0, 3, 1, 2), out)
        return torch.from_numpy(out)


# image processor -> (settings_key, tiler or None); weak, so processors are not kept alive
_TILERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tiler_for(image_processor: Any) -> AnyresTiler | None:
    """The cached `AnyresTiler` of `image_processor`, rebuilt when its settings changed;
    None when `from_processor` refuses them (the caller uses the HF processor; the reason
    is logged once per processor and settings)."""
    key = settings_key(image_processor)
    try:
        hit = _TILERS.get(image_processor)
    except TypeError:  # an unhashable processor: no caching
        hit = None
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        tiler = AnyresTiler.from_processor(image_processor)
    except TilerRefused as err:
        log.info("anyres tiling falls back to the HF image processor: %s", err)
        tiler = None
    try:
        _TILERS[image_processor] = (key, tiler)
    except TypeError:
        pass
    return tiler
