"""Benchmark: `validate` throughput (records/s) and peak memory at N, 10N and 100N records.

    python bench/validate_throughput.py                 # N = 1000: 1k, 10k, 100k records
    python bench/validate_throughput.py --n 500 --scales 1 10   # quicker
    python bench/validate_throughput.py --profile        # + where the time goes (cProfile, 10N)

Data (generated once under `--work`, default a temp folder): `--images` (1,000) distinct
256x256 JPEG images (smooth random colour fields plus noise, ~15 KB each), and JSONL files of
N x scale pt-PT records (captions and multiple-choice QA, distinct ids and texts) that point
at the images cyclically. Chunks hold `chunk_size` (256) consecutive records, fewer than the
image cycle, so no image repeats inside a chunk: every record decodes its image (Pillow
verify + full load), hashes it (pHash + pixel sha256), runs the language check and is
embedded in the validated shards. 1% of the records are `split: test` with images of their
own, so the eval-contamination pass and the pHash comparison run too.

Each size runs `components.validate.validate_stream` (the stage body: streaming, 2 worker
processes, dedup, parquet shards, JSONL views, quarantine, GX suites + Data Docs) in a fresh
subprocess, so the peak RSS figures are per size: `peak_rss_mb_self` (the main process) and
`peak_rss_mb_workers` (the largest worker) from `resource.getrusage`, and the CPU seconds
of all processes, so that a run on a machine shared with other jobs still tells what two
free cores would do (`records_per_s_projected_2_free_cores`). Writes
`bench/results/validate_throughput.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIDE = 256
WORDS = ("azul", "verde", "vermelho", "amarelo", "rua", "praia", "casa", "barco", "farol",
         "janela", "ponte", "mercado", "jardim", "torre", "comboio", "castelo")


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img-{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((SIDE, SIDE), Image.Resampling.BICUBIC),
                         dtype=np.int16)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(path, quality=88)
    return paths


def make_records(path: Path, n: int, images: list[Path], eval_images: list[Path]) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for i in range(n):
            w = [WORDS[(i >> k) % len(WORDS)] for k in (0, 4, 8, 12)]
            common = {"source": "bench", "language": "pt-PT", "split": "train",
                      "task_family": "general_vqa"}
            if i % 100 == 99:  # 1% held out, with images of their own
                image = eval_images[(i // 100) % len(eval_images)]
                common["split"] = "test"
            else:
                image = images[i % len(images)]
            if i % 2:
                row = {"id": f"r{i}", "kind": "caption", "image": str(image), **common,
                       "text": f"Fotografia número {i} de uma {w[0]} {w[1]} perto da {w[2]} "
                               f"e do {w[3]}, tirada em Lisboa."}
            else:
                opts = [f"{w[0]} {i}", f"{w[1]} {i}", f"{w[2]} {i}"]
                row = {"id": f"r{i}", "kind": "qa", "image": str(image), **common,
                       "question": f"Qual é o objeto principal da imagem {i}?",
                       "options": opts, "answer": opts[i % 3]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.rename(path)


def _reap_forkserver() -> None:
    """Stop multiprocessing's fork server (the stage starts its workers from one when a
    thread is alive, e.g. the Great Expectations set-up thread) and wait for it, so that
    `RUSAGE_CHILDREN` includes the workers it forked and reaped."""
    import multiprocessing.forkserver as forkserver

    server = forkserver._forkserver  # private, but the only handle on it (CPython 3.11)
    if getattr(server, "_forkserver_pid", None):
        server._stop()


def run_one(records: Path, out: Path, profile: bool) -> dict:
    """One size in this process: the stage body, timed; peak RSS of self and workers."""
    from components.settings import load_settings
    from components.validate import validate_stream

    settings = load_settings("ci", overrides={
        "data_dir": str(records.parent), "ingest": {"inputs": [str(records)]}})
    start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        settings = load_settings("ci", overrides={
            "data_dir": str(records.parent), "ingest": {"inputs": [str(records)]},
            "validate": {"workers": 0}})
        prof.enable()
        tally, sinks, _ = validate_stream(settings, out, with_gx=False)
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime")
        top = [{"function": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "tottime_s": round(v[2], 3),
                "calls": v[1]} for k, v in sorted(stats.stats.items(),
                                                  key=lambda kv: -kv[1][2])[:15]]
        elapsed = time.perf_counter() - start
        return {"records": tally.total, "seconds_single_process": round(elapsed, 2),
                "records_per_s_single_process": round(tally.total / elapsed, 1),
                "top_functions": top}
    tally, sinks, _ = validate_stream(settings, out, with_gx=True)
    streamed = time.perf_counter()
    result = sinks.gx.finish()
    elapsed = time.perf_counter() - start
    _reap_forkserver()  # its workers' CPU and peak RSS count as children once it is reaped
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    self_kb, child_kb = me.ru_maxrss, kids.ru_maxrss
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    shards = sorted((out / "validated").glob("*.parquet"))
    return {
        "records": tally.total, "kept": tally.kept, "quarantined": tally.quarantined,
        "by_reason": dict(tally.by_reason), "images_decoded": sinks.decoded,
        "seconds": round(elapsed, 2), "records_per_s": round(tally.total / elapsed, 1),
        "seconds_gx_data_docs": round(elapsed - (streamed - start), 2),
        "gx_success": result["success"],
        "cpu_seconds": round(cpu, 1),
        # what 2 uncontended cores would give if the CPU time spreads evenly over both
        "records_per_s_projected_2_free_cores": round(2 * tally.total / cpu, 1),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "peak_rss_mb_self": round(self_kb / 1024, 1),
        "peak_rss_mb_workers": round(child_kb / 1024, 1),
        "shards": len(shards),
        "shard_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                    "validate_throughput.json")
    ap.add_argument("--profile", action="store_true", help="also profile N in one process")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--one-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if args.one:
        print(json.dumps(run_one(args.one, args.one_out, args.profile)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="validate-bench-"))
    images = make_images(work / "images", args.images)
    eval_images = make_images(work / "eval_images", 50, seed=1)
    runs = []
    for scale in args.scales:
        n = args.n * scale
        records = work / f"records-{n}.jsonl"
        make_records(records, n, images, eval_images)
        out = work / f"out-{n}"
        proc = subprocess.run([sys.executable, __file__, "--one", str(records), "--one-out",
                               str(out)], capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"size {n} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["scale"] = scale
        runs.append(res)
        print(json.dumps(res), flush=True)
        subprocess.run(["rm", "-rf", str(out)], check=False)
    profile = None
    if args.profile:  # one process (workers=0), no GX: the per-record cost, by function
        records = work / f"records-{args.n * min(args.scales[1:] or [1])}.jsonl"
        proc = subprocess.run([sys.executable, __file__, "--one", str(records), "--one-out",
                               str(work / "out-profile"), "--profile"],
                              capture_output=True, text=True, check=True)
        profile = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {
        "benchmark": "validate_throughput",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/validate_throughput.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "setup": {"image_side_px": SIDE, "distinct_images": args.images,
                  "image_format": "JPEG q88", "workers": 2, "chunk_size": 256,
                  "target_records_per_s": 2000},
        "runs": runs,
        "profile_single_process": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
