"""The synthetic data generator: determinism, record contract, disjoint images, memory."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from components.data.synthetic import (
    FAMILIES,
    OPTIONS,
    QUESTIONS,
    derived_rng,
    generate,
    is_valid_nif,
    make_nif,
)
from components.manifest import hash_tree
from components.records import read_records
from components.settings import load_settings

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}


def small_settings(data_dir: Path, seed: int = 1234):
    return load_settings("ci", overrides={"data_dir": str(data_dir), "seed": seed,
                                          "synthetic": SMALL})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    counts = generate(root, small_settings(root))
    assert counts["native_records"] == 5 * (8 + 4) * 3
    assert counts["native_images"] == 5 * (8 + 4)
    assert counts["seed_en_records"] == 3 * 10
    return root


def test_same_seed_gives_byte_identical_files(data: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, small_settings(again))
    assert hash_tree(again) == hash_tree(data)


def test_other_seed_gives_other_data(data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(other, small_settings(other, seed=99))
    assert hash_tree(other) != hash_tree(data)


def test_native_records_follow_the_contract(data: Path) -> None:
    records = read_records(data / "native" / "records.jsonl")
    assert len({r.id for r in records}) == len(records)
    per = Counter((r.task_family, r.split, r.kind) for r in records)
    for family in FAMILIES:
        for kind in ("caption", "qa", "preference"):
            assert per[(family, "train", kind)] == 8
            assert per[(family, "test", kind)] == 4
    for r in records:
        assert r.source == "native" and r.language == "pt-PT"
        assert r.image and (data / r.image).is_file()
        assert r.id.startswith(f"native-{r.task_family}-{r.split}-") and r.id.endswith(r.kind)
        if r.kind == "qa":
            assert r.options == list(OPTIONS[r.task_family]["pt"])
            assert r.answer in r.options
            assert r.question == QUESTIONS[r.task_family]["pt"]
        elif r.kind == "preference":
            options = OPTIONS[r.task_family]["pt"]
            assert r.chosen in options and r.rejected in options and r.chosen != r.rejected
        else:
            assert r.text and r.text.endswith(".")
    qa = {r.image: r.answer for r in records if r.kind == "qa"}
    for r in records:
        if r.kind == "preference":
            assert r.chosen == qa[r.image]  # chosen = the correct answer


def test_images_are_small_varied_and_disjoint(data: Path) -> None:
    sizes, digests = set(), {}
    for path in sorted((data / "native" / "images").glob("*.png")) + sorted(
            (data / "seed_en" / "images").glob("*.png")):
        with Image.open(path) as img:
            assert 48 <= min(img.size) and max(img.size) <= 96
            sizes.add(img.size)
            digest = hashlib.sha256(img.tobytes()).hexdigest()
        assert digest not in digests, f"{path.name} repeats {digests.get(digest)}"
        digests[digest] = path.name
    assert len({w / h for w, h in sizes}) >= 3  # several aspect ratios for anyres


def test_answers_are_balanced(data: Path) -> None:
    records = read_records(data / "native" / "records.jsonl")
    for family in FAMILIES:
        answers = Counter(r.answer for r in records
                          if r.kind == "qa" and r.task_family == family and r.split == "train")
        assert len(answers) == 4 and max(answers.values()) - min(answers.values()) <= 1


def test_captions_are_pt_pt(data: Path) -> None:
    texts = {r.task_family: r.text for r in read_records(data / "native" / "records.jsonl")
             if r.kind == "caption"}
    assert "sobre fundo branco" in texts["count"]
    assert texts["chart"].startswith("Gráfico de barras com ") and "," in texts["chart"]
    assert texts["document"].startswith("Fatura com ") and "IVA 23%" in texts["document"]


def test_translation_memory_covers_the_seed_with_native_strings(data: Path) -> None:
    seed = read_records(data / "seed_en" / "records.jsonl")
    assert Counter(r.kind for r in seed) == {"caption": 10, "qa": 10, "preference": 10}
    assert all(r.language == "en" and r.source == "seed_en" and r.split == "train" for r in seed)
    memory = {}
    with (data / "seed_en" / "translation_memory.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            memory[row["source"]] = row["target"]
    english = {t for r in seed for t in [*r.texts().values(), *(r.options or [])]}
    assert english <= set(memory)
    native_strings = {s for f in FAMILIES for s in (QUESTIONS[f]["pt"], *OPTIONS[f]["pt"])}
    for r in seed:
        if r.kind == "qa":
            assert memory[r.question] in native_strings
            assert [memory[o] for o in r.options] == list(OPTIONS[r.task_family]["pt"])
    assert memory["What colour is the shape?"] == "De que cor é a forma?"
    assert (data / "README.md").is_file()


def test_nif_check_digit() -> None:
    assert is_valid_nif("123456789")
    assert not is_valid_nif("123456788")
    rng = derived_rng(1, "nif")
    for _ in range(50):
        nif = make_nif(rng)
        assert nif.startswith("5") and is_valid_nif(nif)
