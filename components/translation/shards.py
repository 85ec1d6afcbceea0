"""Cut a JSONL file into shards and merge the shards' translation outputs back.

`split_shards(src, n, shard_dir)` writes `shard-00000.jsonl` ... as contiguous runs of
the source's physical lines (blank lines included, so `line_offset + line` is the line in
the source), about the same number of records each. `merge_shards(shard_out_dirs,
out_dir)` concatenates their `seed_pt.jsonl` and `quarantine.jsonl` in shard order (the
same order a single-process run writes) and adds their reports up. Plain Python: the
Prefect flow in `flows/translate.py` maps one task per shard over these.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from components.translation.engine import OUTPUT_FILE, QUARANTINE_FILE, REPORT_FILE

# Report fields that add up across shards.
SUMMED = ("total", "kept", "quarantined", "texts", "passthrough", "cache_hits", "cache_misses",
          "cache_seeded", "backend_failed", "source_tokens", "backend_source_tokens",
          "generated_tokens", "variety_flagged")


def split_shards(src: Path, n: int, shard_dir: Path) -> list[dict[str, Any]]:
    """Write up to `n` shard files; returns `[{"path", "line_offset", "records"}]`."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    records = [i for i, line in enumerate(lines) if line.strip()]
    n = max(1, min(n, len(records) or 1))
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    start = 0
    for k in range(n):
        # shard k takes the records [k*len/n, (k+1)*len/n) and the blank lines before them
        last = records[((k + 1) * len(records)) // n - 1] if records else -1
        end = len(lines) if k == n - 1 else last + 1
        path = shard_dir / f"shard-{k:05d}.jsonl"
        path.write_text("".join(lines[start:end]), encoding="utf-8")
        shards.append({"path": str(path), "line_offset": start,
                       "records": sum(1 for line in lines[start:end] if line.strip())})
        start = end
    return shards


def _sum_counters(reports: list[dict[str, Any]], key: str) -> dict[str, Any]:
    total: Counter = Counter()
    for r in reports:
        total.update({k: v for k, v in r.get(key, {}).items() if isinstance(v, int | float)})
    return dict(sorted(total.items()))


def merge_reports(reports: list[dict[str, Any]], wall_seconds: float | None = None
                  ) -> dict[str, Any]:
    """One report for several shards; `tokens_per_s` over `wall_seconds` when given (the
    shards ran in parallel), else over the summed shard seconds."""
    if not reports:
        return {}
    merged: dict[str, Any] = {k: sum(r.get(k, 0) for r in reports) for k in SUMMED}
    merged["by_reason"] = _sum_counters(reports, "by_reason")
    sources = sorted({s for r in reports for s in r.get("by_source", {})})
    merged["by_source"] = {s: _sum_counters([r.get("by_source", {}) for r in reports], s)
                           for s in sources}
    first = reports[0]
    merged.update(backend=first.get("backend"), model=first.get("model"), shards=len(reports))
    looked_up = merged["cache_hits"] + merged["cache_misses"]
    merged["cache_hit_ratio"] = round(merged["cache_hits"] / looked_up, 4) if looked_up else 0.0
    shard_seconds = sum(r.get("seconds", 0.0) for r in reports)
    backend_seconds = sum(r.get("backend_seconds", 0.0) for r in reports)
    seconds = wall_seconds if wall_seconds is not None else shard_seconds
    merged["seconds"] = round(seconds, 3)
    merged["shard_seconds"] = round(shard_seconds, 3)
    merged["backend_seconds"] = round(backend_seconds, 3)
    merged["tokens_per_s"] = round(merged["source_tokens"] / seconds, 1) if seconds else 0.0
    merged["backend_tokens_per_s"] = (round(merged["backend_source_tokens"] / backend_seconds, 1)
                                      if backend_seconds else 0.0)
    merged["generated_tokens_per_s"] = (round(merged["generated_tokens"] / backend_seconds, 1)
                                        if backend_seconds else 0.0)
    merged["language_check"] = {
        "library": first.get("language_check", {}).get("library"),
        **{k: sum(r.get("language_check", {}).get(k, 0) for r in reports)
           for k in ("checked", "flagged")}}
    merged["variety"] = {
        "available": all(r.get("variety", {}).get("available") for r in reports),
        "detector": first.get("variety", {}).get("detector"),
        **{k: sum(r.get("variety", {}).get(k, 0) for r in reports)
           for k in ("checked", "flagged", "normalised_br")}}
    return merged


def merge_shards(shard_out_dirs: list[Path], out_dir: Path,
                 wall_seconds: float | None = None) -> dict[str, Any]:
    """Concatenate shard outputs into `out_dir`; writes and returns the merged report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (OUTPUT_FILE, QUARANTINE_FILE):
        with (out_dir / name).open("w", encoding="utf-8") as dst:
            for shard in shard_out_dirs:
                dst.write((Path(shard) / name).read_text(encoding="utf-8"))
    reports = [json.loads((Path(s) / REPORT_FILE).read_text()) for s in shard_out_dirs]
    merged = merge_reports(reports, wall_seconds)
    (out_dir / REPORT_FILE).write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    return merged
