"""Benchmark (simulation): parquet row-group reads per epoch at paper scale, before and
after rank-aware reading (components/train/dataset.py `BlockShuffleSampler`).

    .venv/bin/python bench/row_group_reads.py            # ~3-5 min on 2 cores
    .venv/bin/python bench/row_group_reads.py --samples 500000 --ranks 16   # quicker

Layout (as the mix writes it): `--samples` sft samples in shards of 50,000 rows, row
groups of 1,024 rows (so every shard has 48 full groups and one of 848); packing puts
~`--per-row` samples in a row, inside each group: each group's packed-row count is drawn
around 1,024 / per-row (sd 2%; the short group proportionally). Training: `--ranks` x
`--workers` DataLoader workers, one packed row per micro-batch (the paper's micro-batch
bounded by 16k tokens), accumulation `--accumulation`.

The reads are counted by `components.train.dataset.row_group_reads`: the sampler's order
for one epoch, cut into batches and dealt to ranks by Accelerate's own
`BatchSamplerShard` (imported, not re-implemented), each rank's j-th batch to worker
j % workers, each worker caching 2 row groups (`dataset._row_group`'s LRU). "before": the
previous sampler (groups in a random order, rows shuffled inside: the interleaved order
Accelerate spreads over every reader); "after": the same sampler told the launch
(world size, workers, batch, accumulation). Also reported: rows left out of / repeated
in the epoch by the balance (see the sampler's docstring) and the epoch's length.
Writes bench/results/row_group_reads.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from components.train.dataset import BlockShuffleSampler, row_group_reads

OUT = Path(__file__).resolve().parent / "results" / "row_group_reads.json"


def layout(samples: int, group_rows: int, shard_rows: int, per_row: float,
           seed: int) -> list[int]:
    """Packed rows per row group, in file order."""
    rng = np.random.default_rng(seed)
    sizes = []
    left = samples
    while left > 0:
        in_shard = min(shard_rows, left)
        left -= in_shard
        while in_shard > 0:
            n = min(group_rows, in_shard)
            in_shard -= n
            sizes.append(max(1, round(rng.normal(n / per_row, 0.02 * n / per_row))))
    return sizes


def measure(groups: list[np.ndarray], group_of: np.ndarray, sampler, args) -> dict:
    started = time.perf_counter()
    reads = row_group_reads(sampler, group_of, args.ranks, args.workers, 1)
    order = list(sampler)
    unique = len(set(order))
    rows = int(len(group_of))
    return {
        "reads_per_group_mean": round(float(reads.mean()), 3),
        "reads_per_group_max": int(reads.max()),
        "groups_never_read": int((reads == 0).sum()),
        "epoch_rows": len(order),
        "rows_left_out": rows - unique,
        "rows_repeated": len(order) - unique,
        "left_out_share": round((rows - unique) / rows, 4),
        "repeated_share": round((len(order) - unique) / rows, 4),
        "simulation_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5_000_000)
    parser.add_argument("--group-rows", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--per-row", type=float, default=5.0)
    parser.add_argument("--ranks", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    sizes = layout(args.samples, args.group_rows, args.shard_rows, args.per_row, args.seed)
    groups, start = [], 0
    for n in sizes:
        groups.append(np.arange(start, start + n))
        start += n
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    before = BlockShuffleSampler(groups, args.seed)
    after = BlockShuffleSampler(groups, args.seed, world_size=args.ranks, batch_size=1,
                                workers=args.workers, accumulation=args.accumulation)
    result = {
        "what": "parquet row-group reads per epoch, simulated with Accelerate's "
                "BatchSamplerShard + the DataLoader worker round-robin + a 2-group cache "
                "per worker",
        "layout": {"samples": args.samples, "group_rows": args.group_rows,
                   "shard_rows": args.shard_rows, "samples_per_packed_row": args.per_row,
                   "row_groups": len(sizes), "packed_rows": int(start),
                   "ranks": args.ranks, "workers_per_rank": args.workers,
                   "readers": args.ranks * args.workers, "per_device_rows": 1,
                   "accumulation": args.accumulation},
        "before": measure(groups, group_of, before, args),
        "after": measure(groups, group_of, after, args),
        "target": "<= 1 read per row group per epoch",
    }
    result["target_met"] = result["after"]["reads_per_group_max"] <= 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
