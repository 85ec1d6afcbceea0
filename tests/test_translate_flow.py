"""Scale-out: shards split and merged exactly, and the Prefect flow mapping shard tasks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.data.synthetic import generate
from components.manifest import read_manifest
from components.records import iter_jsonl, read_records
from components.settings import load_settings
from components.stages import run_stage
from components.translation.shards import merge_reports, split_shards

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}


def overrides(data: Path, cache: Path) -> dict:
    return {"data_dir": str(data), "synthetic": SMALL, "translate": {"cache_dir": str(cache)}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Seed data whose memory lacks one caption near the end (one quarantined record)."""
    root = tmp_path_factory.mktemp("translate-flow") / "data"
    generate(root, load_settings("ci", overrides={"synthetic": SMALL}))
    memory = root / "seed_en" / "translation_memory.jsonl"
    caption = [r for r in read_records(root / "seed_en" / "records.jsonl")
               if r.kind == "caption"][-2]
    rows = [line for line in memory.read_text(encoding="utf-8").splitlines()
            if json.loads(line)["source"] != caption.text]
    memory.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_split_keeps_every_line_and_its_number(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    lines = ['{"n": 1}', "", '{"n": 2}', '{"n": 3}', "", "", '{"n": 4}', '{"n": 5}']
    src.write_text("\n".join(lines) + "\n")
    shards = split_shards(src, 3, tmp_path / "shards")
    assert [s["records"] for s in shards] == [1, 2, 2]
    seen = [(s["line_offset"] + ln, obj["n"]) for s in shards
            for ln, obj in iter_jsonl(Path(s["path"]))]
    assert seen == [(i, obj["n"]) for i, obj in iter_jsonl(src)]
    assert len(split_shards(src, 10, tmp_path / "more")) == 5  # never an empty shard


def test_merged_report_adds_up() -> None:
    a = {"total": 3, "kept": 2, "quarantined": 1, "by_reason": {"copied": 1},
         "by_source": {"seed_en": {"total": 3, "kept": 2, "quarantined": 1}},
         "source_tokens": 30, "seconds": 1.0, "cache_hits": 1, "cache_misses": 2,
         "variety_flagged": 1, "variety": {"available": True, "flagged": 1}}
    b = {**a, "by_reason": {"copied": 1, "length_ratio": 1}, "seconds": 2.0}
    merged = merge_reports([a, b], wall_seconds=2.0)
    assert merged["total"] == 6 and merged["by_reason"] == {"copied": 2, "length_ratio": 1}
    assert merged["by_source"]["seed_en"] == {"total": 6, "kept": 4, "quarantined": 2}
    assert merged["tokens_per_s"] == 30.0 and merged["shard_seconds"] == 3.0
    assert merged["variety_flagged"] == 2 and merged["cache_hit_ratio"] == 0.3333


def test_prefect_flow_maps_shards_and_matches_the_stage(prefect_server, data: Path,
                                                        tmp_path: Path) -> None:
    from flows.translate import translate_shards

    settings = load_settings("ci", overrides=overrides(data, tmp_path / "cache-single"))
    single = tmp_path / "single"
    run_stage("validate", settings, single, progress=False)
    run_stage("translate", settings, single, progress=False)

    sharded = tmp_path / "sharded"
    shutil.copytree(single / "validate", sharded / "validate")
    report = translate_shards(str(sharded), shards=2, profile="ci",
                              overrides=overrides(data, tmp_path / "cache-flow"))

    assert report["shards"] == 2 and report["total"] == 30 and report["quarantined"] == 1
    for name in ("seed_pt.jsonl", "quarantine.jsonl"):
        assert (sharded / "translate" / name).read_text() == \
            (single / "translate" / name).read_text(), name
    quarantined = json.loads((sharded / "translate" / "quarantine.jsonl").read_text())
    line = next(ln for ln, obj in iter_jsonl(single / "validate" / "seed_en.jsonl")
                if obj["id"] == quarantined["id"])
    assert quarantined["line"] == line and line > 15  # in the second shard, counted globally
    single_report = json.loads((single / "translate" / "report.json").read_text())
    for key in ("total", "kept", "quarantined", "by_reason", "by_source"):
        assert report[key] == single_report[key], key
    assert report["tokens_per_s"] > 0 and report["variety"]["available"]
    manifest = read_manifest(sharded, "translate")
    assert manifest["shards"] == 2 and manifest["counts"]["kept"] == 29
    assert not (sharded / "translate.shards").exists()

    # a second flow run is served by the shared cache
    again = translate_shards(str(sharded), shards=2, profile="ci",
                             overrides=overrides(data, tmp_path / "cache-flow"))
    assert again["cache_misses"] == 1  # only the text the memory cannot translate
    looked_up = report["cache_hits"] + report["cache_misses"]
    assert again["cache_hits"] == looked_up - 1 and report["cache_misses"] > 1
