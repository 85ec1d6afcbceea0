"""The `validate` stage cut into shards of its input stream, and the shards merged back.

The stage (`components.validate`) streams `chunked(input_specs(settings))` through the
per-record checks in worker processes. Here that stream is cut into N contiguous ranges of
whole chunks, checked by N tasks in parallel, and merged into exactly the stage's layout
(`validated/part-NNNNN.parquet`, `native.jsonl`, `seed_en.jsonl`, `quarantine.jsonl`,
`gx_result.json`, `gx_docs/`, one `report.json`), in input order, so `translate` and `mix`
read a sharded run like a single-process one. Plain Python in five steps; the Prefect flow in
`flows/validate.py` maps the two parallel ones (2 and 4) over tasks:

1. `plan_shards(settings, n, work)`: counts the chunks (one pass over the inputs), cuts them
   into `n` ranges of about as many records, and builds the evaluation-image index once
   (`build_eval_index`, the stage's first pass) into `work/eval_index.npz`.
2. `check_shard(settings, plan, k, shard_dir)`: the stage's per-record checks (decode, pHash,
   language ID, `near_duplicate_of_eval` against the shared index) over range k; the
   outcomes are spooled to `outcomes.pkl` (a file this flow writes and reads back; never
   load one from elsewhere) and their id/content keys to `keys.npz`.
3. `find_duplicates(shard_dirs)`: the only checks that depend on other records,
   `duplicate_id` (the first occurrence owns an id) and `duplicate_record` (same content as
   a kept record), replayed over the keys of every shard in input order with the stage's own
   `SeenKeys`; the records that gain a reason go to each shard's `duplicates.json`.
4. `finish_shard(settings, shard_dir)`: writes the shard like the stage writes its output:
   kept parquet and JSONL views, quarantine, `report.json` (the shard's tally) and Great
   Expectations over its kept rows (`gx_result.json`, `gx_docs/`).
5. `merge_shards(settings, shard_dirs, out)`: parquet parts renumbered in shard order, JSONL
   files concatenated, tallies summed (`total == kept + quarantined`, checked against the
   plan), GX batch results combined (`summarise_gx`; each shard's Data Docs under
   `gx_docs/shard-NNNNN/`), then the stage's own `conclude`: `report.json`, metrics and the
   `max_quarantine_ratio` gate.

Why the decisions equal the stage's: a record's own checks depend only on the record, the
settings and the eval index, which is built once over all inputs exactly as the stage
builds it; the duplicate checks see every record's keys in input order through the same
`SeenKeys`; ranges are whole chunks, so images shared inside a chunk are decoded once as in
the stage (`images_decoded` agrees too). Only the parquet part boundaries differ.

Cost: every shard reads the inputs from the start up to the end of its range (cheap for
JSON text; binary inputs pay the reading, not the decoding, of what they skip), and the
spool holds a shard's candidate rows (with image bytes) until step 4.
"""

from __future__ import annotations

import html
import itertools
import json
import pickle
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import AmaliaError
from components.settings import Settings
from components.stages import MetricLogger, StageOutput
from components.validate import (
    EvalIndex,
    GxRunner,
    Outcome,
    SeenKeys,
    Sinks,
    Tally,
    WorkerConfig,
    build_eval_index,
    check_chunk,
    chunked,
    conclude,
    input_specs,
    ordered_map,
    settle,
    summarise_gx,
)

PLAN_FILE = "plan.json"
EVAL_FILE = "eval_index.npz"
SPOOL_FILE = "outcomes.pkl"
KEYS_FILE = "keys.npz"
DUPLICATES_FILE = "duplicates.json"
VIEWS = ("native.jsonl", "seed_en.jsonl", "quarantine.jsonl")
_LOW64 = (1 << 64) - 1


def shard_dir(work: Path, k: int) -> Path:
    return Path(work) / f"shard-{k:05d}"


# ----------------------------------------------------------------------------- 1. plan


def save_eval_index(index: EvalIndex, path: Path) -> None:
    """`index` as arrays (pHashes, exact-only mask, ids, file digests), order kept."""
    np.savez(path, phash=index.phash.astype(np.uint64), exact_only=index.exact_only,
             ids=np.array(index.ids, dtype=np.str_),
             digests=np.array(list(index.digests), dtype=np.str_),
             digest_ids=np.array(list(index.digests.values()), dtype=np.str_))


def load_eval_index(path: Path | str) -> EvalIndex:
    with np.load(path) as z:
        return EvalIndex(phash=z["phash"].astype(np.uint64), ids=z["ids"].tolist(),
                         exact_only=z["exact_only"].astype(bool),
                         digests=dict(zip(z["digests"].tolist(), z["digest_ids"].tolist(),
                                          strict=True)))


def _worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(cfg=settings.validate_, data_dir=str(settings.data_dir),
                        specs=input_specs(settings), endpoint=settings.ingest.s3_endpoint_url)


def plan_shards(settings: Settings, n: int, work: Path) -> dict[str, Any]:
    """Cut the input stream into at most `n` non-empty ranges of whole chunks and hash the
    eval images once; writes `work/plan.json` and returns it: `records`, `chunks`,
    `eval_images`, `eval_index` (path) and `shards`: `[{"index", "chunks": [first, stop],
    "records"}]`."""
    cfg = settings.validate_
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    config = _worker_config(settings)
    sizes = [len(c) for c in chunked(config.specs, cfg.chunk_size, settings.ingest.hf_split)]
    n = max(1, min(n, len(sizes) or 1))
    bounds = [k * len(sizes) // n for k in range(n + 1)]
    index = build_eval_index(settings, config)
    save_eval_index(index, work / EVAL_FILE)
    plan = {
        "records": sum(sizes), "chunks": len(sizes), "chunk_size": cfg.chunk_size,
        "eval_images": len(index), "eval_index": str(work / EVAL_FILE),
        "shards": [{"index": k, "chunks": [bounds[k], bounds[k + 1]],
                    "records": sum(sizes[bounds[k]:bounds[k + 1]])} for k in range(n)],
    }
    (work / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
    return plan


# ----------------------------------------------------------------------------- 2. check


def check_shard(settings: Settings, plan: dict[str, Any], k: int, out: Path) -> dict[str, Any]:
    """The per-record checks of range `k` of `plan` into `out` (spool + keys); returns
    `{"index", "records", "candidates"}` (candidates: records without reasons of their own)."""
    cfg = settings.validate_
    shard = plan["shards"][k]
    if cfg.chunk_size != plan["chunk_size"]:
        raise AmaliaError(f"validate.chunk_size {cfg.chunk_size} differs from the plan's "
                          f"{plan['chunk_size']}", "plan and check shards with one setting")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = _worker_config(settings)
    config.eval_index = load_eval_index(plan["eval_index"])
    first, stop = shard["chunks"]
    stream = itertools.islice(chunked(config.specs, cfg.chunk_size, settings.ingest.hf_split),
                              first, stop)
    id_keys: list[int] = []
    content_keys: list[int] = []
    has_id: list[bool] = []
    has_content: list[bool] = []
    rejected: list[bool] = []
    with (out / SPOOL_FILE).open("wb") as fh:
        for outcomes in ordered_map(check_chunk, stream, config, cfg.workers, cfg.start_method):
            pickle.dump(outcomes, fh, protocol=pickle.HIGHEST_PROTOCOL)
            for o in outcomes:
                has_id.append(o.id_key is not None)
                id_keys.append(o.id_key or 0)
                has_content.append(o.content_key is not None)
                content_keys.append(o.content_key or 0)
                rejected.append(bool(o.reasons))
    if len(rejected) != shard["records"]:
        raise AmaliaError(f"shard {k}: read {len(rejected)} records where the plan counted "
                          f"{shard['records']}: the inputs changed during the run",
                          "re-run the flow on inputs that stay put")
    np.savez(out / KEYS_FILE, id_key=np.array(id_keys, dtype=np.uint64),
             has_id=np.array(has_id, dtype=bool),
             content_hi=np.array([c >> 64 for c in content_keys], dtype=np.uint64),
             content_lo=np.array([c & _LOW64 for c in content_keys], dtype=np.uint64),
             has_content=np.array(has_content, dtype=bool),
             rejected=np.array(rejected, dtype=bool))
    return {"index": k, "records": len(rejected), "candidates": rejected.count(False)}


# ----------------------------------------------------------------------------- 3. duplicates


def find_duplicates(shard_dirs: list[Path]) -> list[int]:
    """Replay `duplicate_id` / `duplicate_record` over the shards' keys in input order;
    writes each shard's `duplicates.json` (`{"<record index in shard>": [reasons]}`) and
    returns how many records of each shard gained a reason."""
    seen = SeenKeys()
    counts = []
    for d in shard_dirs:
        with np.load(Path(d) / KEYS_FILE) as z:
            columns = [z[name].tolist() for name in ("has_id", "id_key", "has_content",
                                                     "content_hi", "content_lo", "rejected")]
        extra: dict[str, list[str]] = {}
        for j, (with_id, id_key, with_content, hi, lo, bad) in enumerate(zip(*columns,
                                                                             strict=True)):
            reasons = seen.check(bad, id_key if with_id else None,
                                 (hi << 64) | lo if with_content else None)
            if reasons:
                extra[str(j)] = reasons
        (Path(d) / DUPLICATES_FILE).write_text(json.dumps(extra) + "\n")
        counts.append(len(extra))
    return counts


# ----------------------------------------------------------------------------- 4. finish


def _spooled(path: Path):
    with path.open("rb") as fh:
        while True:
            try:
                chunk: list[Outcome] = pickle.load(fh)  # our own spool (check_shard)
            except EOFError:
                return
            yield from chunk


def finish_shard(settings: Settings, out: Path, with_gx: bool = True) -> dict[str, Any]:
    """Write shard `out` in the stage's layout from its spool and `duplicates.json`;
    returns its report (the tally plus `by_kind`, `converted`, `images_decoded`)."""
    out = Path(out)
    for stale in ("validated", "gx_docs"):  # a retried task starts clean
        shutil.rmtree(out / stale, ignore_errors=True)
    extra = {int(j): r for j, r in json.loads((out / DUPLICATES_FILE).read_text()).items()}
    gx = GxRunner(settings, (out / "gx_docs").resolve(), background=True) if with_gx else None
    sinks = Sinks(out, settings, gx)
    tally = Tally()
    try:
        for j, o in enumerate(_spooled(out / SPOOL_FILE)):
            settle(o, [*o.reasons, *extra.get(j, [])], sinks, tally)
    except BaseException:
        sinks.close(run_gx=False)
        raise
    sinks.close()
    gx_result = gx.finish() if gx is not None else summarise_gx([], None)
    (out / "gx_result.json").write_text(json.dumps(gx_result, indent=2, ensure_ascii=False,
                                                   default=str))
    report = {**tally.report(), **sinks.facts()}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for name in (SPOOL_FILE, KEYS_FILE):
        (out / name).unlink()
    return report


# ----------------------------------------------------------------------------- 5. merge


def merge_tallies(reports: list[dict[str, Any]]) -> Tally:
    """The `Tally` of several shard reports (every count summed)."""
    tally = Tally()
    for r in reports:
        tally.total += r["total"]
        tally.kept += r["kept"]
        tally.quarantined += r["quarantined"]
        tally.by_reason.update(r["by_reason"])
        for source, counts in r["by_source"].items():
            tally.by_source.setdefault(source, Counter(total=0, kept=0, quarantined=0)
                                       ).update(counts)
    return tally


def merge_facts(reports: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind, converted = Counter(), Counter()
    for r in reports:
        by_kind.update(r["by_kind"])
        converted.update(r["converted"])
    return {"by_kind": dict(sorted(by_kind.items())),
            "converted": dict(sorted(converted.items())),
            "images_decoded": sum(r["images_decoded"] for r in reports)}


def _merge_docs(shard_dirs: list[Path], out: Path, suites: list[list[str]]) -> str | None:
    """Move each shard's Data Docs to `out/gx_docs/shard-NNNNN/` under one index page."""
    entries = []
    for d, names in zip(shard_dirs, suites, strict=True):
        if (Path(d) / "gx_docs" / "index.html").exists():
            target = out / "gx_docs" / Path(d).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(d) / "gx_docs"), target)
            entries.append(f'<li><a href="{Path(d).name}/index.html">{Path(d).name}</a>: '
                           + ", ".join(html.escape(f"amalia_vl_{s}") for s in names) + "</li>")
    if not entries:
        return None
    (out / "gx_docs" / "index.html").write_text(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>amalia-vl validate: Great "
        "Expectations</title></head><body><h1>Data Docs per shard</h1><ul>"
        + "".join(entries) + "</ul></body></html>\n", encoding="utf-8")
    return "gx_docs/index.html"


def merge_shards(settings: Settings, shard_dirs: list[Path], out: Path,
                 expected_records: int | None = None,
                 log_metrics: MetricLogger | None = None) -> StageOutput:
    """Merge finished shards, in order, into the stage directory `out` and conclude the stage
    (report, metrics, quarantine-ratio gate: `DataQualityError` after the report is written).
    `expected_records` (the plan's count) must equal the records merged."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shard_dirs = [Path(d) for d in shard_dirs]
    parts = [p for d in shard_dirs for p in sorted((d / "validated").glob("part-*.parquet"))]
    if parts:
        (out / "validated").mkdir()
        for i, part in enumerate(parts):
            part.replace(out / "validated" / f"part-{i:05d}.parquet")
    for name in VIEWS:
        with (out / name).open("wb") as dst:
            for d in shard_dirs:
                with (d / name).open("rb") as src:
                    shutil.copyfileobj(src, dst)
    reports = [json.loads((d / "report.json").read_text()) for d in shard_dirs]
    tally = merge_tallies(reports)
    if tally.total != tally.kept + tally.quarantined or (
            expected_records is not None and tally.total != expected_records):
        raise AmaliaError(f"merged {tally.total} records ({tally.kept} kept + "
                          f"{tally.quarantined} quarantined) where the plan counted "
                          f"{expected_records}", "re-run the flow")
    gx_shards = [json.loads((d / "gx_result.json").read_text()) for d in shard_dirs]
    results = [r for g in gx_shards for r in g.get("results", [])]
    docs = _merge_docs(shard_dirs, out, [sorted(g.get("suites", {})) for g in gx_shards])
    return conclude(settings, out, tally, merge_facts(reports), input_specs(settings),
                    summarise_gx(results, docs), log_metrics,
                    report_extra={"shards": len(shard_dirs)})


def validate_in_shards(settings: Settings, out: Path, n: int, work: Path,
                       with_gx: bool = True) -> StageOutput:
    """Every step in this process, one shard after another (what the flow spreads over
    tasks): the reference for tests and a way to run the sharded path without Prefect."""
    plan = plan_shards(settings, n, work)
    dirs = [shard_dir(work, s["index"]) for s in plan["shards"]]
    for s, d in zip(plan["shards"], dirs, strict=True):
        check_shard(settings, plan, s["index"], d)
    find_duplicates(dirs)
    for d in dirs:
        finish_shard(settings, d, with_gx=with_gx)
    return merge_shards(settings, dirs, out, expected_records=plan["records"])
