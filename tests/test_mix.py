"""The mix stage: weights, determinism, and evaluation data kept apart from training data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.data.synthetic import generate
from components.errors import DataQualityError
from components.mix import check_no_leak
from components.records import read_records
from components.settings import load_settings
from components.stages import run_stage

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
FILES = ("align", "sft", "dpo", "eval", "dpo_eval")


def settings_for(data_dir: Path, **overrides):
    return load_settings("ci", overrides={"data_dir": str(data_dir), "synthetic": SMALL,
                                          **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """A data dir and a run dir where validate and translate have finished."""
    base = tmp_path_factory.mktemp("mix")
    data, run = base / "data", base / "run"
    settings = settings_for(data)
    generate(data, settings)
    run_stage("validate", settings, run, progress=False)
    run_stage("translate", settings, run, progress=False)
    return data, run


def mix(data: Path, run: Path, **overrides):
    return run_stage("mix", settings_for(data, **overrides), run, progress=False)


def test_default_weights_take_every_record_once(prepared, tmp_path: Path) -> None:
    data, run = prepared
    out, manifest = mix(data, run)
    stage = run / "mix"
    # 5 families x 8 train images native + 10 translated seed records per kind
    assert out.counts == {"align": 50, "sft": 50, "dpo": 50, "eval": 20, "dpo_eval": 20}
    kinds = {"align": "caption", "sft": "qa", "dpo": "preference", "eval": "qa",
             "dpo_eval": "preference"}
    for name in FILES:
        records = read_records(stage / f"{name}.jsonl")
        assert {r.kind for r in records} == {kinds[name]}
        assert all(r.language == "pt-PT" for r in records)
    report = json.loads((stage / "mix_report.json").read_text())
    assert report["stages"]["sft"]["by_source"] == {"native": 40, "seed_en": 10}
    assert report["stages"]["eval"]["by_task_family"]["chart"] == 4
    assert (stage / "mix_report.png").stat().st_size > 1000
    assert {"mix_report.json", "mix_report.png"} <= set(manifest["outputs"])


def test_eval_never_shares_images_with_train(prepared) -> None:
    data, run = prepared
    mix(data, run)
    stage = run / "mix"
    train = {r.image for n in ("align", "sft", "dpo") for r in read_records(stage / f"{n}.jsonl")}
    for name in ("eval", "dpo_eval"):
        records = read_records(stage / f"{name}.jsonl")
        assert all(r.split == "test" and r.source == "native" for r in records)
        assert not {r.image for r in records} & train


def test_weights_scale_sources(prepared, tmp_path: Path) -> None:
    data, _ = prepared
    run = tmp_path / "run"
    shutil.copytree(prepared[1], run)
    weights = {"align": {"native": 0.5, "seed": 2.0}, "sft": {"native": 1.0, "seed": 0.0},
               "dpo": {"native": 1.5, "seed": 1.0}}
    out, _ = mix(data, run, mix=weights)
    report = json.loads((run / "mix" / "mix_report.json").read_text())["stages"]
    assert report["align"]["by_source"] == {"native": 20, "seed_en": 20}
    assert report["sft"]["by_source"] == {"native": 40}
    assert report["dpo"]["by_source"] == {"native": 60, "seed_en": 10}
    assert out.counts["eval"] == 20  # evaluation sets are never re-weighted
    align = read_records(run / "mix" / "align.jsonl")
    seeds = [r.id for r in align if r.source == "seed_en"]
    assert len(set(seeds)) == 10  # weight 2.0 = every seed caption exactly twice


def test_mix_is_deterministic(prepared, tmp_path: Path) -> None:
    data, run = prepared
    weights = {"align": {"native": 0.5, "seed": 1.5}}
    mix(data, run, mix=weights)
    first = {n: (run / "mix" / f"{n}.jsonl").read_bytes() for n in FILES}
    mix(data, run, mix=weights)
    assert first == {n: (run / "mix" / f"{n}.jsonl").read_bytes() for n in FILES}
    ids = [r.id for r in read_records(run / "mix" / "sft.jsonl")]
    assert ids != sorted(ids)  # shuffled


def test_leak_check_refuses_shared_images(prepared) -> None:
    _, run = prepared
    records = read_records(run / "validate" / "native.jsonl")
    test_qa = [r for r in records if r.kind == "qa" and r.split == "test"][:1]
    outputs = {"align": [], "sft": test_qa, "dpo": [], "eval": test_qa, "dpo_eval": []}
    with pytest.raises(DataQualityError, match="also in training"):
        check_no_leak(outputs)
