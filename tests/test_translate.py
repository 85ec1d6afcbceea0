"""The translate stage: memory translation, no silent pass-through, quality filters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.data.synthetic import OPTIONS, QUESTIONS, generate
from components.errors import AmaliaError, ConfigError
from components.records import Record, read_records
from components.settings import load_settings
from components.stages import run_stage
from components.translate import (
    MemoryTranslator,
    Translator,
    make_translator,
    memory_path,
    translate_record,
)

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}


def settings_for(data_dir: Path, **overrides):
    return load_settings("ci", overrides={"data_dir": str(data_dir), "synthetic": SMALL,
                                          **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translate") / "data"
    generate(root, settings_for(root))
    return root


def run_chain(data: Path, run_dir: Path):
    settings = settings_for(data)
    run_stage("validate", settings, run_dir, progress=False)
    return run_stage("translate", settings, run_dir, progress=False)


def test_seed_translates_to_native_strings(data: Path, tmp_path: Path) -> None:
    out, _ = run_chain(data, tmp_path / "run")
    stage = tmp_path / "run" / "translate"
    records = read_records(stage / "seed_pt.jsonl")
    assert out.counts == {"total": 30, "kept": 30, "quarantined": 0} and len(records) == 30
    report = json.loads((stage / "report.json").read_text())
    assert {"total", "kept", "quarantined", "by_reason"} <= set(report)
    for rec in records:
        assert rec.id.endswith("-pt") and rec.language == "pt-PT" and rec.source == "seed_en"
        assert rec.image and rec.image.startswith("seed_en/images/")
        if rec.kind == "qa":
            assert rec.question == QUESTIONS[rec.task_family]["pt"]
            assert rec.options == list(OPTIONS[rec.task_family]["pt"])
            assert rec.answer in rec.options
        if rec.kind == "preference":
            assert rec.chosen in OPTIONS[rec.task_family]["pt"]


def test_missing_memory_entry_is_quarantined_not_passed_through(data: Path,
                                                                 tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    memory = copy / "seed_en" / "translation_memory.jsonl"
    caption = next(r for r in read_records(copy / "seed_en" / "records.jsonl")
                   if r.kind == "caption")
    lines = [line for line in memory.read_text(encoding="utf-8").splitlines()
             if json.loads(line)["source"] != caption.text]
    memory.write_text("\n".join(lines) + "\n", encoding="utf-8")

    out, _ = run_chain(copy, tmp_path / "run")
    stage = tmp_path / "run" / "translate"
    quarantine = [json.loads(x) for x in (stage / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["id"], q["reasons"]) for q in quarantine] == [(caption.id, ["untranslated"])]
    assert out.counts["quarantined"] == 1 and out.counts["kept"] == 29
    texts = {t for r in read_records(stage / "seed_pt.jsonl") for t in r.texts().values()}
    assert caption.text not in texts


def qa(question: str = "How many shapes are in the image?", answer: str = "2",
       options: list[str] | None = None) -> Record:
    return Record(id="x", source="seed_en", language="en", task_family="count", kind="qa",
                  image="seed_en/images/x.png", question=question, answer=answer,
                  options=options or ["1", "2", "3", "4"])


def test_record_filters(data: Path) -> None:
    settings = settings_for(data)
    digits = {o: o for o in "1234"}
    good = {"How many shapes are in the image?": "Quantas formas há na imagem?", **digits}
    new, reasons = translate_record(qa(), good, settings)
    assert reasons == [] and new is not None and new.id == "x-pt" and new.answer == "2"

    q = "<image> How many shapes?"
    cases = {
        "placeholder_lost": {q: "Quantas formas há?", **digits},
        "length_ratio": {q: "<image> Quantas formas há? " * 4, **digits},
        "number_lost": {q: "<image> Quantas formas?", "1": "1", "2": "dois", "3": "3",
                        "4": "4"},
    }
    for reason, table in cases.items():
        new, reasons = translate_record(qa(q), table, settings)
        assert new is None and reason in reasons, (reason, reasons)

    colours = qa("What colour is the shape?", "red", ["red", "green"])
    table = {"What colour is the shape?": "De que cor é a forma?", "red": "vermelho",
             "green": "verde"}
    table_bad = {**table}
    record = colours.model_copy(update={"answer": "crimson"})
    table_bad["crimson"] = "carmim"
    new, reasons = translate_record(record, table_bad, settings)
    assert new is None and reasons == ["answer_not_in_options"]


def test_translator_factory(data: Path, tmp_path: Path) -> None:
    settings = settings_for(data)
    assert memory_path(settings) == data / "seed_en" / "translation_memory.jsonl"
    translator = make_translator(settings)
    assert isinstance(translator, Translator) and isinstance(translator, MemoryTranslator)
    assert translator.translate_batch(["red", "no such text"]) == ["vermelho", ""]
    with pytest.raises(AmaliaError, match="issue #4"):
        make_translator(settings_for(data, translate={"backend": "hf_llm",
                                                      "model_id": "google/gemma-3-27b-it"}))
    with pytest.raises(ConfigError, match="model_id"):
        make_translator(settings_for(data, translate={"backend": "hf_seq2seq"}))
