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
    expected = {"align": 50, "sft": 50, "dpo": 50, "eval": 20, "dpo_eval": 20}
    assert out.counts == {**expected, **{f"{k}_trainer": v for k, v in expected.items()}}
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
    def outputs() -> dict:
        files = [run / "mix" / f"{n}.jsonl" for n in FILES]
        files += sorted((run / "mix" / "shards").rglob("*.parquet"))
        return {f.relative_to(run): f.read_bytes() for f in files}

    mix(data, run, mix=weights)
    first = outputs()
    mix(data, run, mix=weights)
    assert first == outputs() and len(first) == 2 * len(FILES)
    ids = [r.id for r in read_records(run / "mix" / "sft.jsonl")]
    assert ids != sorted(ids)  # shuffled


def test_the_seed_decides_the_sample(prepared) -> None:
    """A fractional weight samples records with the seed: another seed, another sample."""
    data, run = prepared
    weights = {"align": {"native": 0.5, "seed": 1.0}}

    def native_align_ids(seed: int) -> list[str]:
        mix(data, run, mix=weights, seed=seed)
        return sorted(r.id for r in read_records(run / "mix" / "align.jsonl")
                      if r.source == "native")

    first, again, other = native_align_ids(1), native_align_ids(1), native_align_ids(2)
    assert first == again
    assert len(first) == len(other) == 20  # half of the 40 native captions either way
    assert first != other


def test_leak_check_refuses_shared_images(prepared) -> None:
    _, run = prepared
    records = read_records(run / "validate" / "native.jsonl")
    test_qa = [r for r in records if r.kind == "qa" and r.split == "test"][:1]
    outputs = {"align": [], "sft": test_qa, "dpo": [], "eval": test_qa, "dpo_eval": []}
    with pytest.raises(DataQualityError, match="also in training"):
        check_no_leak(outputs)


def test_shards_are_self_contained_and_match_the_trainer_files(prepared) -> None:
    data, run = prepared
    mix(data, run)
    stage = run / "mix"
    import pyarrow.parquet as pq

    for name in FILES:
        shards = sorted((stage / "shards" / name).glob("*.parquet"))
        assert len(shards) == 1  # a few large files, never one per sample
        from_shards = read_records(stage / "shards" / name)
        assert [r.id for r in from_shards] == [r.id for r in read_records(stage / f"{name}.jsonl")]
        table = pq.read_table(shards[0], columns=["image", "image_bytes"]).to_pylist()
        for row in table[:15]:
            assert row["image_bytes"] == [(data / row["image"]).read_bytes()]


def test_report_has_rows_images_and_tokens_per_source_and_family(prepared) -> None:
    data, run = prepared
    out, _ = mix(data, run)
    report = json.loads((run / "mix" / "mix_report.json").read_text())["stages"]
    sft = report["sft"]
    assert sft["rows"] == 50 and sft["images"] == 50  # one qa per image
    cells = sft["by_source_family"]
    assert set(cells) == {"native", "seed_en"}
    assert cells["native"]["chart"]["rows"] == 8 and cells["native"]["chart"]["images"] == 8
    assert sft["tokens"] == sum(c["tokens"] for fams in cells.values() for c in fams.values())
    # "Quantas formas há na imagem?" + answer + 4 options: 6 + 1 + 4 tokens
    assert cells["native"]["count"]["tokens"] == 8 * 11
    assert out.metrics["sft.tokens"] == sft["tokens"]
    assert report["align"]["images"] == 50 and report["eval"]["images"] == 20


def test_task_family_weights_multiply_source_weights(prepared, tmp_path: Path) -> None:
    data, _ = prepared
    run = tmp_path / "run"
    shutil.copytree(prepared[1], run)
    mix(data, run, mix={"task_weights": {"sft": {"chart": 0.0, "document": 2.0}},
                        "sft": {"native": 1.0, "seed": 0.5}})
    sft = json.loads((run / "mix" / "mix_report.json").read_text())["stages"]["sft"]
    assert "chart" not in sft["by_task_family"]
    # native: 8 + 8 + 8 + 0 + 16; seed (2 per family, weight 0.5): 1 + 1 + 1 + 0 + 2
    assert sft["by_source"] == {"native": 40, "seed_en": 5}
    assert sft["by_task_family"]["document"] == 16 + 2


def test_source_weights_by_name_family_or_wildcard() -> None:
    from components.errors import ConfigError
    from components.mix import source_weight

    assert source_weight({"seed": 2.0, "seed_en": 3.0}, "sft", "seed_en") == 3.0
    assert source_weight({"seed": 2.0}, "sft", "seed_xx") == 2.0
    assert source_weight({"native": 1.0, "*": 0.5}, "sft", "llava150k") == 0.5
    with pytest.raises(ConfigError, match="mix.sft has no weight for source 'llava150k'"):
        source_weight({"native": 1.0}, "sft", "llava150k")


def _pt_records(data: Path) -> list[dict]:
    img = "native/images/count-train-0001.png"
    common = {"source": "ptset", "language": "pt-PT", "split": "train"}
    return [
        {"id": "c1", "kind": "conversation", "task_family": "general_vqa", "image": img,
         "conversations": [{"role": "user", "content": "<image>\nO que se vê aqui?"},
                           {"role": "assistant", "content": "Formas geométricas."}], **common},
        {"id": "g1", "kind": "grounding", "task_family": "grounding", "image": img,
         "question": "Onde está a primeira forma?", "boxes": [{"bbox": [1, 1, 20, 20]}],
         **common},
        {"id": "m1", "kind": "multiple_choice", "task_family": "count", "image": img,
         "question": "Quantas formas?", "options": ["1", "2"], "answer": "2", **common},
        {"id": "t1", "kind": "qa", "task_family": "text_instruction",
         "question": "Qual é a capital de Portugal?", "answer": "Lisboa", **common},
    ]


def test_new_kinds_go_to_shards_and_trainers_get_what_they_read(prepared, tmp_path) -> None:
    data, _ = prepared
    src = tmp_path / "ptset.jsonl"
    rows = _pt_records(data)
    for row in rows:
        if "image" in row:
            row["image"] = str(data / row["image"])
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    run = tmp_path / "run"
    weights = {"sft": {"native": 1.0, "seed": 1.0, "*": 1.0}}
    settings = settings_for(data, ingest={"inputs": [str(src)]}, mix=weights)
    run_stage("validate", settings, run, progress=False)
    run_stage("translate", settings, run, progress=False)
    out, _ = run_stage("mix", settings, run, progress=False)
    sft_all = read_records(run / "mix" / "shards" / "sft")
    assert sorted(r.kind for r in sft_all) == ["conversation", "grounding", "multiple_choice",
                                               "qa"]
    trainer = read_records(run / "mix" / "sft.jsonl")
    assert [(r.id, r.kind) for r in trainer] == [("m1", "qa")]  # lowered for the trainer
    assert trainer[0].options == ["1", "2"]
    assert out.counts["sft"] == 4 and out.counts["sft_trainer"] == 1
    report = json.loads((run / "mix" / "mix_report.json").read_text())["stages"]["sft"]
    assert report["by_kind"] == {"conversation": 1, "grounding": 1, "multiple_choice": 1,
                                 "qa": 1}
    assert report["images"] == 1  # three rows share one image, the text-only row has none
