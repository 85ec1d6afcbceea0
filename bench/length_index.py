"""Benchmark: the length index (planning pass) of a mix output, computed in parallel.

    .venv/bin/python bench/length_index.py                       # 20k, 100k, 1M: ~7-9 min here
    .venv/bin/python bench/length_index.py --sizes 10000 40000   # quick: ~1 min
    .venv/bin/python bench/length_index.py --kind sft --sizes 20000 100000  # sft records

What it does, per size N (each in a fresh interpreter, so peak memory is per size):

1. Writes N synthetic caption records (`--kind sft`: a third each of qa, multiple choice
   with 4 options and conversations of 2-4 turns with the image, the kinds the sft mix
   trains; the chat template and tokenisation cost more per sample) as the mix writes its shards
   (`components.records.ShardWriter`, schema `components.mix.mix_schema()`, row groups of
   1,024 rows, shards of 50,000), each with a real embedded PNG (256 distinct images of
   24-160 px drawn once, reused: the header read costs the same) and a caption of 4-40
   words.
2. Builds the `tiny` profile's processor and `ChatFormat` (`build_tiny_model`, its own
   BPE tokenizer; nothing downloaded).
3. Times `components.train.length_index.load_or_compute` into an empty folder with a pool
   of `--workers` processes (default: this machine's cores): every record read, every
   image header read, every sample tokenised, the index written. Then times the reuse
   (what every other rank, restart and resume does: load the file).
4. Peak memory: `ru_maxrss` of the measuring process and of its (pool) children.

The per-sample cost per core (`ms_per_sample_per_core` = wall seconds x workers / N) is
what projects the paper's 5M samples onto one 16-core node: 5M x cost / 16 (the pool
splits row groups: 4,883 of them keep 16 workers busy). The machine is shared (2 cores,
other jobs running): the load average is recorded beside the timings. Sizes below 1M and
the linear fit over them are reported when 1M does not fit the time here.
Writes bench/results/length_index.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "length_index.json"
ISSUE_MS_PER_SAMPLE = 2.96  # the issue's single-threaded planning cost on the real mix
WORDS = ("um círculo vermelho azul verde amarelo sobre fundo branco com uma forma "
         "pequena grande no centro da imagem ao lado de outra figura clara escura").split()


def _sft_record(i: int, rng: random.Random, base: dict):
    """One sft record of kind qa, multiple_choice or conversation (by i % 3)."""
    from components.records import Record

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize()

    image = f"img/{i}.png"
    if i % 3 == 0:
        return Record(id=f"q{i}", kind="qa", image=image, question=words(6, 20) + "?",
                      answer=words(3, 30) + ".", **base)
    if i % 3 == 1:
        options = [words(1, 4) for _ in range(4)]
        return Record(id=f"m{i}", kind="multiple_choice", image=image,
                      question=words(6, 20) + "?", options=options,
                      answer=options[rng.randrange(4)], **base)
    turns = [{"role": "user", "content": "<image>\n" + words(6, 20) + "?"}]
    for k in range(rng.randint(2, 4)):
        if k:
            turns.append({"role": "user", "content": words(4, 16) + "?"})
        turns.append({"role": "assistant", "content": words(8, 60) + "."})
    return Record(id=f"v{i}", kind="conversation", image=image, conversations=turns, **base)


def write_mix(folder: Path, n: int, seed: int = 0, kind: str = "caption") -> int:
    """N records (captions, or `sft` kinds) with embedded PNGs in mix shards; returns the
    bytes written."""
    from PIL import Image, ImageDraw

    from components.mix import mix_schema
    from components.records import Record, ShardWriter

    rng = random.Random(seed)
    blobs = []
    for k in range(256):
        w, h = rng.randint(24, 160), rng.randint(24, 160)
        image = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(image).ellipse([w * 0.2, h * 0.2, w * 0.8, h * 0.8],
                                      fill=(k, 255 - k, (7 * k) % 256))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    writer = ShardWriter(folder, mix_schema())
    base = {"source": "native", "language": "pt-PT", "task_family": "cap"}
    for i in range(n):
        if kind == "sft":
            rec = _sft_record(i, rng, base)
            writer.add({**rec.model_dump(), "image_bytes": [rng.choice(blobs)]})
            continue
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize()
        rec = Record(id=f"c{i}", kind="caption", image=f"img/{i}.png", text=text + ".", **base)
        writer.add({**rec.model_dump(), "image_bytes": [rng.choice(blobs)]})
    writer.close()
    return sum(p.stat().st_size for p in folder.glob("*.parquet"))


def one(n: int, workers: int, root: Path, kind: str = "caption") -> dict:
    """Measure size `n` in this process (called in a fresh interpreter per size)."""
    import logging

    logging.disable(logging.WARNING)
    from components.model.build import build_tiny_model
    from components.records import shard_paths
    from components.settings import load_settings
    from components.train import length_index
    from components.train.chat import Budget, ChatFormat

    folder = root / "shards"
    started = time.perf_counter()
    size = write_mix(folder, n, kind=kind)
    write_s = time.perf_counter() - started
    # sft conversations run to ~600 tokens: a 4k budget keeps them (the tiny 256 skips them)
    settings = load_settings("tiny", overrides={"model": {
        "max_length": 4096, "text": {"max_position_embeddings": 4096}}} if kind == "sft"
        else None)
    _, processor = build_tiny_model(settings, WORDS * 4)
    chat = ChatFormat(processor)
    shards = [str(p) for p in shard_paths(folder)]
    budget = Budget(settings.model.max_length, settings.engine.max_tiles)
    index_dir = root / "index"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    index = length_index.load_or_compute(shards, root, chat, budget, False, index_dir,
                                         workers=workers)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    assert index.computed and len(index.entries) + len(index.skipped) >= n
    started = time.perf_counter()
    again = length_index.load_or_compute(shards, root, chat, budget, False, index_dir,
                                         workers=workers)
    reuse_s = time.perf_counter() - started
    assert not again.computed
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stored = next(index_dir.glob("*.npz")).stat().st_size
    return {
        "samples": n, "kind": kind, "workers": workers, "shard_bytes": size,
        "row_groups": int(len({(int(s), int(g)) for s, g in index.entries[:, :2]})),
        "skipped": len(index.skipped), "write_shards_seconds": round(write_s, 1),
        "index_seconds": round(seconds, 2),
        "ms_per_sample_wall": round(1000 * seconds / n, 4),
        "ms_per_sample_per_core": round(1000 * seconds * workers / n, 4),
        "reuse_load_seconds": round(reuse_s, 3), "index_file_bytes": stored,
        "peak_rss_main_mb": round(self_peak, 1), "peak_rss_worker_mb": round(child_peak, 1),
        "loadavg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["caption", "sft"], default="caption",
                        help="caption records (align) or qa / multiple choice / conversation "
                        "records (sft)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/length_index.json (sft: length_index_sft.json)")
    args = parser.parse_args()
    if args.out is None:
        args.out = OUT if args.kind == "caption" else OUT.with_name("length_index_sft.json")
    if args.one is not None:
        print(json.dumps(one(args.one, args.workers, args.root, args.kind)))
        return
    runs = []
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="length-index-"))
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(n), "--workers", str(args.workers),
                 "--root", str(root), "--kind", args.kind],
                capture_output=True, text=True, check=True,
                cwd=Path(__file__).resolve().parent.parent,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        finally:
            shutil.rmtree(root, ignore_errors=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    # linear fit seconds = a + b x N over the sizes: b is the marginal cost per sample
    xs = [r["samples"] for r in runs]
    ys = [r["index_seconds"] for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        max(sum((x - mx) ** 2 for x in xs), 1e-9)
    intercept = my - slope * mx
    # the projection uses the largest run's whole cost per sample (fixed costs included:
    # conservative), the fit shows the cost is linear in N
    largest = max(runs, key=lambda r: r["samples"])
    per_core_ms = largest["ms_per_sample_per_core"]
    paper_minutes = 5_000_000 * per_core_ms / 1000 / 16 / 60
    result = {
        "what": f"length index (planning pass) of {args.kind} shards with embedded PNGs: "
                "read every record and image header, tokenise, write the index; fork pool",
        "machine": f"{len(os.sched_getaffinity(0))} cores (shared with other jobs)",
        "runs": runs,
        "fit": {"seconds_per_sample_marginal": slope, "intercept_seconds": intercept,
                "marginal_ms_per_sample_per_core": round(1000 * slope * args.workers, 4),
                "projected_1M_here_minutes": round((intercept + slope * 1_000_000) / 60, 1)},
        "ms_per_sample_per_core_used": per_core_ms,
        "projection_5M_on_16_cores_minutes": round(paper_minutes, 1),
        "target_minutes": 10,
        "target_met": paper_minutes <= 10,
        # these captions are the cheapest records; the issue measured 2.96 ms/sample on one
        # thread for the real mix (all record kinds): the projection at that cost
        "projection_5M_on_16_cores_at_issue_cost_minutes": round(
            5_000_000 * ISSUE_MS_PER_SAMPLE / 1000 / 16 / 60, 1),
        "notes": [
            "1M was not run here: it would take ~projected_1M_here_minutes on these 2 busy "
            "cores; the sizes run show the cost is linear in N (fit above)" if
            max(xs) < 1_000_000 else "1M run directly",
            "projection assumes the pool scales over row groups (5M samples = 4,883 groups "
            "for 16 workers) and that reading the shards keeps up: paper shards carry real "
            "images (~150 MB per row group, ~750 GB for 5M), which at 2-3 GB/s local NVMe "
            "is another 4-6 min of I/O spread over the same pass",
            "the index is computed once per mix output and key; every rank, restart and "
            "resume loads it (reuse_load_seconds)",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
