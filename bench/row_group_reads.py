"""Benchmark (simulation): parquet row-group reads per epoch at paper scale, before and
after rank-aware reading, and what balancing the streams costs (components/train/dataset.py
`BlockShuffleSampler` / `StreamSampler`, components/train/packing.py `equalise_streams`).

    .venv/bin/python bench/row_group_reads.py            # ~3 min on 2 cores
    .venv/bin/python bench/row_group_reads.py --samples 500000 --ranks 16   # quicker
    .venv/bin/python bench/row_group_reads.py --skip-before   # ~2 min: no interleaved case

Layout (as the mix writes it): `--samples` sft samples in shards of 50,000 rows, row
groups of 1,024 rows (so every shard has 48 full groups and one of 848). Each sample gets
a token length (log-normal, median `--row-tokens` / `--per-row`, clipped to a row), and
the samples of each group are packed into `--row-tokens` rows by the packer itself
(`packing.pack_rows`: first-fit decreasing inside each group), ~`--per-row` samples a
row. Training: `--ranks` x `--workers` DataLoader workers, one packed row per
micro-batch (the paper's micro-batch bounded by 16k tokens), accumulation
`--accumulation`.

The reads are counted by `components.train.dataset.row_group_reads`: the sampler's order
for one epoch, cut into batches and dealt to ranks by Accelerate's own
`BatchSamplerShard` (imported, not re-implemented), each rank's j-th batch to worker
j % workers, each worker caching 2 row groups (`dataset._row_group`'s LRU). Cases:
"before": the interleaved block shuffle (groups in a random order, rows shuffled inside;
Accelerate spreads every group over every reader); "balanced_by_dropping": the
rank-aware `BlockShuffleSampler` told the launch, which balances the streams by leaving
rows of long streams out and repeating rows in short ones (what padded batches still
do); "packed_split_equalised": what packed training runs, the rows dealt to streams once
for the launch and rows of the short streams split until every stream holds as many
(`equalise_streams` + `StreamSampler`): every sample once, at the cost of more, less full
rows (`extra_rows_share`, `fill_before` -> `fill_after`: real tokens over rows x
`--row-tokens`). Writes bench/results/row_group_reads.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from components.train.dataset import BlockShuffleSampler, StreamSampler, row_group_reads
from components.train.packing import equalise_streams, pack_rows

OUT = Path(__file__).resolve().parent / "results" / "row_group_reads.json"


def sample_groups(samples: int, group_rows: int, shard_rows: int) -> list[np.ndarray]:
    """Sample indices per row group, in file order."""
    groups, start, left = [], 0, samples
    while left > 0:
        in_shard = min(shard_rows, left)
        left -= in_shard
        while in_shard > 0:
            n = min(group_rows, in_shard)
            in_shard -= n
            groups.append(np.arange(start, start + n))
            start += n
    return groups


def measure(sampler, group_of: np.ndarray, rows: list[np.ndarray], samples: int,
            args) -> dict:
    """Reads per group, and rows / samples left out of and repeated in the epoch."""
    started = time.perf_counter()
    order = list(sampler)
    reads = row_group_reads(order, group_of, args.ranks, args.workers, 1)
    n_rows = int(len(group_of))
    unique = np.unique(np.asarray(order, dtype=np.int64))
    trained = np.bincount(np.concatenate([rows[k] for k in order]), minlength=samples)
    return {
        "reads_per_group_mean": round(float(reads.mean()), 3),
        "reads_per_group_max": int(reads.max()),
        "groups_never_read": int((reads == 0).sum()),
        "epoch_rows": len(order),
        "rows_left_out": n_rows - len(unique),
        "rows_repeated": len(order) - len(unique),
        "left_out_share": round((n_rows - len(unique)) / n_rows, 4),
        "repeated_share": round((len(order) - len(unique)) / n_rows, 4),
        "samples_left_out": int((trained == 0).sum()),
        "samples_repeated": int(np.clip(trained - 1, 0, None).sum()),
        "simulation_seconds": round(time.perf_counter() - started, 1),
    }


def fill(rows: list[np.ndarray], lengths: np.ndarray, capacity: int) -> float:
    return round(float(lengths.sum() / (len(rows) * capacity)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5_000_000)
    parser.add_argument("--group-rows", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--per-row", type=float, default=5.0)
    parser.add_argument("--row-tokens", type=int, default=16384)
    parser.add_argument("--ranks", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-before", action="store_true",
                        help="leave out the interleaved case (~40 s of the run)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    groups = sample_groups(args.samples, args.group_rows, args.shard_rows)
    median = args.row_tokens / args.per_row * 0.95  # FFD leaves ~5% of a row free
    lengths = np.clip(rng.lognormal(np.log(median), 0.35, size=args.samples), 64,
                      args.row_tokens).astype(np.int64)
    rows, row_groups = pack_rows(groups, lengths, args.row_tokens)
    group_of = np.empty(len(rows), dtype=np.int64)
    for g, members in enumerate(row_groups):
        group_of[members] = g
    packing_seconds = round(time.perf_counter() - started, 1)
    launch = {"world_size": args.ranks, "workers": args.workers, "batch_size": 1,
              "accumulation": args.accumulation}

    result: dict = {
        "what": "parquet row-group reads per epoch, simulated with Accelerate's "
                "BatchSamplerShard + the DataLoader worker round-robin + a 2-group cache "
                "per worker; and what balancing the (rank, worker) streams costs",
        "layout": {"samples": args.samples, "group_rows": args.group_rows,
                   "shard_rows": args.shard_rows, "row_tokens": args.row_tokens,
                   "samples_per_packed_row": round(args.samples / len(rows), 3),
                   "row_groups": len(groups), "packed_rows": len(rows),
                   "ranks": args.ranks, "workers_per_rank": args.workers,
                   "readers": args.ranks * args.workers, "per_device_rows": 1,
                   "accumulation": args.accumulation, "packing_seconds": packing_seconds},
    }
    if not args.skip_before:
        result["before"] = measure(BlockShuffleSampler(row_groups, args.seed), group_of,
                                   rows, args.samples, args)
    result["balanced_by_dropping"] = measure(
        BlockShuffleSampler(row_groups, args.seed, **launch), group_of, rows, args.samples,
        args)

    started = time.perf_counter()
    split, layout, split_group = equalise_streams(rows, row_groups, lengths, seed=args.seed,
                                                  **launch)
    equalise_seconds = round(time.perf_counter() - started, 1)
    sampler = StreamSampler(layout.streams, layout.rows_per_stream, args.seed, batch_size=1)
    packed = measure(sampler, split_group, split, args.samples, args)
    packed.update({
        "rows_before": len(rows), "rows_after": len(split),
        "extra_rows_share": round(len(split) / len(rows) - 1, 4),
        "fill_before": fill(rows, lengths, args.row_tokens),
        "fill_after": fill(split, lengths, args.row_tokens),
        "samples_per_row_after": round(args.samples / len(split), 3),
        "rows_per_stream": layout.rows_per_stream,
        "layout_rows_left_out": layout.rows_left_out,
        "layout_rows_repeated": layout.rows_repeated,
        "equalise_seconds": equalise_seconds,
    })
    result["packed_split_equalised"] = packed
    result["target"] = ("<= 1 read per row group per epoch; packed: every sample exactly "
                        "once per epoch")
    result["target_met"] = (
        result["balanced_by_dropping"]["reads_per_group_max"] <= 1
        and packed["reads_per_group_max"] <= 1
        and packed["samples_left_out"] == packed["samples_repeated"] == 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
