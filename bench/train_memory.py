"""Benchmark: peak memory of a training stage at 1x and 10x the data (streaming shards).

    .venv/bin/python bench/train_memory.py              # 1x and 10x, ~5-8 min on 2 cores
    .venv/bin/python bench/train_memory.py --scales 1 10 --workers 2 --poll 0.25

What it does:

1. Builds a real 1x run directory from the embedded data of the `tiny` profile, in this
   process, through `components.stages.run_stage`: validate, translate, mix, then align
   (epochs 1: the sft stage starts from the align model, as in a retrain).
2. Makes each larger scale by copying that run directory and rewriting its sft shards
   (`<run>/mix/shards/sft/part-*.parquet`, schema `components.mix.mix_schema()`, written
   with `components.records.ShardWriter`, row groups of 1,024 as the mix writes them):
   the whole sft mix N times, copy k of a row with id `<id>#<k>` and every embedded image
   re-encoded (same format, same size) with one pixel changed, so every image of the Nx
   data is distinct bytes (checked by sha256: nothing can be shared or deduplicated).
   The mix and align manifests are copied (the sft stage only checks that they exist).
3. Runs the REAL sft stage (`run_stage("sft", ...)`: planning pass over the shards, the
   transformers Trainer, save) in a fresh subprocess per scale, so no memory is shared
   between scales: the `tiny` model, `sft.epochs: 1` (so 10x the data is 10x the steps:
   every sample is read, decoded and tiled once), `train.dataloader_workers: 2` (images
   decoded and tiled in the DataLoader workers) and `train.save_steps` above the step
   count (no mid-run checkpoints at either scale, so both scales do the same kind of work).
4. Memory: this process polls the stage's process tree with psutil every `--poll` seconds:
   RSS of the main (training) process; RSS, USS (pages only that process holds) and PSS
   of every DataLoader worker; and the PSS of the whole tree (main + workers, shared
   pages counted once). The stage process also reports its own `ru_maxrss` (the kernel's
   exact peak, which polling can miss) for itself and for its reaped children. A forked
   worker's RSS counts the copy-on-write pages it shares with the main process (torch,
   the model), so its USS is the memory the worker itself adds.
5. Contrast: what the pre-streaming engine would hold, every sample's decoded tiles in
   RAM, measured by one pass over the dataset (`sum(pixel_values.numel() * 4)`, float32)
   at each scale: `in_memory_tiles_mb`.

Writes `bench/results/train_memory.json` (and prints it). Target (issue: streaming data):
peak RSS flat as data grows, `ratios.peak_rss_main` < 1.3 while the data is 10x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MB = 1 << 20
TARGET_RATIO = 1.3


def _settings(run_dir: Path | None = None, **sections: Any):
    from components.settings import load_settings

    over: dict[str, Any] = {"data_dir": str(REPO / "data")}
    over.update(sections)
    return load_settings("tiny", params_path=REPO / "params.yaml", overrides=over)


# ----------------------------------------------------------------------------- data


def build_base_run(run: Path) -> dict[str, float]:
    """validate, translate, mix and align (epochs 1) of the `tiny` profile into `run`."""
    from components.stages import run_stage

    s = _settings(align={"epochs": 1})
    seconds = {}
    for stage in ("validate", "translate", "mix", "align"):
        t0 = time.perf_counter()
        run_stage(stage, s, run, progress=False)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        print(f"[prepare] {stage}: {seconds[stage]} s", file=sys.stderr, flush=True)
    return seconds


def touch_pixel(blob: bytes, k: int) -> bytes:
    """`blob` re-encoded in its own format with pixel k (row-major, wrapping) nudged."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        fmt = img.format or "PNG"
        image = img.copy()
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    w, h = image.size
    x, y = k % w, (k // w) % h
    px = image.getpixel((x, y))
    if isinstance(px, tuple):
        px = ((px[0] + 1 + k // (w * h)) % 256, *px[1:])
    else:
        px = (px + 1 + k // (w * h)) % 256
    image.putpixel((x, y), px)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, format="JPEG", quality=95)
    else:
        image.save(out, format=fmt)
    return out.getvalue()


def scale_sft_shards(base: Path, run: Path, factor: int) -> dict[str, Any]:
    """Copy run dir `base` to `run` with its sft shards holding the sft mix `factor` times
    (distinct ids, distinct image bytes); returns what was written."""
    import pyarrow.parquet as pq

    from components.mix import mix_schema
    from components.records import ShardWriter, shard_paths

    shutil.copytree(base, run, ignore=shutil.ignore_patterns("checkpoints"))
    folder = run / "mix" / "shards" / "sft"
    sources = shard_paths(base / "mix" / "shards" / "sft")
    shutil.rmtree(folder)
    writer = ShardWriter(folder, mix_schema(), shard_rows=_settings().mix.shard_rows,
                         group_rows=1024)
    digests: set[str] = set()
    images = 0
    for k in range(factor):
        for path in sources:
            pf = pq.ParquetFile(path)
            for g in range(pf.num_row_groups):
                for row in pf.read_row_group(g).to_pylist():
                    blobs = row.get("image_bytes")
                    if k and blobs:  # copy 0 keeps the mix's own bytes
                        blobs = [touch_pixel(b, k) if b is not None else None for b in blobs]
                    for b in blobs or []:
                        if b is not None:
                            digests.add(hashlib.sha256(b).hexdigest())
                            images += 1
                    writer.add({**row, "id": f"{row['id']}#{k}", "image_bytes": blobs})
    writer.close()
    if len(digests) != images:
        raise SystemExit(f"scale {factor}: only {len(digests)} distinct images of {images}")
    return {"rows": writer.rows, "images": images, "distinct_images": len(digests)}


def shard_info(run: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from components.records import shard_paths

    paths = shard_paths(run / "mix" / "shards" / "sft")
    groups = [pq.ParquetFile(p).num_row_groups for p in paths]
    return {"shards": len(paths), "row_groups": sum(groups),
            "rows": sum(pq.ParquetFile(p).metadata.num_rows for p in paths),
            "bytes": sum(p.stat().st_size for p in paths)}


# ----------------------------------------------------------------------------- measurement


def child(run: Path, workers: int, result_path: Path) -> None:
    """The measured process: the sft stage of `run`, then its own rusage."""
    import gc
    import resource

    from components.stages import run_stage

    s = _settings(sft={"epochs": 1}, train={"dataloader_workers": workers,
                                            "save_steps": 10**9})
    t0 = time.perf_counter()
    output, _ = run_stage("sft", s, run, progress=False)
    wall = time.perf_counter() - t0
    gc.collect()
    self_ = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result_path.write_text(json.dumps({
        "stage_wall_s": wall, "counts": output.counts, "metrics": output.metrics,
        "engine": output.extra.get("engine"), "ru_maxrss_self_mb": self_,
        "ru_maxrss_children_mb": kids}))


class TreePoller:
    """Peak RSS / USS / PSS of a process and its descendants, by polling psutil."""

    def __init__(self, pid: int):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.main: dict[str, float] = {"rss": 0.0, "uss": 0.0, "pss": 0.0}
        self.children: dict[int, dict[str, Any]] = {}
        self.tree_pss = 0.0
        self.tree_rss = 0.0
        self.samples = 0
        self.timeline: list[tuple[float, float, float]] = []  # (t, main rss, tree pss)
        self.t0 = time.perf_counter()

    def _read(self, proc) -> dict[str, float] | None:
        try:
            info = proc.memory_full_info()
        except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
            return None
        return {"rss": info.rss / MB, "uss": info.uss / MB, "pss": getattr(info, "pss", 0) / MB}

    def poll(self) -> None:
        main = self._read(self.root)
        if main is None:
            return
        try:
            kids = self.root.children(recursive=True)
        except self.psutil.NoSuchProcess:
            kids = []
        pss, rss = main["pss"], main["rss"]
        for key in main:
            self.main[key] = max(self.main[key], main[key])
        for proc in kids:
            mem = self._read(proc)
            if mem is None:
                continue
            entry = self.children.setdefault(proc.pid, {
                "pid": proc.pid, "parent": proc.ppid(), "rss": 0.0, "uss": 0.0, "pss": 0.0,
                "polls": 0, "name": _proc_name(proc)})
            entry["polls"] += 1
            for key in ("rss", "uss", "pss"):
                entry[key] = max(entry[key], mem[key])
            pss += mem["pss"]
            rss += mem["rss"]
        self.tree_pss = max(self.tree_pss, pss)
        self.tree_rss = max(self.tree_rss, rss)
        self.samples += 1
        self.timeline.append((round(time.perf_counter() - self.t0, 1), round(main["rss"], 1),
                              round(pss, 1)))


def _proc_name(proc) -> str:
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - a process that just left
        return "?"
    text = " ".join(cmd)
    if "resource_tracker" in text:
        return "resource_tracker"
    if "forkserver" in text:
        return "forkserver"
    return "dataloader_worker" if cmd and "train_memory.py" in text else (cmd[0] if cmd else "?")


def measure(run: Path, workers: int, poll_s: float, label: str) -> dict[str, Any]:
    """Run `child` on `run` in a fresh interpreter and poll its memory."""
    result_path = run / "bench_memory_child.json"
    log_path = run / "bench_memory_child.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(run),
           "--workers", str(workers), "--child-result", str(result_path)]
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        poller = TreePoller(proc.pid)
        while proc.poll() is None:
            poller.poll()
            time.sleep(poll_s)
    wall = time.perf_counter() - t0
    if proc.returncode:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"[{label}] sft stage failed (rc {proc.returncode}):\n{tail}")
    res = json.loads(result_path.read_text())
    workers_seen = [c for c in poller.children.values() if c["name"] == "dataloader_worker"]
    others = [c for c in poller.children.values() if c["name"] != "dataloader_worker"]
    samples = res["counts"]["train_samples"]
    train_s = res["metrics"]["seconds"]
    peak_main = max(poller.main["rss"], res["ru_maxrss_self_mb"])
    print(f"[{label}] sft done in {wall:.1f} s, peak main RSS {peak_main:.0f} MB",
          file=sys.stderr, flush=True)
    return {
        "samples": samples,
        "skipped": res["counts"].get("skipped", 0),
        "steps": res["counts"]["steps"],
        "wall_s": round(wall, 1),
        "stage_wall_s": round(res["stage_wall_s"], 1),
        "train_s": round(train_s, 1),
        "planning_and_setup_s": round(res["stage_wall_s"] - train_s, 1),
        "samples_per_s": round(samples / res["stage_wall_s"], 1),
        "train_samples_per_s": res["metrics"]["samples_per_s"],
        "peak_rss_main_mb": round(peak_main, 1),
        "peak_rss_main_polled_mb": round(poller.main["rss"], 1),
        "ru_maxrss_main_mb": round(res["ru_maxrss_self_mb"], 1),
        "peak_uss_main_mb": round(poller.main["uss"], 1),
        "peak_rss_worker_mb": round(max((w["rss"] for w in workers_seen), default=0.0), 1),
        "peak_uss_worker_mb": round(max((w["uss"] for w in workers_seen), default=0.0), 1),
        "ru_maxrss_children_mb": round(res["ru_maxrss_children_mb"], 1),
        "workers": [{k: round(v, 1) if isinstance(v, float) else v for k, v in w.items()}
                    for w in workers_seen],
        "other_children": [{k: round(v, 1) if isinstance(v, float) else v
                            for k, v in c.items()} for c in others],
        "peak_tree_pss_mb": round(poller.tree_pss, 1),
        "peak_tree_rss_sum_mb": round(poller.tree_rss, 1),
        "polls": poller.samples,
        "timeline_s_mainrss_treepss": _thin(poller.timeline, 24),
        "final_loss_last": res["metrics"].get("loss_last"),
    }


def _thin(points: list, n: int) -> list:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def tile_bytes(batch) -> tuple[int, int]:
    """(float32 bytes, tiles) of a list of samples' pixel_values."""
    total = tiles = 0
    for sample in batch:
        for px in sample.pixel_values:
            total += px.numel() * px.element_size()
            tiles += px.shape[0]
    return total, tiles


def in_memory_tiles(run: Path, workers: int) -> dict[str, Any]:
    """One pass over the sft dataset of `run`: what keeping every sample's tiles costs."""
    from torch.utils.data import DataLoader
    from transformers import AutoProcessor

    from components.train.chat import Budget, ChatFormat
    from components.train.dataset import ShardDataset

    s = _settings()
    processor = AutoProcessor.from_pretrained(run / "align" / "model")
    dataset = ShardDataset(run / "mix" / "shards" / "sft", s.data_dir, processor,
                           ChatFormat(processor, system_prompt=s.engine.system_prompt),
                           Budget(max_length=s.model.max_length, max_tiles=s.engine.max_tiles))
    t0 = time.perf_counter()
    total = tiles = 0
    loader = DataLoader(dataset, batch_size=64, sampler=dataset.sampler(0),
                        num_workers=workers, collate_fn=tile_bytes)
    for nbytes, ntiles in loader:
        total += nbytes
        tiles += ntiles
    return {"in_memory_tiles_mb": round(total / MB, 1), "tiles": tiles,
            "tiles_pass_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- main


WHAT = (
    "The real sft stage (components.stages.run_stage('sft'): ShardDataset planning pass, "
    "transformers Trainer, model save) of the `tiny` profile on the align model, 1 epoch "
    "(every sample read, decoded and tiled once; 10x data = 10x steps), "
    "train.dataloader_workers={workers}, no mid-run checkpoints, one fresh process per "
    "scale. Nx data = the tiny sft mix N times with distinct ids and pixel-distinct images "
    "(re-encoded, one pixel changed). peak_rss_main_mb = max(polled RSS, ru_maxrss) of the "
    "training process; worker figures are polled (RSS includes pages shared copy-on-write "
    "with the main process; USS is the worker's own); peak_tree_pss_mb = main + workers "
    "with shared pages counted once. in_memory_tiles_mb = sum of every sample's "
    "pixel_values bytes (float32), i.e. what an engine holding all tiles in RAM would add."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10],
                    help="data multiples of the tiny sft mix to measure (default: 1 10); "
                         "the first must be 1")
    ap.add_argument("--workers", type=int, default=2,
                    help="train.dataloader_workers of the measured sft stage (default: 2)")
    ap.add_argument("--poll", type=float, default=0.25,
                    help="seconds between memory polls of the stage's processes")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the run directories go (default: a new temp folder, "
                         "deleted at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_memory.json",
                    help="result JSON (default: bench/results/train_memory.json)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-result", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.chdir(REPO)
    if args.child is not None:
        child(args.child, args.workers, args.child_result)
        return
    if args.scales[0] != 1:
        ap.error("--scales must start with 1 (the base run)")
    import psutil  # noqa: F401 - fail before minutes of work when it is missing

    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="amalia-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = {1: work / "run-1x"}
        prepare = build_base_run(runs[1])
        copies = {}
        for n in args.scales[1:]:
            t0 = time.perf_counter()
            runs[n] = work / f"run-{n}x"
            copies[f"{n}x"] = {**scale_sft_shards(runs[1], runs[n], n),
                               "seconds": round(time.perf_counter() - t0, 1)}
            print(f"[prepare] {n}x shards: {copies[f'{n}x']}", file=sys.stderr, flush=True)
        scales: dict[str, Any] = {}
        for n in args.scales:
            label = f"{n}x"
            info = shard_info(runs[n])
            measured = measure(runs[n], args.workers, args.poll, label)
            tiles = in_memory_tiles(runs[n], args.workers)
            scales[label] = {"data_multiple": n, "shard_rows": info["rows"],
                             "shard_bytes": info["bytes"],
                             "shard_mb": round(info["bytes"] / MB, 2),
                             "shards": info["shards"], "row_groups": info["row_groups"],
                             **measured, **tiles}
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    base, top = scales["1x"], scales[f"{args.scales[-1]}x"]

    def ratio(key: str) -> float | None:
        return round(top[key] / base[key], 3) if base.get(key) else None

    keys = ("shard_bytes", "samples", "peak_rss_main_mb", "peak_uss_main_mb",
            "peak_rss_worker_mb", "peak_uss_worker_mb", "peak_tree_pss_mb",
            "in_memory_tiles_mb", "wall_s")
    ratios = {k: ratio(k) for k in keys}
    main_ratio = ratios["peak_rss_main_mb"] or 0.0
    tree_ratio = ratios["peak_tree_pss_mb"] or 0.0
    total = psutil_total_mb()
    result = {
        "command": "python bench/train_memory.py " + " ".join(
            ["--scales", *map(str, args.scales), "--workers", str(args.workers)]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "memory_mb": total,
                    "platform": platform.platform(), "python": platform.python_version()},
        "measured": WHAT.format(workers=args.workers),
        "settings": {"profile": "tiny", "stage": "sft", "sft_epochs": 1,
                     "global_batch_size": _settings().sft.global_batch_size,
                     "dataloader_workers": args.workers, "poll_s": args.poll,
                     "model": _settings().model.model_dump(mode="json")},
        "prepare_seconds": prepare,
        "scaled_copies": copies,
        "scales": scales,
        f"ratios_{args.scales[-1]}x_over_1x": ratios,
        "target": f"peak_rss_main ratio < {TARGET_RATIO} while the data is "
                  f"{args.scales[-1]}x",
        "flat": bool(main_ratio and main_ratio < TARGET_RATIO and tree_ratio < TARGET_RATIO),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


def psutil_total_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total / MB)


if __name__ == "__main__":
    main()
