"""Benchmark: anyres preprocessing, `components.train.tiles.AnyresTiler` vs the HF processor.

    python bench/preprocess.py                       # 48 images, 3 repeats, both grids
    python bench/preprocess.py --n 12 --repeats 2    # quicker

The same PIL images (`realistic_images`: photos 640x480 / 1024x768 / 800x1200, document
pages 850x1100 to 1700x2200, small icons, with smooth colour fields, noise, sharp edges and
text-like strokes) go one at a time through `AnyresTiler(image)` and through
`image_processor(images=[image], return_tensors="pt")`, for the paper's grid (384 px tiles,
6 pinpoints, `make_processor` on the `paper` profile) and the tiny grid (48 px). One
warm-up pass over all images checks equality (`max_abs_diff` over every tile of every
image); then `--repeats` timed passes (`time.perf_counter`), ours and HF interleaved per
repeat so both see the same machine load; images/s is from the median repeat, and from CPU
time (`time.process_time`, both run single-threaded) for a busy machine. Both pipelines
run the same two PIL resizes per image (best-fit and base tile: that is what makes them
equal), so `speedup_ceiling_same_resizes` (HF time / time of those resizes alone) bounds
what any exact reimplementation can reach on the same images. Writes
`bench/results/preprocess.json`. Target (issue #9): ours >= 2x the HF processor's images/s
on the paper grid at max |diff| <= 1e-6.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from transformers.image_processing_utils import select_best_resolution

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.model.build import make_processor  # noqa: E402
from components.model.tokenizer import train_tokenizer  # noqa: E402
from components.settings import load_settings  # noqa: E402
from components.train.tiles import AnyresTiler, fit_size, to_rgb  # noqa: E402

PHOTO_SIZES = [(640, 480), (1024, 768), (800, 1200)]  # (width, height)
PAGE_SIZES = [(850, 1100), (1275, 1650), (1700, 2200)]  # letter pages at 100-200 dpi


def _colour_field(rng: np.random.Generator, width: int, height: int, noise: float) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    freq = rng.uniform(1.5, 4, 2)
    field = np.stack([128 + 90 * np.sin(x * freq[0] / width + p) * np.cos(y * freq[1] / height - p)
                      for p in phase], axis=-1)
    return field + rng.normal(0, noise, field.shape).astype(np.float32)


def _strokes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int],
             line: int, ink: tuple[int, int, int]) -> None:
    """Rows of short strokes, word-like gaps: what text looks like to a resampler."""
    x0, y0, x1, y1 = box
    for row in range(y0, y1 - line, int(line * 1.6)):
        col = x0
        while col < x1 - line:
            word = int(rng.integers(2, 9)) * max(2, line // 2)
            for c in range(col, min(col + word, x1), max(2, line // 2)):
                draw.line([c, row + int(rng.integers(0, line // 3 + 1)), c + line // 3,
                           row + line], fill=ink, width=max(1, line // 6))
            col += word + line


def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A photo-like image: smooth colours, sensor noise, sharp-edged objects, a caption."""
    image = Image.fromarray(np.clip(_colour_field(rng, width, height, 12), 0, 255)
                            .astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10,
                                                                            height // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h],
                                                                 fill=fill)
    caption = (width // 20, height * 7 // 8, width * 3 // 4, height)
    _strokes(draw, rng, caption, max(6, height // 60), (250, 250, 250))
    return image


def document(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A scanned page: off-white paper with noise, text lines, a figure, a rule."""
    paper = 235 + _colour_field(rng, width, height, 4) * 0.08
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    margin, line = width // 10, max(8, height // 90)
    _strokes(draw, rng, (margin, margin, width - margin, height // 2), line, (20, 20, 30))
    fig = (margin, height // 2 + line, width // 2, height * 3 // 4)
    draw.rectangle(fig, outline=(40, 40, 40), width=2)
    for i in range(5):
        bar = fig[0] + (i + 1) * (fig[2] - fig[0]) // 7
        draw.rectangle([bar, fig[3] - int(rng.integers(10, fig[3] - fig[1])), bar + line * 2,
                        fig[3]], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    draw.line([margin, height * 3 // 4 + line, width - margin, height * 3 // 4 + line],
              fill=(0, 0, 0), width=2)
    _strokes(draw, rng, (margin, height * 3 // 4 + 2 * line, width - margin, height - margin),
             line, (20, 20, 30))
    return image


def icon(side: int, rng: np.random.Generator) -> Image.Image:
    """A small icon: flat background, a bold shape, a stroke, a little noise."""
    bg = np.full((side, side, 3), rng.integers(0, 256, 3), dtype=np.float32)
    bg += rng.normal(0, 3, bg.shape).astype(np.float32)
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([side // 6, side // 6, side * 5 // 6, side * 5 // 6],
                 fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.line([side // 4, side * 3 // 4, side * 3 // 4, side // 4], fill=(0, 0, 0),
              width=max(1, side // 10))
    return image


def realistic_images(n: int, seed: int = 0) -> list[Image.Image]:
    """`n` RGB images of a training mix: 55% photos (`PHOTO_SIZES`), 20% document pages
    (`PAGE_SIZES`), 25% icons (16-128 px, some not square); deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.55:
            w, h = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
            out.append(photo(w, h, rng))
        elif kind < 0.75:
            w, h = PAGE_SIZES[int(rng.integers(len(PAGE_SIZES)))]
            out.append(document(w, h, rng))
        else:
            side = int(rng.integers(16, 129))
            image = icon(side, rng)
            if rng.random() < 0.3:
                image = image.resize((side, max(1, side // 2)), Image.Resampling.BICUBIC)
            out.append(image)
    return out


def _processor_for(profile: str):
    tokenizer = train_tokenizer(["uma imagem", "um documento"], 300)  # unused by the images
    return make_processor(tokenizer, load_settings(profile)).image_processor


def paper_image_processor():
    """The paper profile's image processor (384 px tiles, 6 pinpoints, SigLIP mean/std)."""
    return _processor_for("paper")


def tiny_image_processor():
    """The tiny profile's image processor (48 px tiles)."""
    return _processor_for("tiny")


def measure_preprocess(image_processor, images: list[Image.Image],
                       repeats: int = 3) -> dict[str, Any]:
    """Ours (`AnyresTiler.from_processor(image_processor)`) vs `image_processor` on the same
    images, one image per call. Returns `ours_images_per_s`, `hf_images_per_s` (median
    repeat, wall), `*_images_per_cpu_s`, `speedup`, `max_abs_diff` (over all tiles of all
    images), `bitwise_equal`, `images`, `tiles`, `repeats`, the per-repeat seconds, and
    `speedup_ceiling_same_resizes`: HF time over the time of the two PIL resizes alone
    (best-fit and base tile), which both pipelines run identically."""
    tiler = AnyresTiler.from_processor(image_processor)

    def hf(image):
        return image_processor(images=[image], return_tensors="pt")["pixel_values"][0]

    def resizes_only(image):  # the two PIL resizes both pipelines make, nothing else
        rgb = to_rgb(image)
        hw = (rgb.height, rgb.width)
        nh, nw = fit_size(hw, tuple(select_best_resolution(hw, tiler.pinpoints)))
        rgb.resize((nw, nh), resample=tiler.resample)
        rgb.resize(tiler.base_hw[::-1], resample=tiler.resample)

    max_diff, equal, tiles = 0.0, True, 0
    for image in images:  # warm-up, and the equality check
        ours, ref = tiler(image), hf(image)
        if ours.shape != ref.shape:
            raise AssertionError(f"{image.size}: ours {tuple(ours.shape)} vs HF "
                                 f"{tuple(ref.shape)}")
        max_diff = max(max_diff, float((ours - ref).abs().max()))
        equal = equal and bool((ours == ref).all())
        tiles += ours.shape[0]
    wall: dict[str, list[float]] = {"ours": [], "hf": [], "resize": []}
    cpu: dict[str, list[float]] = {"ours": [], "hf": [], "resize": []}
    for _ in range(repeats):
        for name, fn in (("ours", tiler), ("hf", hf), ("resize", resizes_only)):
            c0, t0 = time.process_time(), time.perf_counter()
            for image in images:
                fn(image)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    n = len(images)
    rate = {k: n / statistics.median(v) for k, v in wall.items()}
    cpu_rate = {k: n / statistics.median(v) for k, v in cpu.items()}
    return {
        "images": n, "tiles": tiles, "repeats": repeats,
        "ours_images_per_s": round(rate["ours"], 2), "hf_images_per_s": round(rate["hf"], 2),
        "speedup": round(rate["ours"] / rate["hf"], 3),
        "ours_images_per_cpu_s": round(cpu_rate["ours"], 2),
        "hf_images_per_cpu_s": round(cpu_rate["hf"], 2),
        "speedup_cpu": round(cpu_rate["ours"] / cpu_rate["hf"], 3),
        # both pipelines run the same PIL resizes: HF time / resize time bounds any speedup
        "pil_resize_share_of_ours": round(statistics.median(wall["resize"])
                                          / statistics.median(wall["ours"]), 3),
        "speedup_ceiling_same_resizes": round(statistics.median(wall["hf"])
                                              / statistics.median(wall["resize"]), 3),
        "max_abs_diff": max_diff, "bitwise_equal": equal,
        "seconds": {k: [round(s, 4) for s in v] for k, v in wall.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="images (default 48)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "preprocess.json")
    args = ap.parse_args()

    images = realistic_images(args.n, args.seed)
    grids = {"paper": ("384 px tiles, 6 pinpoints up to 1152", paper_image_processor()),
             "tiny": ("48 px tiles, 4 pinpoints up to 96", tiny_image_processor())}
    runs = {}
    print(f"{'grid':<7}{'images':>7}{'tiles':>7}{'ours img/s':>12}{'HF img/s':>10}"
          f"{'speedup':>9}{'(cpu)':>7}{'ceiling':>9}{'max|diff|':>11}")
    for name, (what, ip) in grids.items():
        r = {"grid": what, **measure_preprocess(ip, images, args.repeats)}
        runs[name] = r
        print(f"{name:<7}{r['images']:>7}{r['tiles']:>7}{r['ours_images_per_s']:>12.1f}"
              f"{r['hf_images_per_s']:>10.1f}{r['speedup']:>8.2f}x{r['speedup_cpu']:>6.2f}x"
              f"{r['speedup_ceiling_same_resizes']:>8.2f}x"
              f"{r['max_abs_diff']:>11.2g}", flush=True)
    paper = runs["paper"]
    result = {
        "benchmark": "preprocess",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/preprocess.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg": os.getloadavg()},
        "setup": {"seed": args.seed, "mix": "55% photos, 20% document pages, 25% icons",
                  "photo_sizes": PHOTO_SIZES, "page_sizes": PAGE_SIZES, "icon_px": [16, 128]},
        "runs": runs,
        "targets": {"paper_speedup>=2x": paper["speedup"] >= 2.0,
                    "max_abs_diff<=1e-6": max(r["max_abs_diff"] for r in runs.values()) <= 1e-6},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
