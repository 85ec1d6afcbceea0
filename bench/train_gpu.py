"""Benchmark: the sft and dpo stages on one GPU at ~0.5B / ~1B parameters, bf16 +
flash-attn 2 (when it imports) + DeepSpeed ZeRO-2: tokens/s, MFU and peak GPU memory.

    # on the lent GPU machine (one H200), in one call, results under $OUT:
    PYTHONUNBUFFERED=1 python3 bench/train_gpu.py --size 0.5b \\
        --out $OUT/train_gpu.json --log $OUT/train_gpu.log
    # both sizes, 1b skipped if the budget runs out first:
    PYTHONUNBUFFERED=1 python3 bench/train_gpu.py --size both --budget-s 420 \\
        --out $OUT/train_gpu.json --log $OUT/train_gpu.log
    # here (CPU, tiny model, a few steps): proves the script end to end, < 3 min
    .venv/bin/python bench/train_gpu.py --dry-run
    # the paper's risks on one GPU (issue #18), and its CPU proof:
    PYTHONUNBUFFERED=1 python3 bench/train_gpu.py --size paper --budget-s 480 \
        --out $OUT/train_gpu_paper.json --log $OUT/train_gpu_paper.log
    .venv/bin/python bench/train_gpu.py --size paper --dry-run \
        --out bench/results/train_gpu_paper-cpu-dryrun.json

`--size paper` runs what breaks at paper scale, on one GPU: DeepSpeed ZeRO-3, rows of
16,384 tokens packed with flash-attn varlen, a 128k vocabulary (`model.text.vocab_size`
reserves the rows) through the chunked loss, a SigLIP so400m-shaped tower on 3x3-grid
images (10 tiles, 7,371 visual tokens each) under gradient checkpointing, a ~1B decoder;
the global batches count samples (pairs) and become rows from the measured samples per
row. Per stage it records tokens/s, MFU, `torch.cuda.max_memory_allocated` next to the
planner's prediction (`amalia-vl plan --json --gpus 1 --run-dir RUN`: `planner`,
`planner_over_measured`; target within 15%), and for dpo the first step's
`rewards/margins|chosen|rejected` (`dpo_step0`: the precomputed reference is the step-0
policy, so they must be 0 to 1e-3).

What it does, for each size:

1. Builds a run directory the stages accept (a `mix/` with parquet shards for align, sft,
   dpo, dpo_eval, eval and the validate/translate/mix manifests, like
   `tests.train_helpers.make_mix`), with synthetic JPEGs whose shapes are 2:1, 1:2 and 1:1
   multiples of the tile (anyres: 3 or 2 tiles, ~1.2k-1.8k tokens a sample at 384 px
   tiles), `steps x global batch` samples for sft and dpo, a few for align and dpo_eval.
2. Writes a params.yaml (`tests.train_helpers.write_params`): random weights
   (`model.init: build_tiny`) at the size asked for, `train.precision: bf16`,
   `train.strategy: zero2`, no checkpoints, step metrics every step, DataLoader workers.
   The tokenizer is the project's BPE trained on the mix texts: the synthetic texts are
   short, so the vocabulary stays at a few hundred tokens whatever
   `tokenizer_vocab_size` says (embeddings and LM head are then a negligible share; the
   parameters are the decoder and the SigLIP-shaped tower).
3. Runs align (1 epoch of a few steps: it builds the model), then sft and dpo, each as its
   own process under torchrun (`python -m torch.distributed.run --standalone
   --nproc-per-node 1 bench/train_gpu.py --worker STAGE ...`): DeepSpeed needs the
   distributed environment even on one GPU, and `amalia-vl stage --nproc 1` does not use
   torchrun. The worker calls `components.stages.run_stage` (no MLflow) and writes
   `torch.cuda.max_memory_allocated/reserved` of the stage process; this process also
   polls `nvidia-smi` (memory.used, utilization.gpu) while the stage runs.
4. Reads `<run>/<stage>/metrics.json`: mean tokens/s, MFU, images/s over all steps and
   over the steps after the first `--warmup-steps` (warm-up, DeepSpeed init and the
   DataLoader's first batches), the engine record (precision, strategy, fallback), the
   runtime line (flash_attention_2 or sdpa).
5. Writes one JSON (per size and stage, plus the environment: torch / transformers /
   deepspeed / flash-attn versions, GPU) after every stage, so a part that fails or a
   budget that runs out still leaves the rest; prints a short table at the end.

Robustness: a preflight subprocess checks what imports (the device image may lack
pydantic, deepspeed or flash-attn) and records it; without DeepSpeed the stages run as
DDP (`--strategy-fallback ddp`, recorded); a flash-attn failure in a stage retries it once
with sdpa (`attn_fallback` recorded); every stage runs in its own process group under a
timeout (killed, never hangs); `--budget-s` skips stages that would start too late.

MFU is the engine's (components.train.engine -> components.plan.flops): what is computed
per counted token (forward of every part, backward only where gradients flow, the
tower's tiles from the length index, attention per sample length; checkpointing's
recompute not counted), over the bf16 dense peak of the GPU looked up by exact name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STAGES = ("align", "sft", "dpo")
DEFAULT_OUT = REPO / "bench" / "results" / "train_gpu.json"
DRY_OUT = REPO / "bench" / "results" / "train_gpu-cpu-dryrun.json"
TAIL_CHARS = 4000

# model settings (params.yaml `model:`); vision = a SigLIP-base-patch16-384-shaped tower
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {  # the dry run: tests.train_helpers.SMALL_MODEL-sized
        "tokenizer_vocab_size": 400,
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2,
                 "max_position_embeddings": 256},
        "max_length": 256,
    },
    "0.5b": {  # ~0.47B: Llama decoder 1024 x 24 layers (GQA 16/8) + 86M tower
        "tokenizer_vocab_size": 32000,
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "image_size": 384, "patch_size": 16},
        "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                 "num_attention_heads": 16, "num_key_value_heads": 8,
                 "max_position_embeddings": 4096},
        "max_length": 2048,
    },
    "1b": {  # ~1.0B: Llama decoder 2048 x 16 layers (GQA 16/8) + 86M tower
        "tokenizer_vocab_size": 32000,
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "image_size": 384, "patch_size": 16},
        "text": {"hidden_size": 2048, "intermediate_size": 7168, "num_hidden_layers": 16,
                 "num_attention_heads": 16, "num_key_value_heads": 8,
                 "max_position_embeddings": 4096},
        "max_length": 2048,
    },
}
# the paper's risks on one GPU (--size paper): a SigLIP so400m-patch14-384-shaped tower at
# 10 tiles per image (3x3 grid + base: 7,371 visual tokens), a ~1B Llama decoder with a
# 128k vocabulary (`model.text.vocab_size` reserves the rows), 16k packed rows under
# ZeRO-3 with gradient checkpointing and the chunked loss
SIZES["paper"] = {
    "tokenizer_vocab_size": 400,
    "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
               "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
    "text": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
             "num_attention_heads": 16, "num_key_value_heads": 8,
             "max_position_embeddings": 16384, "vocab_size": 128256},
    "max_length": 16384,
}
SIZES["paper-tiny"] = {  # the CPU dry run of --size paper: same switches, small shapes
    "tokenizer_vocab_size": 400,
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 1024, "vocab_size": 32000},
    "max_length": 1024,
}
PAPER_SIZES = ("paper", "paper-tiny")
# image shapes in tiles (width, height): anyres 1x2 / 2x1 grids (3 tiles) and 1x1 (2 tiles)
SHAPES_IN_TILES = ((2, 1), (1, 2), (2, 1), (1, 1))
# --size paper: every image a 3x3 grid (10 tiles with the base tile, the paper's budget)
PAPER_SHAPES_IN_TILES = ((3, 3),)
COLOURS = {"vermelho": (220, 30, 30), "azul": (30, 60, 220), "verde": (30, 170, 60),
           "amarelo": (230, 200, 20)}
QUESTION = "De que cor é a forma no centro da imagem?"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def tail(text: str, n: int = TAIL_CHARS) -> str:
    return text[-n:] if len(text) > n else text


# ----------------------------------------------------------------------------- data


def make_images(data: Path, tile: int, distinct: int, seed: int,
                shapes: tuple[tuple[int, int], ...] = SHAPES_IN_TILES) -> list[str]:
    """`distinct` JPEGs (a disc on a noisy gradient) cycling through `shapes` (in tiles)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (data / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(distinct):
        tw, th = shapes[i % len(shapes)]
        w, h = tw * tile, th * tile
        base = np.linspace(40, 215, w, dtype=np.float32)[None, :, None].repeat(h, 0)
        pixels = base.repeat(3, 2) + rng.normal(0, 18, (h, w, 3))
        image = Image.fromarray(pixels.clip(0, 255).astype("uint8"), "RGB")
        colour = list(COLOURS.values())[i % len(COLOURS)]
        ImageDraw.Draw(image).ellipse([w * 0.3, h * 0.3, w * 0.7, h * 0.7], fill=colour)
        rel = f"img/{i}.jpg"
        image.save(data / rel, quality=88)
        names.append(rel)
    return names


def _shard(folder: Path, records: list, data: Path) -> None:
    from components.mix import mix_schema
    from components.records import ShardWriter

    writer = ShardWriter(folder, mix_schema(), group_rows=32)
    cache: dict[str, bytes] = {}
    for rec in records:
        blobs = [cache.setdefault(p, (data / p).read_bytes()) for p in rec.image_list()]
        writer.add({**rec.model_dump(), "image_bytes": blobs or None})
    writer.close()


def build_mix(root: Path, tile: int, counts: dict[str, int], seed: int = 0,
              shapes: tuple[tuple[int, int], ...] = SHAPES_IN_TILES) -> tuple[Path, Path]:
    """`(data_dir, run_dir)`: images and a finished `mix/` (as tests.train_helpers.make_mix,
    with `counts[output]` records per output and images of `shapes` tiles)."""
    from components.manifest import write_manifest
    from components.records import Record, write_records

    rng = random.Random(seed)
    data = root / "data"
    images = make_images(data, tile, distinct=16, seed=seed, shapes=shapes)
    names = list(COLOURS)

    def base(i: int) -> dict[str, Any]:
        return {"source": "native", "language": "pt-PT", "task_family": "cor",
                "image": images[i % len(images)]}

    def colour(i: int) -> str:
        return names[(i % len(images)) % len(names)]

    caps = [Record(id=f"c{i}", kind="caption",
                   text=f"Um círculo {colour(i)} sobre um fundo em degradé, ao centro.",
                   **base(i)) for i in range(counts["align"])]
    qas = [Record(id=f"q{i}", kind="qa", question=QUESTION,
                  answer=f"A forma no centro é {colour(i)}.", options=names, **base(i))
           for i in range(counts["sft"])]

    def prefs(n: int, prefix: str) -> list:
        out = []
        for i in range(n):
            wrong = names[(names.index(colour(i)) + 1 + rng.randrange(3)) % len(names)]
            out.append(Record(id=f"{prefix}{i}", kind="preference", question=QUESTION,
                              chosen=f"A forma é {colour(i)}.", rejected=f"A forma é {wrong}.",
                              **base(i)))
        return out

    run = root / "run"
    mix = run / "mix"
    outputs = {"align": caps, "sft": qas, "dpo": prefs(counts["dpo"], "p"),
               "dpo_eval": prefs(counts["dpo_eval"], "e"),
               "eval": [r.model_copy(update={"split": "test", "id": f"t{k}"})
                        for k, r in enumerate(qas[:4])]}
    for name, rows in outputs.items():
        _shard(mix / "shards" / name, rows, data)
    write_records(mix / "eval.jsonl", outputs["eval"])
    for stage in ("validate", "translate"):
        (run / stage).mkdir(parents=True, exist_ok=True)
        write_manifest(run / stage, stage, inputs={}, counts={}, metrics={},
                       config_digest="bench", started=now_iso())
    write_manifest(mix, "mix", inputs={}, counts={k: len(v) for k, v in outputs.items()},
                   metrics={}, config_digest="bench", started=now_iso())
    return data, run


def settings_overrides(data: Path, size: str, args, strategy: str) -> dict[str, Any]:
    model = json.loads(json.dumps(SIZES[size]))
    tile = model["vision"]["image_size"]
    model["init"] = "build_tiny"
    model["image_grid_pinpoints"] = [[tile, tile], [tile, 2 * tile], [2 * tile, tile],
                                     [2 * tile, 2 * tile]]
    model["vision_feature_layer"] = -1
    if args.max_length:
        model["max_length"] = args.max_length
        model["text"]["max_position_embeddings"] = max(args.max_length,
                                                       model["text"]["max_position_embeddings"])
    paper = size in PAPER_SIZES
    packing = args.packing or paper
    if paper:  # every grid up to 9 tiles (the paper profile's), 10 tiles with the base
        model["image_grid_pinpoints"] = [[a * tile, b * tile] for a in range(1, 10)
                                         for b in range(1, 10) if a * b <= 9]
    batch = {"sft": args.batch, "dpo": args.dpo_batch, "align": args.batch}
    # packed micro-batches are bounded by tokens (per-device batch null); global batches
    # count samples (pairs) and become rows through the measured samples per row
    stage = {name: {"epochs": 1, "global_batch_size": b,
                    "per_device_batch_size": None if packing else b}
             for name, b in batch.items()}
    stage["sft"]["trainable"] = ["connector", "language_model", "vision_tower"]
    stage["dpo"]["trainable"] = ["connector", "language_model"]
    if paper:
        stage["dpo"]["precompute_ref_log_probs"] = True  # step-0 margins must be 0
    train = {"precision": args.precision, "strategy": strategy,
             "gradient_checkpointing": args.gradient_checkpointing or paper,
             "save_steps": 1_000_000, "keep_checkpoints": False, "logging_steps": 1,
             "dataloader_workers": args.workers, "max_skip_ratio": 0.05,
             "packing": packing}
    if paper:
        # few samples per step on one GPU: whole rows quantise the batch more than 25%
        train.update({"max_tiles": 10, "loss_chunk_tokens": 4096,
                      "packed_batch_tolerance": None})
    return {"data_dir": str(data), "model": model, "train": train, **stage}


def planner_prediction(params: Path, run: Path, stage: str, env: dict[str, str],
                       log_fh) -> dict[str, Any]:
    """`amalia-vl plan --json --gpus 1 --run-dir RUN` for this bench's params (the run's
    length index gives tokens and tiles per sample): the stage's predicted peak GiB and
    parts, next to the measured `torch.cuda.max_memory_allocated`."""
    cmd = [sys.executable, "-m", "amalia_vl.cli", "plan", "--json", "--gpus", "1",
           "--run-dir", str(run)]
    proc = run_process(cmd, {**env, "AMALIA_PARAMS": str(params)}, 120, log_fh)
    text = proc["output"]
    try:
        plan = json.loads(text[text.index("{"): text.rindex("}") + 1])
        return {"gpu": plan.get("gpu"), **plan["stages"][stage]}
    except (ValueError, KeyError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "output_tail": tail(text, 800)}


# ----------------------------------------------------------------------------- helpers


def safetensors_params(folder: Path) -> dict[str, int] | None:
    """Parameter counts by part from the safetensors headers of a saved model folder."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    parts = {"vision_tower": 0, "connector": 0, "decoder": 0, "embeddings": 0, "lm_head": 0}
    for path in files:
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in info["shape"]:
                numel *= d
            if "vision_tower" in name:
                parts["vision_tower"] += numel
            elif "multi_modal_projector" in name or "image_newline" in name:
                parts["connector"] += numel
            elif "lm_head" in name:
                parts["lm_head"] += numel
            elif "embed_tokens" in name:
                parts["embeddings"] += numel
            else:
                parts["decoder"] += numel
    parts["total"] = sum(parts.values())
    return parts


def tokenizer_vocab(folder: Path) -> int | None:
    path = folder / "tokenizer.json"
    if not path.exists():
        return None
    tok = json.loads(path.read_text())
    return len(tok.get("model", {}).get("vocab", {})) + len(tok.get("added_tokens", []))


class GpuSampler:
    """Polls nvidia-smi (memory.used MiB, utilization.gpu %) every `every` s in a thread."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                     "--format=csv,noheader,nounits"], capture_output=True, text=True,
                    timeout=5).stdout.strip().splitlines()
                if out:
                    mem, util = (float(x) for x in out[0].split(",")[:2])
                    self.samples.append((mem, util))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        mems = [m for m, _ in self.samples]
        utils = [u for _, u in self.samples]
        busy = [u for u in utils if u > 0]
        return {"samples": len(self.samples), "max_memory_used_mib": max(mems),
                "mean_utilization_pct": round(statistics.fmean(utils), 1),
                "mean_utilization_pct_nonzero": round(statistics.fmean(busy), 1) if busy
                else 0.0}


def nvidia_smi() -> dict[str, Any] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used,memory.total,driver_version",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        return {"query": "name,memory.used,memory.total,driver_version",
                "rows": out.stdout.strip().splitlines(), "rc": out.returncode}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}


def run_process(cmd: list[str], env: dict[str, str], timeout: float, log_fh) -> dict[str, Any]:
    """Run `cmd` in its own process group, output appended to `log_fh` (and kept for the
    tail); on timeout the whole group is terminated, then killed."""
    started = time.perf_counter()
    buf = io.StringIO()
    log_fh.write(f"\n$ {' '.join(cmd)}\n")
    log_fh.flush()
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)

    def pump():
        for line in proc.stdout:
            buf.write(line)
            log_fh.write(line)
        log_fh.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=10)
    return {"rc": proc.returncode, "timed_out": timed_out,
            "wall_s": round(time.perf_counter() - started, 2), "output": buf.getvalue()}


def steady(step_logs: list[dict[str, float]], skip: int) -> dict[str, Any]:
    """Throughput over the steps after the first `skip` (all of them if there are fewer)."""
    logs = step_logs[skip:] if len(step_logs) > skip else step_logs
    if not logs:
        return {}

    def mean(key):
        vals = [e[key] for e in logs if isinstance(e.get(key), int | float)]
        return statistics.fmean(vals) if vals else None

    secs = [e["step_seconds"] for e in logs if "step_seconds" in e]
    tokens = [e["tokens_per_s"] * e["step_seconds"] for e in logs
              if "tokens_per_s" in e and "step_seconds" in e]
    out = {"steps_used": len(logs), "skipped_first": len(step_logs) - len(logs),
           "mean_tokens_per_s": mean("tokens_per_s"), "mean_mfu": mean("mfu"),
           "mean_images_per_s": mean("images_per_s"), "mean_step_s": mean("step_seconds"),
           "median_step_s": statistics.median(secs) if secs else None,
           "mean_padding_ratio": mean("padding_ratio")}
    if secs and tokens:
        out["tokens_per_s_total"] = sum(tokens) / sum(secs)  # sum tokens / sum time
        out["mean_tokens_per_step"] = statistics.fmean(tokens)
    return out


def summarise_stage(run: Path, stage: str, skip: int) -> dict[str, Any]:
    path = run / stage / "metrics.json"
    if not path.exists():
        return {"metrics_json": None}
    m = json.loads(path.read_text())
    keys = ("seconds", "samples_per_s", "steps", "train_samples", "mean_tokens_per_s",
            "mean_mfu", "mean_images_per_s", "mean_padding_ratio", "mean_grad_norm",
            "loss_first", "loss_last", "runtime", "engine", "trainable", "skipped",
            "margin_before", "margin_after")
    out = {k: m.get(k) for k in keys if k in m}
    out["steady"] = steady(m.get("step_metrics") or [], skip)
    out["step_seconds"] = [round(e.get("step_seconds", 0.0), 4)
                           for e in m.get("step_metrics") or []]
    out["first_step"] = (m.get("step_metrics") or [{}])[0]
    out["attention"] = ("flash_attention_2" if "flash_attention_2" in str(m.get("runtime"))
                        else "sdpa" if "sdpa" in str(m.get("runtime")) else None)
    return out


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str))
    tmp.replace(path)


# ----------------------------------------------------------------------------- preflight


def preflight() -> dict[str, Any]:
    """What this interpreter can import and which GPU it sees (run in a subprocess)."""
    import importlib
    import importlib.metadata as md
    import inspect

    out: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform(), "cpus": os.cpu_count()}
    versions, imports = {}, {}
    for dist, module in (("torch", "torch"), ("transformers", "transformers"),
                         ("tokenizers", "tokenizers"), ("accelerate", "accelerate"),
                         ("deepspeed", "deepspeed"), ("flash-attn", "flash_attn"),
                         ("pydantic", "pydantic"), ("pyarrow", "pyarrow"),
                         ("pillow", "PIL"), ("numpy", "numpy"), ("PyYAML", "yaml"),
                         ("matplotlib", "matplotlib"), ("rich", "rich"),
                         ("safetensors", "safetensors"), ("hjson", "hjson")):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
        try:
            importlib.import_module(module)
            imports[module] = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded, not raised
            imports[module] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    out["versions"], out["imports"] = versions, imports
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                          "total_memory_gib": round(props.total_memory / 2**30, 1),
                          "multiprocessors": props.multi_processor_count,
                          "bf16": torch.cuda.is_bf16_supported(),
                          "count": torch.cuda.device_count()}
    except Exception as exc:  # noqa: BLE001
        out["torch_error"] = str(exc)
    compat = {}
    try:
        from transformers import TrainingArguments

        fields = set(inspect.signature(TrainingArguments).parameters)
        compat["TrainingArguments.activation_checkpointing"] = \
            "activation_checkpointing" in fields
    except Exception as exc:  # noqa: BLE001
        compat["TrainingArguments"] = str(exc)[:300]
    try:
        import transformers

        compat["LlavaNextImageProcessorPil"] = hasattr(transformers,
                                                       "LlavaNextImageProcessorPil")
    except Exception:  # noqa: BLE001
        pass
    for module in ("components.settings", "components.train.stages"):
        try:
            importlib.import_module(module)
            compat[f"import {module}"] = "ok"
        except Exception as exc:  # noqa: BLE001
            compat[f"import {module}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    try:
        from components.accel import detect_runtime

        rt = detect_runtime()
        out["runtime"] = rt.describe()
        out["attn_implementation"] = rt.attn_implementation
    except Exception as exc:  # noqa: BLE001
        out["runtime"] = f"{type(exc).__name__}: {exc}"
    out["compat"] = compat
    return out


# ----------------------------------------------------------------------------- worker


def worker(args) -> int:
    """One stage under torchrun: `run_stage`, then the process's peak CUDA memory."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    record: dict[str, Any] = {"stage": args.worker, "attn": args.attn}
    if args.attn == "sdpa":  # hide flash_attn from components.accel (see --attn)
        import components.accel as accel

        real = accel._importable
        accel._importable = lambda m: False if m == "flash_attn" else real(m)
        accel.detect_runtime.cache_clear()
    import torch

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    rc = 0
    try:
        from components.accel import detect_runtime
        from components.settings import load_settings
        from components.stages import run_stage
        from components.train.distributed import init_process_group

        settings = load_settings(None, args.params)
        init_process_group(settings.engine.ddp_timeout_s)
        record["runtime"] = detect_runtime().describe()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        output, _ = run_stage(args.worker, settings, Path(args.run_dir), progress=False,
                              restart=True)
        record["ok"] = True
        record["counts"] = output.counts
    except BaseException as exc:  # noqa: BLE001 - the orchestrator reads the record
        rc = 1
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = tail(traceback.format_exc())
        traceback.print_exc()
    record["wall_s"] = round(time.perf_counter() - started, 2)
    import resource

    record["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                   / 2**20, 3)  # ru_maxrss is KiB on Linux
    if cuda:
        record["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        record["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        free, total = torch.cuda.mem_get_info()
        record["device_total_gib"] = round(total / 2**30, 1)
    Path(args.worker_out).write_text(json.dumps(record, indent=2, default=str))
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    return rc


# ----------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/train_gpu.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["0.5b", "1b", "both", "paper"], default="0.5b",
                    help="model size (both: 0.5b then 1b, as the budget allows); paper: the "
                    "paper's risks on one GPU (so400m-shaped tower at 10 tiles, ~1B decoder, "
                    "128k vocabulary, 16k packed rows, ZeRO-3, checkpointing, chunked loss, "
                    "DPO step-0 margins, the planner's prediction beside the peak)")
    ap.add_argument("--dry-run", action="store_true",
                    help=f"CPU proof: tiny model, a few steps, writes {DRY_OUT.name}")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"result JSON (default {DEFAULT_OUT.relative_to(REPO)}; dry run: "
                    f"{DRY_OUT.relative_to(REPO)})")
    ap.add_argument("--log", type=Path, default=None,
                    help="every subprocess's output (default: in the work dir, removed with "
                    "it; the JSON keeps each failed stage's tail)")
    ap.add_argument("--steps", type=int, default=None,
                    help="target optimizer steps per stage for sft and dpo (default 30; "
                    "dry run 6): samples = steps x global batch, 1 epoch")
    ap.add_argument("--align-steps", type=int, default=None,
                    help="align steps (default 4; dry run 2): align only builds the model")
    ap.add_argument("--batch", type=int, default=None,
                    help="sft/align global = per-device batch, samples (default 16; dry 4)")
    ap.add_argument("--dpo-batch", type=int, default=None,
                    help="dpo global = per-device batch, pairs = 2x rows (default 8; dry 2)")
    ap.add_argument("--workers", type=int, default=None,
                    help="train.dataloader_workers (default 8; dry run 1)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto", "fp16"])
    ap.add_argument("--strategy", default="zero2", choices=["zero2", "zero3", "ddp", "fsdp"])
    ap.add_argument("--strategy-fallback", default="ddp", choices=["ddp", "none"],
                    help="when the strategy is DeepSpeed and deepspeed does not import on the "
                    "GPU box: run with this instead (recorded), or none (the stages fail)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="train.gradient_checkpointing: true (default off: 139 GiB H200)")
    ap.add_argument("--attn", choices=["auto", "sdpa"], default="auto",
                    help="auto: flash_attention_2 when flash_attn imports (retries a stage "
                    "once with sdpa if it fails on flash-attn); sdpa: never flash-attn")
    ap.add_argument("--packing", action="store_true",
                    help="train.packing: true (rows of model.max_length tokens, flash-attn "
                    "varlen; global batches count rows)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="model.max_length (default 2048; packing is measured at 4k-16k)")
    ap.add_argument("--warmup-steps", type=int, default=3,
                    help="steps left out of the steady-state means")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="total seconds (default 420; dry run 170): stages that would start "
                    "with less than --min-stage-s left are skipped")
    ap.add_argument("--min-stage-s", type=float, default=None,
                    help="least time left to start a stage (default 60; dry run 15)")
    ap.add_argument("--stage-timeout-s", type=float, default=300,
                    help="kill a stage after this long (also capped by the budget)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="run directories (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep-work", action="store_true", help="keep the run directories")
    # internal modes
    ap.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--preflight", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.batch_given = args.batch
    dry = args.dry_run
    for name, gpu, cpu in (("steps", 30, 6), ("align_steps", 4, 2), ("batch", 16, 4),
                           ("dpo_batch", 8, 2), ("workers", 8, 1), ("budget_s", 420, 170),
                           ("min_stage_s", 60, 15)):
        if getattr(args, name) is None:
            setattr(args, name, cpu if dry else gpu)
    if args.out is None:
        args.out = DRY_OUT if dry else DEFAULT_OUT
    return args


def child_env(work: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [
               os.environ.get("PYTHONPATH")])]),
           "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("AMALIA_PARAMS", None)
    env.pop("AMALIA_PROFILE", None)
    return env


def print_table(record: dict[str, Any]) -> None:
    rows = [("size", "stage", "status", "attn", "strategy", "tok/s*", "MFU*", "img/s*",
             "step s*", "peak GiB", "smi MiB", "wall s")]
    for size, sr in record.get("sizes", {}).items():
        for stage in STAGES:
            st = sr.get("stages", {}).get(stage)
            if not st:
                continue
            s = (st.get("metrics") or {}).get("steady") or {}
            eng = (st.get("metrics") or {}).get("engine") or {}
            smi = st.get("nvidia_smi") or {}

            def f(v, fmt):
                return format(v, fmt) if isinstance(v, int | float) else "-"

            rows.append((size, stage, st.get("status", "?"),
                         (st.get("metrics") or {}).get("attention") or "-",
                         eng.get("strategy") or "-", f(s.get("tokens_per_s_total"), ".0f"),
                         f(s.get("mean_mfu"), ".3f"), f(s.get("mean_images_per_s"), ".1f"),
                         f(s.get("median_step_s"), ".3f"),
                         f(st.get("peak_allocated_gib"), ".1f")
                         if "peak_allocated_gib" in st else
                         f"rss {f(st.get('peak_rss_gib'), '.2f')}" if "peak_rss_gib" in st
                         else "-",
                         f(smi.get("max_memory_used_mib"), ".0f"), f(st.get("wall_s"), ".0f")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"* steady state: steps after the first {record['setup']['warmup_steps']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.preflight:
        print("PREFLIGHT " + json.dumps(preflight(), default=str))
        return 0
    if args.worker:
        return worker(args)

    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    out_path = args.out if args.out.is_absolute() else (Path.cwd() / args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="train-gpu-")) if temp else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    log_path = args.log or work / "train_gpu.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = child_env(work)
    if args.size == "paper":
        sizes = ["paper-tiny"] if args.dry_run else ["paper"]
        if not args.dry_run and args.strategy == "zero2":  # the default: paper runs ZeRO-3
            args.strategy = "zero3"
        if args.batch_given is None:
            args.batch, args.dpo_batch = 4, 2  # ~2 samples (~1 pair) per 16k row
    else:
        sizes = ["tiny"] if args.dry_run else (["0.5b", "1b"] if args.size == "both"
                                               else [args.size])
    record: dict[str, Any] = {
        "benchmark": "train_gpu", "date": now_iso(), "status": "running",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dry_run": args.dry_run,
        "setup": {"sizes": sizes, "steps": args.steps, "align_steps": args.align_steps,
                  "batch": args.batch, "dpo_batch_pairs": args.dpo_batch,
                  "workers": args.workers, "precision": args.precision,
                  "strategy_requested": args.strategy,
                  "gradient_checkpointing": args.gradient_checkpointing,
                  "attn": args.attn, "warmup_steps": args.warmup_steps,
                  "packing": args.packing, "max_length": args.max_length,
                  "budget_s": args.budget_s, "launcher": "torch.distributed.run "
                  "--standalone --nproc-per-node 1 (world size 1)"},
        "environment": {}, "sizes": {}, "problems": [],
        "notes": [
            "steady.* = steps after the first setup.warmup_steps; tokens_per_s_total = sum of "
            "tokens / sum of step seconds; tokens are attention-mask tokens (image tokens "
            "included; dpo counts chosen and rejected rows)",
            "mfu is the engine's (components.plan.flops): forward of every part, backward "
            "only where gradients flow, tower tiles per token from the length index, "
            "attention per sample; over the bf16 dense peak looked up by exact GPU name",
            "random weights; the BPE tokenizer is trained on the synthetic texts, so the "
            "vocabulary is a few hundred tokens (sizes.*.tokenizer_vocab): embeddings and "
            "LM head are a negligible share of sizes.*.params",
            "peak_allocated_gib / peak_reserved_gib: torch.cuda.max_memory_* of the stage "
            "process (whole stage: model build/load, planning, training, save); "
            "nvidia_smi.max_memory_used_mib: polled every second while the stage ran",
            "wall_s: the stage process (imports, model build/load, data planning, "
            "DeepSpeed init, training, save); metrics.seconds: the Trainer loop only",
        ],
    }
    log_fh = log_path.open("w", encoding="utf-8")
    try:
        # -- environment
        pre = run_process([sys.executable, str(Path(__file__).resolve()), "--preflight"],
                          env, min(180, max(30, deadline - time.perf_counter())), log_fh)
        line = next((ln for ln in pre["output"].splitlines() if ln.startswith("PREFLIGHT ")),
                    None)
        env_rec = json.loads(line[len("PREFLIGHT "):]) if line else {
            "preflight_error": tail(pre["output"], 2000), "rc": pre["rc"]}
        env_rec["nvidia_smi"] = nvidia_smi()
        record["environment"] = env_rec
        write_json(out_path, record)
        compat = env_rec.get("compat", {})
        if compat.get("import components.train.stages") != "ok":
            record["status"] = "failed"
            record["problems"].append(
                "the training code does not import here: "
                f"{compat.get('import components.train.stages') or env_rec.get('preflight_error')}"
                " (see environment.imports: carry the missing wheels)")
            return 2
        if compat.get("TrainingArguments.activation_checkpointing") is False:
            version = env_rec.get("versions", {}).get("transformers")
            record["problems"].append(
                f"transformers {version} has no TrainingArguments(activation_checkpointing=...), "
                "which components/train/engine.py passes: the stages will fail with a "
                "TypeError (the project pins transformers 5.24.0)")
        cuda = bool(env_rec.get("cuda_available"))
        strategy = args.strategy
        if not cuda and strategy != "ddp":
            record["setup"]["strategy_note"] = (
                f"no CUDA: the engine falls back from {strategy} to DDP over gloo (its "
                "reason is in each stage's engine.strategy_fallback)")
        ds = env_rec.get("imports", {}).get("deepspeed")
        if cuda and strategy.startswith("zero") and ds != "ok":
            if args.strategy_fallback == "ddp":
                record["problems"].append(f"deepspeed does not import ({ds}): ran {strategy} "
                                          "as ddp instead (--strategy-fallback ddp)")
                strategy = "ddp"
            else:
                record["problems"].append(f"deepspeed does not import ({ds}): {strategy} "
                                          "stages will fail")
        record["setup"]["strategy_used"] = strategy
        fa = env_rec.get("imports", {}).get("flash_attn")
        if cuda and fa != "ok":
            record["problems"].append(f"flash_attn does not import ({fa}): attention is sdpa")

        # -- per size (attn and strategy fallbacks carry over to later stages and sizes)
        attn = args.attn
        from tests.train_helpers import write_params

        for size in sizes:
            sr: dict[str, Any] = {"model": SIZES[size], "stages": {}}
            record["sizes"][size] = sr
            root = work / size
            if root.exists():
                shutil.rmtree(root)
            tile = SIZES[size]["vision"]["image_size"]
            counts = {"align": args.align_steps * args.batch, "sft": args.steps * args.batch,
                      "dpo": args.steps * args.dpo_batch, "dpo_eval": args.dpo_batch}
            if deadline - time.perf_counter() < args.min_stage_s:
                sr["status"] = "skipped: budget"
                continue
            try:
                started = time.perf_counter()
                data, run = build_mix(root, tile, counts, shapes=PAPER_SHAPES_IN_TILES
                                      if size in PAPER_SIZES else SHAPES_IN_TILES)
                params = write_params(root / "params.yaml",
                                      settings_overrides(data, size, args, strategy))
                sr["data"] = {"records": counts, "image_shapes_px": [
                    [w * tile, h * tile] for w, h in SHAPES_IN_TILES],
                    "build_s": round(time.perf_counter() - started, 2)}
            except Exception as exc:  # noqa: BLE001
                sr["status"] = "failed"
                sr["error"] = f"{type(exc).__name__}: {exc}"
                sr["traceback"] = tail(traceback.format_exc())
                write_json(out_path, record)
                continue
            failed_before = None
            for stage in STAGES:
                st: dict[str, Any] = {}
                sr["stages"][stage] = st
                if failed_before:
                    st["status"] = f"skipped: {failed_before} failed"
                    continue
                left = deadline - time.perf_counter()
                if left < args.min_stage_s:
                    st["status"] = f"skipped: budget ({left:.0f} s left)"
                    failed_before = failed_before or f"{stage} (budget)"
                    continue
                fallbacks: list[str] = []
                while True:
                    wout = root / f"worker-{stage}.json"
                    wout.unlink(missing_ok=True)
                    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "1", str(Path(__file__).resolve()),
                           "--worker", stage, "--run-dir", str(run), "--params", str(params),
                           "--worker-out", str(wout), "--attn", attn]
                    timeout = min(args.stage_timeout_s, deadline - time.perf_counter())
                    print(f"[{time.perf_counter() - t0:6.1f}s] {size} {stage} (attn {attn}, "
                          f"strategy {strategy}, timeout {timeout:.0f}s)", flush=True)
                    with GpuSampler() as sampler:
                        proc = run_process(cmd, env, timeout, log_fh)
                    wrec = json.loads(wout.read_text()) if wout.exists() else {}
                    st.update({k: v for k, v in wrec.items() if k not in ("stage", "counts")})
                    st["wall_s"] = proc["wall_s"]
                    st["rc"] = proc["rc"]
                    st["nvidia_smi"] = sampler.summary()
                    ok = proc["rc"] == 0 and wrec.get("ok")
                    if ok or proc["timed_out"] or not cuda or \
                            deadline - time.perf_counter() < args.min_stage_s:
                        break
                    # the error itself (not the log, which names flash_attention_2 and
                    # DeepSpeed in its info lines whenever they are used)
                    out = proc["output"]
                    error = (wrec.get("error", "") + "\n" + wrec.get("traceback", "")) if wrec \
                        else out[out.rfind("Traceback"):] if "Traceback" in out else out[-2000:]
                    error = error.lower()
                    if "out of memory" in error:  # no fallback would fit better
                        break
                    if attn == "auto" and "attn" not in fallbacks and (
                            "flash" in error) and env_rec.get("attn_implementation") == \
                            "flash_attention_2":
                        fallbacks.append("attn")
                        st["attn_fallback"] = "failed under flash_attention_2: " + \
                            (wrec.get("error") or error[-500:])[:500]
                        record["problems"].append(f"{size} {stage}: failed under "
                                                  "flash_attention_2, retried with sdpa "
                                                  "(and every later stage runs sdpa)")
                        attn = "sdpa"
                        continue
                    if strategy.startswith("zero") and args.strategy_fallback == "ddp" and \
                            "strategy" not in fallbacks and "deepspeed" in error:
                        fallbacks.append("strategy")
                        st["strategy_fallback"] = f"failed under {strategy}: " + \
                            (wrec.get("error") or error[-500:])[:500]
                        record["problems"].append(f"{size} {stage}: failed in DeepSpeed "
                                                  f"({strategy}), retried as ddp (and every "
                                                  "later stage runs ddp)")
                        strategy = "ddp"
                        record["setup"]["strategy_used"] = "mixed: see each stage's engine"
                        params = write_params(root / "params.yaml",
                                              settings_overrides(data, size, args, strategy))
                        continue
                    break
                if ok:
                    st["status"] = "ok"
                else:
                    st["status"] = "timeout" if proc["timed_out"] else "failed"
                    if "error" not in st:
                        st["error"] = f"rc {proc['rc']}"
                    st["output_tail"] = tail(proc["output"], 2500)
                    failed_before = stage
                st["metrics"] = m = summarise_stage(run, stage, args.warmup_steps)
                rows = 2 * args.dpo_batch if stage == "dpo" else args.batch
                per_step = (m.get("steady") or {}).get("mean_tokens_per_step")
                if per_step:
                    m["steady"]["mean_tokens_per_row"] = round(per_step / rows, 1)
                if isinstance(m.get("seconds"), int | float):
                    st["outside_train_loop_s"] = round(st["wall_s"] - m["seconds"], 1)
                if size in PAPER_SIZES and ok:
                    pred = planner_prediction(params, run, stage, env, log_fh)
                    st["planner"] = pred
                    measured = st.get("peak_allocated_gib")
                    if isinstance(pred.get("peak_gib"), int | float) and measured:
                        st["planner_over_measured"] = round(pred["peak_gib"] / measured, 3)
                    if stage == "dpo":  # the reference is the step-0 policy: margins 0
                        first = m.get("first_step") or {}
                        st["dpo_step0"] = {k: first.get(k) for k in (
                            "rewards/margins", "rewards/chosen", "rewards/rejected")}
                if stage == "align":
                    sr["params"] = safetensors_params(run / "align" / "init")
                    sr["tokenizer_vocab"] = tokenizer_vocab(run / "align" / "init")
                write_json(out_path, record)
            sr["status"] = "ok" if all(s.get("status") == "ok"
                                       for s in sr["stages"].values()) else "incomplete"
            if not args.keep_work:
                shutil.rmtree(root, ignore_errors=True)
        statuses = [sr.get("status") for sr in record["sizes"].values()]
        record["status"] = "ok" if statuses and all(s == "ok" for s in statuses) else \
            "incomplete"
        return 0 if record["status"] == "ok" else 1
    except BaseException as exc:  # noqa: BLE001 - always leave the JSON
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = tail(traceback.format_exc())
        return 2
    finally:
        record["total_s"] = round(time.perf_counter() - t0, 1)
        write_json(out_path, record)
        log_fh.close()
        try:
            print_table(record)
        except Exception as exc:  # noqa: BLE001
            print(f"(table: {exc})")
        removed = temp and not args.keep_work and log_path.is_relative_to(work)
        print(f"wrote {out_path} (log {'removed with the work dir' if removed else log_path})"
              f", status {record['status']}, {record['total_s']} s")
        if temp and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
