"""Benchmark: training throughput packed vs padded, and image preprocessing ours vs HF.

    python bench/train_throughput.py            # ~5 min on 2 cores
    python bench/train_throughput.py --steps 10 --samples 240   # quicker

Writes `bench/results/train_throughput.json`:

    {"packed":   {"real_token_fraction", "tokens_per_s", ...},
     "unpacked": {"real_token_fraction", "tokens_per_s", ...},
     "preprocess": {"ours_images_per_s", "hf_images_per_s", "max_abs_diff", ...}, ...}

Training: the tiny profile's model (its sizes; `model.max_length` 1024 and pinpoints up
to 3x3 tiles so documents are long) on a generated mix with the length spread of a real
sft mix: captions of small photos, single-image QA, text-only questions (a dummy image
each) and one- or two-page multi-tile documents (about 40 to 800 tokens, 20x). The same
samples, model initialisation and engine (`components.train.engine.train_stage`: the
transformers Trainer) run padded (`SampleCollator`, a global batch of samples, sdpa),
packed as the stage packs by default (`PackedDataset` + `PackedCollator`, rows of <=
max_length tokens; on a CPU the `sdpa_varlen` attention: flattened rows, attention per
sample) and packed with sdpa's block-diagonal mask (`packed_block_mask`: padded rows, the
masked blocks still computed), stopped after `--steps` optimizer steps each.
`tokens_per_s` = real (non-pad, non-dummy) tokens per second over the steps after
`--warmup` (the engine's own per-step metric);
`real_token_fraction` = real tokens / positions computed over EVERY batch of one epoch
(the collated batches, exact). Targets (issue #9): packed >= 95% real tokens, packed
tokens/s >= 2x padded, preprocessing >= 2x the HF processor at max |diff| <= 1e-6.

Preprocessing: `bench/preprocess.py` (`measure_preprocess`) on realistic images with the
paper's grid (384 px tiles, 6 pinpoints) and on the tiny grid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MAX_LENGTH = 1024
PINPOINTS = [[48, 48], [48, 96], [96, 48], [96, 96], [96, 144], [144, 96], [144, 144]]
# share of each sample kind in the generated mix
KINDS = {"caption": 0.30, "qa": 0.35, "text": 0.15, "document": 0.20}


def _photo(rng: random.Random, w: int, h: int):
    """A smooth gradient with noise and a few shapes (not a flat colour)."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x / max(w - 1, 1)) * 255, (y / max(h - 1, 1)) * 255,
                     np.full((h, w), rng.randint(0, 255))], -1)
    noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.randint(0, w - 2), rng.randint(0, h - 2)
        draw.ellipse([x0, y0, min(w - 1, x0 + w // 3), min(h - 1, y0 + h // 3)],
                     fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return image


def _page(rng: random.Random, w: int, h: int):
    """A white page with lines of dark 'text' strokes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (w, h), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    for top in range(6, h - 6, 9):
        x = 6
        while x < w - 12:
            word = rng.randint(4, 16)
            draw.rectangle([x, top, min(w - 6, x + word), top + 4], fill=(30, 30, 30))
            x += word + 4
    return image


WORDS = ("a imagem mostra uma paisagem com casas antigas junto ao rio e pessoas que "
         "passeiam ao fim da tarde enquanto o sol se põe sobre a cidade de Lisboa").split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_mix(root: Path, n: int, seed: int) -> tuple[Path, Path, list[str]]:
    """(data_dir, shards_dir, texts): `n` sft records of the KINDS mix, images embedded."""
    from components.mix import mix_schema
    from components.records import Record, ShardWriter

    rng = random.Random(seed)
    data = root / "data"
    (data / "img").mkdir(parents=True)
    base = {"source": "native", "language": "pt-PT", "task_family": "bench"}
    records, texts = [], []
    kinds = list(KINDS)
    for i in range(n):
        kind = rng.choices(kinds, weights=list(KINDS.values()))[0]
        images = []
        if kind == "caption":
            images.append(_photo(rng, rng.randint(40, 64), rng.randint(40, 64)))
            rec = dict(kind="caption", text=_text(rng, 8, 20))
        elif kind == "qa":
            images.append(_photo(rng, rng.choice([48, 96]), rng.choice([48, 96])))
            rec = dict(kind="qa", question=_text(rng, 6, 14) + "?", answer=_text(rng, 2, 12))
        elif kind == "text":
            rec = dict(kind="qa", question=_text(rng, 6, 20) + "?", answer=_text(rng, 2, 10))
        else:
            pages = rng.choice([1, 1, 2])
            images += [_page(rng, 144, 144) for _ in range(pages)]
            rec = dict(kind="qa", question=_text(rng, 10, 24) + "?", answer=_text(rng, 10, 40))
        paths = []
        for k, image in enumerate(images):
            rel = f"img/{i}_{k}.png"
            image.save(data / rel)
            paths.append(rel)
        records.append(Record(id=f"b{i}", images=paths, **base, **rec))
        texts += [v for v in rec.values() if isinstance(v, str)]
    shards = root / "shards"
    writer = ShardWriter(shards, mix_schema(), group_rows=max(64, n // 4))
    for r in records:
        writer.add({**r.model_dump(),
                    "image_bytes": [(data / p).read_bytes() for p in r.image_list()] or None})
    writer.close()
    return data, shards, texts


class StopAfter:
    """A TrainerCallback that stops training after `steps` optimizer steps."""

    def __new__(cls, steps: int):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= steps:
                    control.should_training_stop = True

        return _Stop()


def epoch_real_fraction(dataset, collator, batch_size: int) -> dict[str, float]:
    """Real tokens / positions over every batch of one epoch in the sampler's order."""
    from components.train.engine import real_tokens

    order = list(dataset.sampler(0))
    real = positions = 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = collator([dataset[i] for i in order[start: start + batch_size]])
        r, p = real_tokens(batch)
        real, positions = real + r, positions + p
    return {"real_token_fraction": real / positions, "epoch_real_tokens": real,
            "epoch_positions": positions}


def train_mode(settings, data: Path, shards: Path, texts: list[str], packing: bool,
               batch: int, steps: int, warmup: int, out: Path,
               attention: str = "auto") -> dict:
    """One training run of `steps` optimizer steps as the sft stage runs it (the same
    `training_attention` / dataset / collator choices), and its throughput figures."""
    import torch

    from components.model.build import build_tiny_model
    from components.model.freeze import set_trainable
    from components.train.chat import Budget, ChatFormat
    from components.train.dataset import SampleCollator, ShardDataset
    from components.train.engine import LMObjective, train_stage
    from components.train.packing import PackedCollator, PackedDataset, training_attention

    settings = settings.model_copy(update={"sft": settings.sft.model_copy(
        update={"global_batch_size": batch})})
    model, processor = build_tiny_model(settings, texts)
    model = model.float()
    set_trainable(model, list(settings.sft.trainable))
    chat = ChatFormat(processor)
    base = ShardDataset(shards, data, processor, chat, Budget(settings.model.max_length))
    pad = processor.tokenizer.pad_token_id
    with training_attention(model, attention, packing) as used:
        if packing:
            dataset = PackedDataset(base, settings.model.max_length, multiple=batch)
            collator = PackedCollator.for_model(model, chat, pad)
        else:
            dataset, collator = base, SampleCollator(pad)
        fraction = epoch_real_fraction(dataset, collator, batch)
        torch.manual_seed(settings.seed)
        started = time.perf_counter()
        result = train_stage(settings, "sft", out, model, dataset, collator, LMObjective(),
                             config_digest="bench", log_metrics=lambda m, s: None,
                             progress=False, callbacks=[StopAfter(steps)])
        wall = time.perf_counter() - started
    logs = result.step_logs[warmup:]
    seconds = sum(e["step_seconds"] for e in logs)
    tokens = sum(e["tokens_per_s"] * e["step_seconds"] for e in logs)
    return {
        **fraction,
        "tokens_per_s": tokens / seconds,
        "attention": used,
        "layout": getattr(collator, "layout", "padded"),
        "samples": len(base),
        "rows": len(dataset),
        "samples_per_step": round(len(base) / len(dataset) * batch, 2),
        "global_batch": batch,
        "batch_unit": "rows" if packing else "samples",
        "steps_timed": len(logs),
        "step_seconds_mean": seconds / len(logs),
        "mean_padding_ratio_logged": sum(e["padding_ratio"] for e in logs) / len(logs),
        "loss_last": logs[-1]["loss"],
        "wall_seconds": round(wall, 1),
        "length_tokens": {"min": int(base.lengths.min()), "mean": float(base.lengths.mean()),
                          "max": int(base.lengths.max())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=480, help="sft samples generated")
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per mode")
    ap.add_argument("--warmup", type=int, default=3, help="steps not timed")
    ap.add_argument("--batch", type=int, default=8,
                    help="padded global batch (samples); packed uses half as many rows")
    ap.add_argument("--preprocess-images", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results"
                    / "train_throughput.json")
    args = ap.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    from components.accel import configure_threads
    from components.settings import load_settings

    threads = configure_threads()
    settings = load_settings("tiny", overrides={
        "model": {"max_length": MAX_LENGTH, "image_grid_pinpoints": PINPOINTS,
                  "text": {"max_position_embeddings": MAX_LENGTH}},
        "train": {"logging_steps": 1, "save_steps": 100000, "dataloader_workers": 0},
        "sft": {"epochs": 50, "warmup_ratio": 0.0}})
    result: dict = {
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": threads,
                    "platform": platform.platform()},
        "setup": {"profile": "tiny", "max_length": MAX_LENGTH, "pinpoints": PINPOINTS,
                  "kinds": KINDS, "attention": "sdpa", "precision": "fp32"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, shards, texts = make_mix(root, args.samples, args.seed)
        rows = max(1, args.batch // 2)
        for name, packing, batch, attention in (
                ("unpacked", False, args.batch, "auto"),
                ("packed", True, rows, "auto"),  # the default: sdpa_varlen on a CPU
                ("packed_block_mask", True, rows, "sdpa")):
            out = root / name
            out.mkdir()
            result[name] = train_mode(settings, data, shards, texts, packing, batch,
                                      args.steps, args.warmup, out, attention)
            print(name, json.dumps(result[name], indent=1), flush=True)
    for name in ("packed", "packed_block_mask"):
        result[f"{name}_vs_unpacked_tokens_per_s"] = \
            result[name]["tokens_per_s"] / result["unpacked"]["tokens_per_s"]

    from bench.preprocess import measure_preprocess, paper_image_processor, realistic_images

    images = realistic_images(args.preprocess_images, args.seed)
    result["preprocess"] = {**measure_preprocess(paper_image_processor(), images),
                            "grid": "paper: 384 px tiles, 6 pinpoints"}
    result["preprocess"]["speedup"] = (result["preprocess"]["ours_images_per_s"]
                                       / result["preprocess"]["hf_images_per_s"])
    result["targets"] = {
        "packed_real_token_fraction>=0.95": result["packed"]["real_token_fraction"] >= 0.95,
        "packed_tokens_per_s>=2x": result["packed_vs_unpacked_tokens_per_s"] >= 2.0,
        "packed_block_mask_real_token_fraction>=0.95":
            result["packed_block_mask"]["real_token_fraction"] >= 0.95,
        "preprocess>=2x_hf": result["preprocess"]["speedup"] >= 2.0,
        "preprocess_max_abs_diff<=1e-6": result["preprocess"]["max_abs_diff"] <= 1e-6,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items()
                      if k.endswith("_tokens_per_s") or k == "targets"}, indent=2))


if __name__ == "__main__":
    main()
