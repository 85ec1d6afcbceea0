"""`components.train.tiles.AnyresTiler` against the Hugging Face LlavaNext image processor.

Equality is bitwise (`torch.equal`) on images that look like photos and documents (smooth
colour fields, noise, sharp edges, text-like strokes: a wrong resample filter, pad side or
pad value, tile order or normalisation shows), for our tiny processor (`make_processor`),
the paper's (384 px tiles, SigLIP mean/std), the bare `LlavaNextImageProcessorPil()` and a
LLaVA-1.6 checkpoint's settings. Settings the tiler does not replicate must be refused, and
`pixel_inputs` must then take the HF processor. Everything is built here; nothing downloads.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import LlavaNextImageProcessorPil
from transformers.image_processing_utils import get_patch_output_size
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from components.model.build import SIGLIP_MEAN, SIGLIP_STD, make_processor
from components.model.tokenizer import train_tokenizer
from components.settings import load_settings
from components.train.chat import pixel_inputs
from components.train.tiles import (
    AnyresTiler,
    TilerRefused,
    _Normalise,
    _reference,
    _settings,
    fit_size,
    tiler_for,
)

# the paper profile's grid: every a x b tiles of 384 px with a x b <= 9 (params.yaml)
PAPER_PINPOINTS = [[384 * a, 384 * b] for a in range(1, 10) for b in range(1, 10)
                   if a * b <= 9]
LLAVA16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# (width, height): tiny, thin, odd, large, documents, icons
SIZES = [(1, 1), (2, 2), (17, 300), (300, 17), (5, 3000), (3000, 5), (33, 33), (100, 37),
         (333, 111), (640, 480), (480, 640), (1023, 769), (769, 1023), (2048, 1536),
         (1700, 2200)]


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo/document-like RGB image: smooth colour field + noise + sharp shapes + strokes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    field = np.stack([128 + 90 * np.sin(x / (width / 3 + 1) + p) * np.cos(y / (height / 2 + 1) - p)
                      for p in phase], axis=-1)
    field += rng.normal(0, 14, field.shape)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):  # sharp-edged blocks
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.rectangle([x0, y0, x0 + width // 4, y0 + height // 5],
                       fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    line = max(2, height // 40)
    for row in range(line, height - line, 3 * line):  # text-like strokes
        for col in range(2, width - 2, max(3, width // 30)):
            if rng.random() < 0.6:
                draw.line([col, row, col + max(1, width // 60), row + line], fill=(15, 15, 25),
                          width=max(1, line // 3))
    return image


def hf_tiles(ip, image: Image.Image) -> torch.Tensor:
    """The HF processor's tiles of `image` alone (one image: no batch padding)."""
    return ip(images=[image], return_tensors="pt")["pixel_values"][0]


def assert_same(ours: torch.Tensor, hf: torch.Tensor, what) -> None:
    assert ours.dtype == torch.float32 and ours.shape == hf.shape, (what, ours.shape, hf.shape)
    diff = (ours - hf).abs().max().item()
    assert torch.equal(ours, hf), (what, f"max abs diff {diff}")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["uma imagem", "um documento com texto"], 300)


def _llava16_checkpoint() -> LlavaNextImageProcessorPil:
    # the preprocessor_config.json of the llava-hf LLaVA-1.6 checkpoints
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=LLAVA16_PINPOINTS, do_center_crop=True)


@pytest.fixture(scope="module", params=["tiny", "paper", "llava16_class", "llava16_checkpoint"])
def config(request, tokenizer):
    name = request.param
    if name in ("tiny", "paper"):
        ip = make_processor(tokenizer, load_settings(name)).image_processor
        if name == "paper":
            assert ip.image_grid_pinpoints == PAPER_PINPOINTS and ip.size.height == 384
            assert tuple(ip.image_mean) == tuple(SIGLIP_MEAN) == (0.5,) * 3
        else:
            assert ip.size.height == 48
    elif name == "llava16_class":
        # the bare class: CLIP mean/std, shortest_edge 224 (not 336), 224 crop, center
        # crop on, 336-multiple pinpoints: partial edge tiles, resized then cropped
        ip = LlavaNextImageProcessorPil()
    else:
        ip = _llava16_checkpoint()
    return name, ip


def test_tiles_equal_hf_bitwise_on_many_sizes(config):
    name, ip = config
    tiler = AnyresTiler.from_processor(ip)
    pinpoints = [list(p) for p in ip.image_grid_pinpoints]
    exact = [(w, h) for h, w in pinpoints] + [(tiler.side, tiler.side)]
    for i, (w, h) in enumerate(SIZES + exact):
        image = scene(w, h, seed=i)
        ours, hf = tiler(image), hf_tiles(ip, image)
        assert_same(ours, hf, (name, w, h))
        n = int(image_size_to_num_patches((h, w), pinpoints, tiler.patch_size))
        assert ours.shape[0] == n == tiler.num_tiles((h, w)), (name, w, h)
        assert ours.shape[1:] == (3, tiler.side, tiler.side)


def test_tile_count_is_image_size_to_num_patches_with_the_tile_side(tokenizer):
    for profile, side in (("tiny", 48), ("paper", 384)):
        ip = make_processor(tokenizer, load_settings(profile)).image_processor
        tiler = AnyresTiler.from_processor(ip)
        assert tiler.side == tiler.patch_size == side
        for w, h in [(1, 1), (side, 2 * side), (3 * side, side), (1023, 769), (20, 3000)]:
            n = int(image_size_to_num_patches((h, w), ip.image_grid_pinpoints, side))
            assert tiler(scene(w, h)).shape[0] == n, (profile, w, h)


def test_fit_size_is_hfs_get_patch_output_size():
    rng = np.random.default_rng(3)
    sizes = [(1, 1), (1, 4000), (4000, 1)] + [tuple(s) for s in rng.integers(1, 3000, (400, 2))]
    for h, w in sizes:
        for target in PAPER_PINPOINTS + LLAVA16_PINPOINTS:
            shaped = np.empty((1, h, w), dtype=np.uint8)
            want = get_patch_output_size(shaped, target, ChannelDimension.FIRST)
            assert fit_size((h, w), tuple(target)) == want, (h, w, target)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "P+transparency", "CMYK", "I;16",
                                  "RGB+transparency", "1"])
def test_other_image_modes_equal_hf(mode, tokenizer):
    ip = make_processor(tokenizer, load_settings("tiny")).image_processor
    rgb = scene(130, 70)
    if mode == "RGBA":  # uneven alpha: compositing on white must show
        alpha = Image.fromarray(np.tile(np.arange(130, dtype=np.uint8) * 2, (70, 1)))
        image = rgb.copy()
        image.putalpha(alpha)
    elif mode == "LA":
        image = rgb.convert("LA")
    elif mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 3
    elif mode == "RGB+transparency":
        image = rgb.copy()
        image.info["transparency"] = tuple(int(c) for c in np.asarray(rgb)[0, 0])
    else:
        image = rgb.convert(mode)
    assert_same(AnyresTiler.from_processor(ip)(image), hf_tiles(ip, image), mode)


TINY = {"size": {"height": 48, "width": 48}, "crop_size": {"height": 48, "width": 48},
        "image_grid_pinpoints": [[48, 48], [48, 96], [96, 48], [96, 96]],
        "do_center_crop": False, "image_mean": SIGLIP_MEAN, "image_std": SIGLIP_STD}
VARIANTS = {
    "rescale_1/127.5": {"rescale_factor": 1 / 127.5},
    "rescale_odd_mean_std": {"rescale_factor": 0.0037, "image_mean": [0.1, 0.2, 0.3],
                             "image_std": [0.3, 0.2, 0.1]},
    "no_rescale": {"do_rescale": False, "image_mean": [127, 128, 129], "image_std": [60, 61, 62]},
    "no_normalize": {"do_normalize": False},
    "scalar_mean_std": {"image_mean": 0.4, "image_std": 0.3},
    "ndarray_mean_std": {"image_mean": np.array([0.2, 0.3, 0.4]),
                         "image_std": np.array([0.5, 0.6, 0.7])},
    "pow2_std_folded": {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.25] * 3},
    "equal_std_not_folded": {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.3] * 3},
    "clip_mean_std": {"image_mean": LlavaNextImageProcessorPil.image_mean,
                      "image_std": LlavaNextImageProcessorPil.image_std},
    "nearest": {"resample": Image.Resampling.NEAREST},
    "lanczos": {"resample": Image.Resampling.LANCZOS},
    "bilinear": {"resample": Image.Resampling.BILINEAR},
    "no_resize": {"do_resize": False},
    "smaller_crop": {"crop_size": {"height": 40, "width": 40}, "do_center_crop": True},
    "grid_step_below_size": {"crop_size": {"height": 32, "width": 32}},
    "shortest_edge": {"size": {"shortest_edge": 48}},
    "shortest_edge_center_crop": {"size": {"shortest_edge": 56}, "do_center_crop": True},
    "non_multiple_pinpoints": {"image_grid_pinpoints": [[50, 70], [70, 50], [100, 100]],
                               "do_center_crop": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_setting_variants_equal_hf(variant):
    ip = LlavaNextImageProcessorPil(**{**TINY, **VARIANTS[variant]})
    tiler = AnyresTiler.from_processor(ip)
    for i, (w, h) in enumerate([(1, 1), (130, 70), (17, 300), (97, 191), (640, 480)]):
        image = scene(w, h, seed=i)
        assert_same(tiler(image), hf_tiles(ip, image), (variant, w, h))


@pytest.mark.parametrize("variant", ["tiny", "rescale_odd_mean_std", "no_rescale"])
def test_lookup_table_kernel_equals_hf(variant):
    """The last-resort kernel (HF's own values for each uint8) is exact too."""
    ip = LlavaNextImageProcessorPil(**{**TINY, **VARIANTS.get(variant, {})})
    tiler = AnyresTiler.from_processor(ip)
    tiler.kernel = _Normalise(table=_reference(ip, _settings(ip)))
    image = scene(130, 70)
    assert_same(tiler(image), hf_tiles(ip, image), variant)


class _OwnResize(LlavaNextImageProcessorPil):
    def resize(self, image, size, resample=None, **kwargs):
        return super().resize(image, size, resample=Image.Resampling.NEAREST, **kwargs)


REFUSED = {
    "do_convert_rgb": ({"do_convert_rgb": False}, "do_convert_rgb"),
    "resample_name": ({"resample": "bicubic"}, "resample"),
    "uint8_output": ({"do_rescale": False, "do_normalize": False}, "uint8"),
    "non_square_crop": ({"crop_size": {"height": 48, "width": 40}, "do_center_crop": True},
                        "not square"),
    "longest_edge": ({"size": {"shortest_edge": 48, "longest_edge": 96}}, "size"),
    "two_channel_mean": ({"image_mean": [0.5, 0.5]}, "image_mean"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_settings_not_replicated_are_refused(case):
    kwargs, reason = REFUSED[case]
    ip = LlavaNextImageProcessorPil(**{**TINY, **kwargs})
    with pytest.raises(TilerRefused, match=reason):
        AnyresTiler.from_processor(ip)
    assert tiler_for(ip) is None


def test_other_classes_and_overrides_are_refused():
    with pytest.raises(TilerRefused, match="not a LlavaNextImageProcessorPil"):
        AnyresTiler.from_processor(SimpleNamespace(**TINY))
    with pytest.raises(TilerRefused, match="overrides resize"):
        AnyresTiler.from_processor(_OwnResize(**TINY))
    ip = LlavaNextImageProcessorPil(**TINY)
    ip.normalize = lambda image, mean, std, **kw: image
    with pytest.raises(TilerRefused, match="overrides normalize"):
        AnyresTiler.from_processor(ip)


def _hf_pixel_inputs(ip, images, sizes):
    """`pixel_inputs` as it was: resize to the sizes, one HF batch, slice the real tiles."""
    side = ip.size.height
    real = [im.resize((w, h), Image.Resampling.BICUBIC) if im.size != (w, h) else im
            for im, (h, w) in zip(images, sizes, strict=True) if im is not None]
    batch = iter(ip(images=real, return_tensors="pt")["pixel_values"])
    out = []
    for im, hw in zip(images, sizes, strict=True):
        n = int(image_size_to_num_patches(hw, ip.image_grid_pinpoints, side))
        out.append(torch.zeros(n, 3, side, side) if im is None else next(batch)[:n])
    return out


BATCH_SIZES = [(48, 48), (300, 17), (96, 96), (48, 48), (769, 1023)]  # (height, width)


def _batch():
    # the second image is resized to its size by pixel_inputs; None is a text-only dummy
    return [scene(48, 48, 1), scene(40, 200, 2), scene(96, 96, 3), None, scene(1023, 769, 4)]


def test_pixel_inputs_uses_the_tiler_and_equals_the_hf_path(tokenizer, monkeypatch):
    processor = make_processor(tokenizer, load_settings("tiny"))
    images = _batch()
    want = _hf_pixel_inputs(processor.image_processor, images, BATCH_SIZES)
    assert len({t.shape[0] for t in want}) > 1  # HF pads this batch to its most tiles

    def no_hf(*args, **kwargs):
        raise AssertionError("pixel_inputs called the HF processor")

    monkeypatch.setattr(LlavaNextImageProcessorPil, "preprocess", no_hf)
    pixels, sizes = pixel_inputs(processor, images, BATCH_SIZES)
    assert sizes.tolist() == [list(s) for s in BATCH_SIZES]
    for i, (got, hf) in enumerate(zip(pixels, want, strict=True)):
        assert_same(got, hf, i)
    assert not pixels[3].any()  # the dummy's tiles are blank


@pytest.mark.parametrize("case", ["do_convert_rgb", "resample_name", "uint8_output"])
def test_pixel_inputs_falls_back_to_hf_and_still_equals_it(case):
    ip = LlavaNextImageProcessorPil(**{**TINY, **REFUSED[case][0]})
    images = _batch()
    want = _hf_pixel_inputs(ip, images, BATCH_SIZES)
    pixels, _ = pixel_inputs(SimpleNamespace(image_processor=ip), images, BATCH_SIZES)
    for i, (got, hf) in enumerate(zip(pixels, want, strict=True)):
        assert got.shape == hf.shape and torch.equal(got, hf), (case, i)


def test_cached_tiler_follows_changed_settings():
    ip = LlavaNextImageProcessorPil(**TINY)
    processor = SimpleNamespace(image_processor=ip)
    images = _batch()
    first = tiler_for(ip)
    assert first is not None and tiler_for(ip) is first  # cached
    ip.image_mean = (0.1, 0.2, 0.3)  # a different normalisation: a stale tiler would show
    pixels, _ = pixel_inputs(processor, images, BATCH_SIZES)
    assert tiler_for(ip) is not first
    for i, (got, hf) in enumerate(zip(pixels, _hf_pixel_inputs(ip, images, BATCH_SIZES),
                                      strict=True)):
        assert_same(got, hf, i)
    ip.do_convert_rgb = False  # now refused: the HF path
    assert tiler_for(ip) is None
    pixels, _ = pixel_inputs(processor, images, BATCH_SIZES)
    for got, hf in zip(pixels, _hf_pixel_inputs(ip, images, BATCH_SIZES), strict=True):
        assert torch.equal(got, hf)


def test_grid_is_row_major_and_padding_is_centred_black():
    """Spelled out on one image, so a failure says which step broke."""
    ip = LlavaNextImageProcessorPil(**TINY)
    tiler = AnyresTiler.from_processor(ip)
    image = scene(200, 40)  # best resolution 48x96: resized to 20x96, padded 14 above/below
    tiles = tiler(image)
    assert tiles.shape[0] == 3
    black = (0 - 0.5) / 0.5
    assert torch.all(tiles[1:, :, :14] == black) and torch.all(tiles[1:, :, 34:] == black)
    resized = np.asarray(image.resize((96, 20), Image.Resampling.BICUBIC), dtype=np.float64)
    left = (resized[:, :48] / 255 - 0.5) / 0.5
    assert np.allclose(tiles[1, :, 14:34].permute(1, 2, 0).numpy(), left, atol=1e-6)
    base = np.asarray(image.resize((48, 48), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.allclose(tiles[0].permute(1, 2, 0).numpy(), (base / 255 - 0.5) / 0.5, atol=1e-6)
