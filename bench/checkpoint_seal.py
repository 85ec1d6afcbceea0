"""Benchmark: sealing and verifying a checkpoint, the hashing split over the ranks.

    .venv/bin/python bench/checkpoint_seal.py                # ~1 min on 2 cores
    .venv/bin/python bench/checkpoint_seal.py --shard-mib 512 --model-mib 256

What it does, for world sizes 1 and 2 (real `torchrun`, gloo, one process per core):

1. Writes a synthetic checkpoint as ZeRO leaves it: one optimizer shard of `--shard-mib`
   per rank (random bytes) plus a consolidated `model.safetensors` of `--model-mib`, and
   a few small files (trainer state, RNG states).
2. Every rank times `components.train.checkpoints.seal` (its share of the pieces, the
   gather, rank 0's write) and then `resume_point` (its share re-hashed, the verdict
   gathered), and reports the bytes it hashed.
3. For comparison, the former design at the same world size: one process hashing every
   file of the checkpoint (rank 0 at a save, and every rank at a resume).

The contract measured: bytes hashed per rank ~ total / world size, so for a fixed
per-rank shard the seconds per rank stay flat as the world grows, while the former
rank-0-hashes-all cost grows with it. The machine is shared (2 cores, other jobs): the
load average is recorded beside the timings. Writes bench/results/checkpoint_seal.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def write_checkpoint(folder: Path, world_size: int, shard_mib: int, model_mib: int) -> int:
    folder.mkdir(parents=True)
    files = {f"global_step8/zero_pp_rank_{r}_mp_rank_00_optim_states.pt": shard_mib * MIB
             for r in range(world_size)}
    files["model.safetensors"] = model_mib * MIB
    files.update({"trainer_state.json": 4096, "scheduler.pt": 1024,
                  **{f"rng_state_{r}.pth": 16_000 for r in range(world_size)}})
    for rel, size in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        with (folder / rel).open("wb") as fh:
            left = size
            while left:
                block = os.urandom(min(left, 8 * MIB))
                fh.write(block)
                left -= len(block)
    return sum(files.values())


def one_process_hash_all(folder: Path) -> float:
    """The former design's cost: one process hashes every file (rank 0 at a save)."""
    started = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "amalia_checkpoint.json":
            h = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(MIB):
                    h.update(block)
    return time.perf_counter() - started


def worker(folder: Path, out: Path) -> None:
    """One rank: seal, then verify at resume; rank 0 writes every rank's figures."""
    import torch.distributed as dist

    from components.train import checkpoints
    from components.train.distributed import init_process_group, world

    init_process_group(600)
    ws = world()
    started = time.perf_counter()
    checkpoints.seal(folder, "bench", 8, world_size=ws.world_size)
    ws.barrier()
    seal_s = time.perf_counter() - started
    started = time.perf_counter()
    point = checkpoints.resume_point(folder.parent, "bench", world_size=ws.world_size)
    verify_s = time.perf_counter() - started
    assert point is not None and point.step == 8
    mine = {"rank": ws.rank, "seal_s": round(seal_s, 3), "verify_s": round(verify_s, 3)}
    rows: list = [None] * ws.world_size if ws.distributed else [mine]
    if ws.distributed:
        dist.all_gather_object(rows, mine)
    if ws.is_main:
        record = json.loads((folder / checkpoints.SEAL).read_text())
        for row in rows:
            row["hashed_mib"] = round(record["hashed_bytes"][str(row["rank"])] / MIB, 1)
        out.write_text(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-mib", type=int, default=256)
    ap.add_argument("--model-mib", type=int, default=128)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.worker, args.out)
        return
    results = []
    for world_size in args.worlds:
        with tempfile.TemporaryDirectory(prefix="seal-bench-") as tmp:
            folder = Path(tmp) / "checkpoints" / "checkpoint-8"
            total = write_checkpoint(folder, world_size, args.shard_mib, args.model_mib)
            out = Path(tmp) / "ranks.json"
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc-per-node={world_size}", __file__, "--worker",
                            str(folder), "--out", str(out)], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ranks = json.loads(out.read_text())
            results.append({
                "world_size": world_size, "total_mib": round(total / MIB, 1),
                "ranks": ranks,
                "max_seal_s_per_rank": max(r["seal_s"] for r in ranks),
                "max_verify_s_per_rank": max(r["verify_s"] for r in ranks),
                "max_hashed_mib_per_rank": max(r["hashed_mib"] for r in ranks),
                "former_rank0_hashed_mib": round(total / MIB, 1),
                "former_one_process_hash_all_s": round(one_process_hash_all(folder), 3),
            })
            print(json.dumps(results[-1]), flush=True)
    report = {"bench": "checkpoint_seal", "shard_mib_per_rank": args.shard_mib,
              "model_mib": args.model_mib, "load_average": os.getloadavg(),
              "cores": os.cpu_count(), "results": results}
    target = REPO / "bench" / "results" / "checkpoint_seal.json"
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
