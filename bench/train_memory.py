"""Benchmark: peak memory of a training stage at 1x and 10x the data (streaming shards).

    .venv/bin/python bench/train_memory.py                 # 1x and 10x: ~2-3 min on 2 cores
    .venv/bin/python bench/train_memory.py --max-steps 0   # the full sft epoch: ~4 min quiet

What it does:

1. Builds a real 1x run directory from the embedded data of the `tiny` profile, in this
   process, through `components.stages.run_stage`: validate, translate, mix, then align
   (epochs 1: the sft stage starts from the align model, as in a retrain).
2. Makes each larger scale N by copying that run directory and rewriting its sft shards
   (`<run>/mix/shards/sft/part-*.parquet`, schema `components.mix.mix_schema()`, written
   with `components.records.ShardWriter` in row groups of 1,024 as the mix writes them):
   the sft mix N times over, copy k of a row with id `<id>#<k>` and (k > 0) every
   embedded image re-encoded in its own format and size with one pixel changed, so all
   image bytes of the Nx data are distinct (checked by sha256: nothing can be shared or
   deduplicated). The mix and align manifests are copied as they are (the sft stage only
   checks that they exist).
3. Measures each scale in a fresh interpreter (no memory shared between scales), which
   runs, one after the other:
   A. the REAL sft stage, `run_stage("sft", ...)`: the ShardDataset planning pass over
      ALL samples, the transformers Trainer with `train.dataloader_workers: 2` (images
      decoded and tiled in the workers), `sft.epochs: 1`, `train.save_steps` above the
      step count (no mid-run checkpoints), the model save. Training stops after
      `--max-steps` optimizer steps (default 40) at every scale, through a Trainer
      callback handed to `train_stage(callbacks=...)`, so the time stays bounded on
      2 busy cores (`--max-steps 0`: the full epoch, 10x the steps at 10x);
   B. the stage's own ShardDataset, BlockShuffleSampler and SampleCollator through a
      torch DataLoader with the same 2 workers over EVERY sample (read from the shards,
      decoded, tiled, collated; no model step): all of the Nx data streams through.
4. Memory: this process polls the measured process tree with psutil every `--poll`
   seconds: RSS and USS of the main (training) process; RSS, USS (what only that process
   holds) and PSS of every DataLoader worker; PSS of the whole tree (shared pages counted
   once). The measured process also reports its own `ru_maxrss` (the kernel's exact peak,
   which polling can miss): `peak_rss_main_mb` is the larger of the two. A forked
   worker's RSS counts the copy-on-write pages it shares with the main process (torch,
   the model), so its USS is the memory the worker itself adds; `ru_maxrss_children_mb`
   is reported but says little for the same reason (a fork starts at its parent's RSS).
   `ru_maxrss_main_before_trainer_mb` is the peak once the stage has planned its data and
   checked processor/model agreement, before the Trainer starts; when it equals the peak
   (`peak_set_before_trainer`), the peak is a setup transient that polling does not see
   (on the tiny profile: `check_image_token_agreement` runs the image processor on blank
   probe images up to 4000x3000, ~170 MB for a fraction of a second), and
   `peak_rss_main_polled_mb` is the steady level while training and streaming.
5. Contrast: what an engine holding every sample's tiles in RAM (the pre-streaming one)
   would add: `in_memory_tiles_mb`, the sum of every sample's pixel_values bytes
   (float32, before padding), measured in pass B.

Writes `bench/results/train_memory.json` (and prints it). Target (issue: streaming data):
memory flat as data grows: peak RSS of the main process, of a worker and PSS of the tree
each < 1.3x at 10x the data (`flat`).
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
DEFAULT_STEPS = 40


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


def stop_after(steps: int):
    """A Trainer callback that stops training after `steps` optimizer steps."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= steps:
                control.should_training_stop = True

    return StopAfter()


class TileCounter:
    """`collate_fn` around the stage's collator that also counts every sample's float32
    tile bytes (before padding): what an engine holding all tiles in RAM would keep."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples):
        batch = self.collate(samples)
        batch["_tile_bytes"] = sum(px.numel() * px.element_size()
                                   for s in samples for px in s.pixel_values)
        batch["_tiles"] = sum(px.shape[0] for s in samples for px in s.pixel_values)
        return batch


def child(run: Path, workers: int, max_steps: int, result_path: Path) -> None:
    """The measured process: (A) the real sft stage of `run` (planning pass over all of
    the data, Trainer with `workers` DataLoader workers, save), bounded to `max_steps`
    optimizer steps when > 0; (B) the stage's own dataset, sampler and collator through a
    DataLoader with `workers` workers over EVERY sample; then its own rusage."""
    import gc
    import resource

    from torch.utils.data import DataLoader

    import components.train.stages as train_stages
    from components.stages import run_stage

    captured: dict[str, Any] = {}
    real_train_stage = train_stages.train_stage

    def maxrss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def train_stage(*args, **kwargs):  # run_sft calls it positionally (..., dataset, collator)
        captured["dataset"], captured["collator"] = args[4], args[5]
        captured["ru_maxrss_before_trainer_mb"] = maxrss()
        if max_steps > 0:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), stop_after(max_steps)]
        t0 = time.perf_counter()
        captured["plan_and_setup_s"] = t0 - captured["t0"]
        result = real_train_stage(*args, **kwargs)
        captured["trainer_s"] = time.perf_counter() - t0
        captured["ru_maxrss_after_trainer_mb"] = maxrss()
        return result

    train_stages.train_stage = train_stage
    s = _settings(sft={"epochs": 1}, train={"dataloader_workers": workers,
                                            "save_steps": 10**9})
    captured["t0"] = t0 = time.perf_counter()
    output, _ = run_stage("sft", s, run, progress=False)
    stage_wall = time.perf_counter() - t0
    gc.collect()
    after_stage = maxrss()

    dataset = captured["dataset"]
    loader = DataLoader(dataset, batch_size=s.sft.global_batch_size,
                        sampler=dataset.sampler(s.seed), num_workers=workers,
                        collate_fn=TileCounter(captured["collator"]))
    t1 = time.perf_counter()
    tile_bytes = tiles = samples = batches = 0
    for batch in loader:
        tile_bytes += batch["_tile_bytes"]
        tiles += batch["_tiles"]
        samples += len(batch["sample_index"])
        batches += 1
    pass_s = time.perf_counter() - t1
    del loader
    gc.collect()
    result_path.write_text(json.dumps({
        "stage_wall_s": stage_wall, "plan_and_setup_s": captured["plan_and_setup_s"],
        "trainer_s": captured["trainer_s"], "counts": output.counts,
        "metrics": output.metrics, "engine": output.extra.get("engine"),
        "epoch_steps": len(dataset) // s.sft.global_batch_size,
        "pass": {"samples": samples, "batches": batches, "seconds": pass_s,
                 "tile_bytes": tile_bytes, "tiles": tiles},
        "ru_maxrss_before_trainer_mb": captured["ru_maxrss_before_trainer_mb"],
        "ru_maxrss_after_trainer_mb": captured["ru_maxrss_after_trainer_mb"],
        "ru_maxrss_after_stage_mb": after_stage,
        "ru_maxrss_self_mb": maxrss(),
        "ru_maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


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
        except self.psutil.Error:
            return None
        return {"rss": info.rss / MB, "uss": info.uss / MB, "pss": getattr(info, "pss", 0) / MB}

    def poll(self) -> None:
        main = self._read(self.root)
        if main is None:
            return
        try:
            kids = self.root.children(recursive=True)
        except self.psutil.Error:
            kids = []
        pss, rss = main["pss"], main["rss"]
        for key in main:
            self.main[key] = max(self.main[key], main[key])
        for proc in kids:
            mem = self._read(proc)
            if mem is None:
                continue
            if proc.pid not in self.children:
                try:
                    parent = proc.ppid()
                except self.psutil.Error:  # it left between the two reads
                    continue
                self.children[proc.pid] = {
                    "pid": proc.pid, "parent": parent, "rss": 0.0, "uss": 0.0, "pss": 0.0,
                    "polls": 0, "name": _proc_name(proc), "timeline": []}
            entry = self.children[proc.pid]
            entry["polls"] += 1
            entry["timeline"].append((round(time.perf_counter() - self.t0, 1),
                                      round(mem["uss"], 1)))
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
    """`dataloader_worker` for torch's workers (they rename themselves pt_data_worker)."""
    try:
        name, cmd = proc.name(), " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - a process that just left
        return "?"
    if name.startswith("pt_data_worker"):
        return "dataloader_worker"
    for kind in ("resource_tracker", "forkserver"):
        if kind in cmd:
            return kind
    return name


def measure(run: Path, workers: int, max_steps: int, poll_s: float,
            label: str) -> dict[str, Any]:
    """Run `child` on `run` in a fresh interpreter and poll its process tree's memory."""
    result_path = run / "bench_memory_child.json"
    log_path = run / "bench_memory_child.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(run),
           "--workers", str(workers), "--max-steps", str(max_steps),
           "--child-result", str(result_path)]
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            poller = TreePoller(proc.pid)
            while proc.poll() is None:
                poller.poll()
                time.sleep(poll_s)
        finally:
            if proc.poll() is None:  # this process failed or was interrupted: stop ours
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"[{label}] measured process failed (rc {proc.returncode}):\n{tail}")
    res = json.loads(result_path.read_text())
    workers_seen = [c for c in poller.children.values() if c["name"] == "dataloader_worker"]
    others = [c for c in poller.children.values() if c["name"] != "dataloader_worker"]
    samples = res["counts"]["train_samples"]
    peak_main = max(poller.main["rss"], res["ru_maxrss_self_mb"])
    passed = res["pass"]
    print(f"[{label}] done in {wall:.1f} s: peak main RSS {peak_main:.0f} MB, "
          f"tree PSS {poller.tree_pss:.0f} MB", file=sys.stderr, flush=True)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "samples": samples,
        "skipped": res["counts"].get("skipped", 0),
        "epoch_steps": res["epoch_steps"],
        "trained_steps": res["counts"]["steps"],
        "wall_s": r(wall),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "stage_s": r(res["stage_wall_s"]),
        "stage_plan_and_setup_s": r(res["plan_and_setup_s"]),
        "stage_trainer_s": r(res["trainer_s"]),
        "train_samples_per_s": res["metrics"]["samples_per_s"],
        "pass_samples": passed["samples"],
        "pass_s": r(passed["seconds"]),
        "samples_per_s": r(passed["samples"] / passed["seconds"]) if passed["seconds"] else None,
        "peak_rss_main_mb": r(peak_main),
        "peak_rss_main_polled_mb": r(poller.main["rss"]),
        "ru_maxrss_main_mb": r(res["ru_maxrss_self_mb"]),
        "ru_maxrss_main_before_trainer_mb": r(res["ru_maxrss_before_trainer_mb"]),
        "ru_maxrss_main_after_trainer_mb": r(res["ru_maxrss_after_trainer_mb"]),
        "ru_maxrss_main_after_stage_mb": r(res["ru_maxrss_after_stage_mb"]),
        "peak_uss_main_mb": r(poller.main["uss"]),
        "peak_set_before_trainer": res["ru_maxrss_before_trainer_mb"] >= res["ru_maxrss_self_mb"],
        "peak_rss_worker_mb": r(max((w["rss"] for w in workers_seen), default=0.0)),
        "peak_uss_worker_mb": r(max((w["uss"] for w in workers_seen), default=0.0)),
        "ru_maxrss_children_mb": r(res["ru_maxrss_children_mb"]),
        "peak_tree_pss_mb": r(poller.tree_pss),
        "peak_tree_rss_sum_mb": r(poller.tree_rss),
        "workers": [{**{k: r(v) if isinstance(v, float) else v for k, v in w.items()},
                     "timeline": _thin(w["timeline"], 8)} for w in workers_seen],
        "other_children": [{k: r(v) if isinstance(v, float) else v for k, v in c.items()}
                           for c in others],
        "polls": poller.samples,
        "timeline_s_main_rss_tree_pss_mb": _thin(poller.timeline, 24),
        "in_memory_tiles_mb": r(passed["tile_bytes"] / MB),
        "tiles": passed["tiles"],
        "loss_first": res["metrics"].get("loss_first"),
        "loss_last": res["metrics"].get("loss_last"),
    }


def _thin(points: list, n: int) -> list:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


# ----------------------------------------------------------------------------- main


WHAT = (
    "One fresh process per scale runs (A) the real sft stage, components.stages.run_stage("
    "'sft'), of the `tiny` profile on the align model: ShardDataset planning pass over ALL "
    "samples, the transformers Trainer with train.dataloader_workers={workers} (images "
    "decoded and tiled in the workers), sft.epochs 1, {steps}, no mid-run checkpoints, "
    "model save; then (B) the stage's own ShardDataset, BlockShuffleSampler and "
    "SampleCollator through a torch DataLoader with {workers} workers over EVERY sample "
    "(read from the shards, decoded, tiled, collated; no model step). Nx data = the tiny sft "
    "mix N times, distinct ids, every image re-encoded with one pixel changed (all image "
    "bytes distinct). peak_rss_main_mb = max(polled RSS, ru_maxrss) of that process over A "
    "and B; worker figures are polled every poll_s (RSS counts pages shared copy-on-write "
    "with the main process; USS is what the worker alone holds); peak_tree_pss_mb = main + "
    "workers with shared pages counted once. in_memory_tiles_mb = sum over every sample of "
    "its pixel_values bytes (float32, unpadded), measured in pass B: what an engine that "
    "keeps every sample's tiles in RAM (the pre-streaming one) would hold on top."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10],
                    help="data multiples of the tiny sft mix to measure (default: 1 10); "
                         "the first must be 1")
    ap.add_argument("--workers", type=int, default=2,
                    help="train.dataloader_workers of the measured stage and of the full "
                         "data pass (default: 2)")
    ap.add_argument("--max-steps", type=int, default=DEFAULT_STEPS,
                    help=f"optimizer steps the sft stage trains at every scale (default: "
                         f"{DEFAULT_STEPS}); 0 = the full epoch (10x data: 10x the steps; "
                         "~2 min at 10x on 2 quiet cores, far more on busy ones)")
    ap.add_argument("--poll", type=float, default=0.25,
                    help="seconds between memory polls of the measured processes "
                         "(default: 0.25)")
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
        child(args.child, args.workers, args.max_steps, args.child_result)
        return
    if args.scales[0] != 1:
        ap.error("--scales must start with 1 (the base run)")
    import psutil  # fail before minutes of work when it is missing

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
            info = shard_info(runs[n])
            measured = measure(runs[n], args.workers, args.max_steps, args.poll, f"{n}x")
            scales[f"{n}x"] = {"data_multiple": n, "shard_rows": info["rows"],
                               "shard_bytes": info["bytes"],
                               "shard_mb": round(info["bytes"] / MB, 2),
                               "shards": info["shards"], "row_groups": info["row_groups"],
                               **measured}
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    top_n = args.scales[-1]
    base, top = scales["1x"], scales[f"{top_n}x"]

    def ratio(key: str) -> float | None:
        return round(top[key] / base[key], 3) if base.get(key) else None

    keys = ("shard_bytes", "samples", "pass_samples", "peak_rss_main_mb",
            "peak_rss_main_polled_mb", "peak_uss_main_mb",
            "peak_rss_worker_mb", "peak_uss_worker_mb", "peak_tree_pss_mb",
            "in_memory_tiles_mb", "wall_s")
    ratios = {k: ratio(k) for k in keys}
    flat = all((ratios[k] or 99) < TARGET_RATIO
               for k in ("peak_rss_main_mb", "peak_tree_pss_mb", "peak_rss_worker_mb"))
    settings = _settings()
    steps = (f"stopped after {args.max_steps} optimizer steps at every scale (a Trainer "
             "callback passed through train_stage's callbacks)" if args.max_steps > 0
             else "the full epoch")
    command = ["python", "bench/train_memory.py", "--scales", *map(str, args.scales),
               "--workers", str(args.workers), "--max-steps", str(args.max_steps)]
    result = {
        "command": " ".join(command),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "memory_mb": int(psutil.virtual_memory().total / MB),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "platform": platform.platform(), "python": platform.python_version()},
        "measured": WHAT.format(workers=args.workers, steps=steps),
        "settings": {"profile": "tiny", "stage": "sft", "sft_epochs": 1,
                     "max_steps": args.max_steps,
                     "global_batch_size": settings.sft.global_batch_size,
                     "dataloader_workers": args.workers, "poll_s": args.poll,
                     "mix_group_rows": 1024,
                     "model": settings.model.model_dump(mode="json")},
        "prepare_seconds": prepare,
        "scaled_copies": copies,
        "scales": scales,
        f"ratios_{top_n}x_over_1x": ratios,
        "target": f"peak RSS of the main process, peak RSS of a worker and peak PSS of the "
                  f"whole tree each < {TARGET_RATIO}x at {top_n}x the data",
        "flat": flat,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
