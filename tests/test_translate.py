"""The translate stage on the memory backend: outputs, alignment, quarantine, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.data.synthetic import OPTIONS, QUESTIONS, generate
from components.errors import ConfigError
from components.records import Record, read_records
from components.settings import load_settings
from components.stages import run_stage
from components.translate import (
    MemoryTranslator,
    Translator,
    make_translator,
    memory_path,
    record_texts,
    translate_record,
)
from components.translation.backends import ProtectedTranslator, load_memory

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}


def settings_for(data_dir: Path, cache_dir: Path | None = None, **overrides):
    translate = {"cache_dir": str(cache_dir) if cache_dir else None,
                 **overrides.pop("translate", {})}
    return load_settings("ci", overrides={"data_dir": str(data_dir), "synthetic": SMALL,
                                          "translate": translate, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translate") / "data"
    generate(root, settings_for(root))
    return root


@pytest.fixture(scope="module")
def validated(data: Path, tmp_path_factory) -> Path:
    """One validate run shared by the module (its output does not depend on the memory)."""
    run_dir = tmp_path_factory.mktemp("validated")
    run_stage("validate", settings_for(data), run_dir, progress=False)
    return run_dir / "validate"


def run_chain(data: Path, run_dir: Path, validated: Path):
    """translate on the shared validate output, with the memory of `data`."""
    shutil.copytree(validated, run_dir / "validate")
    return run_stage("translate", settings_for(data, run_dir.parent / "cache"), run_dir,
                     progress=False)


def test_seed_translates_to_native_strings(data: Path, validated: Path,
                                          tmp_path: Path) -> None:
    out, _ = run_chain(data, tmp_path / "run", validated)
    stage = tmp_path / "run" / "translate"
    records = read_records(stage / "seed_pt.jsonl")
    assert out.counts == {"total": 30, "kept": 30, "quarantined": 0} and len(records) == 30
    report = json.loads((stage / "report.json").read_text())
    assert {"total", "kept", "quarantined", "by_reason", "cache_hits", "cache_misses",
            "source_tokens", "tokens_per_s", "variety_flagged"} <= set(report)
    assert report["backend"] == "memory" and report["model"].startswith("sha256:")
    assert report["cache_hits"] == 0 and report["cache_misses"] > 0
    assert report["source_tokens"] > 0 and report["tokens_per_s"] > 0
    assert report["language_check"]["checked"] > 0 and report["language_check"]["flagged"] == 0
    assert report["variety"]["available"] and report["variety_flagged"] == 0
    for rec in records:
        assert rec.id.endswith("-pt") and rec.language == "pt-PT" and rec.source == "seed_en"
        assert rec.image and rec.image.startswith("seed_en/images/")
        if rec.kind == "qa":
            assert rec.question == QUESTIONS[rec.task_family]["pt"]
            assert rec.options == list(OPTIONS[rec.task_family]["pt"])
            assert rec.answer in rec.options
        if rec.kind == "preference":
            assert rec.chosen in OPTIONS[rec.task_family]["pt"]


def test_missing_memory_entry_is_quarantined_not_passed_through(data: Path, validated: Path,
                                                                 tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    memory = copy / "seed_en" / "translation_memory.jsonl"
    caption = next(r for r in read_records(copy / "seed_en" / "records.jsonl")
                   if r.kind == "caption")
    lines = [line for line in memory.read_text(encoding="utf-8").splitlines()
             if json.loads(line)["source"] != caption.text]
    memory.write_text("\n".join(lines) + "\n", encoding="utf-8")

    out, _ = run_chain(copy, tmp_path / "run", validated)
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
    # model backends load lazily: the factory builds them without touching a hub
    llm = make_translator(settings_for(data, translate={"backend": "hf_llm",
                                                        "model_id": "google/gemma-3-27b-it"}))
    assert isinstance(llm, ProtectedTranslator) and llm.identity.backend == "hf_llm"
    assert llm.identity.model.startswith("google/gemma-3-27b-it@rev:main=")
    assert llm.inner._model is None
    with pytest.raises(ConfigError, match="model_id"):
        make_translator(settings_for(data, translate={"backend": "hf_seq2seq"}))
    with pytest.raises(ConfigError, match="text"):
        make_translator(settings_for(data, translate={
            "backend": "hf_llm", "model_id": "x", "prompt_template": "no slot"}))


def test_answers_stay_aligned_with_translated_options(data: Path) -> None:
    settings = settings_for(data)
    table = {"Which colour is it?": "Que cor é?", "the red one": "o vermelho",
             "the green one": "o verde", "A) red or B) green?": "A) vermelho ou B) verde?"}
    # the answer is not translated on its own: it becomes the option at the same index
    rec = qa("Which colour is it?", "the green one", ["the red one", "the green one"])
    new, reasons = translate_record(rec, table, settings)
    assert reasons == [] and new.answer == "o verde" and new.options == ["o vermelho", "o verde"]
    assert "the green one" in record_texts(rec) and record_texts(rec).count("the green one") == 1
    # an option-letter answer stays verbatim and is never sent to a translator
    letter = qa("A) red or B) green?", "B", ["A", "B"])
    assert "B" in record_texts(letter)  # the options themselves still are
    new, reasons = translate_record(letter, {**table, "A": "A", "B": "B"}, settings)
    assert reasons == [] and new.answer == "B"
    assert new.question == "A) vermelho ou B) verde?"


def test_quarantine_names_the_failing_texts(data: Path, validated: Path,
                                            tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    memory = copy / "seed_en" / "translation_memory.jsonl"
    pairs = load_memory(memory)
    caption = next(r for r in read_records(copy / "seed_en" / "records.jsonl")
                   if r.kind == "caption" and any(c.isdigit() for c in r.text))
    pairs[caption.text] = "Uma legenda sem os números originais, mas em português."
    memory.write_text("".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n"
                              for s, t in pairs.items()), encoding="utf-8")
    out, _ = run_chain(copy, tmp_path / "run", validated)
    stage = tmp_path / "run" / "translate"
    rows = [json.loads(x) for x in (stage / "quarantine.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["id"] == caption.id)
    assert "number_lost" in row["reasons"] and row["file"] == "validate/seed_en.jsonl"
    assert row["texts"] == [{"field": "text", "source": caption.text,
                             "target": pairs[caption.text], "reasons": row["reasons"]}]
    report = json.loads((stage / "report.json").read_text())
    assert report["total"] == report["kept"] + report["quarantined"] == 30
    assert report["by_reason"]["number_lost"] == out.counts["quarantined"]


def test_memory_backend_reads_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "tm.parquet"
    pq.write_table(pa.table({"source": ["red", "green"], "target": ["vermelho", "verde"]}), path)
    translator = MemoryTranslator.from_file(path)
    assert translator.translate_batch(["green", "blue"]) == ["verde", ""]


KIND_RECORDS = [
    {"id": "c1", "source": "llava_en", "language": "en", "task_family": "chat",
     "kind": "conversation", "image": "img/a.png", "conversations": [
         {"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "<image>\nWhat is in the picture?"},
         {"role": "assistant", "content": "A red bus in 2 streets."}]},
    {"id": "g1", "source": "refcoco_en", "language": "en", "task_family": "grounding",
     "kind": "grounding", "image": "img/b.png", "question": "Find the dog on the left.",
     "answer": "The dog is at [10, 20, 30, 40].",
     "boxes": [{"bbox": [10, 20, 30, 40], "label": "dog"}]},
    {"id": "m1", "source": "bench_en", "language": "en", "task_family": "science",
     "kind": "multiple_choice", "question": "Which is a fruit? A) apple B) stone",
     "options": ["A", "B"], "answer": "A"},
    {"id": "p1", "source": "seed_en", "language": "en", "task_family": "chat",
     "kind": "preference", "question": "Say hello politely.", "chosen": "Hello, good morning.",
     "rejected": "Go away."},
]
KIND_MEMORY = {
    "You are a helpful assistant.": "És um assistente prestável.",
    "<image>\nWhat is in the picture?": "<image>\nO que está na imagem?",
    "A red bus in 2 streets.": "Um autocarro vermelho em 2 ruas.",
    "Find the dog on the left.": "Encontra o cão à esquerda.",
    "The dog is at [10, 20, 30, 40].": "O cão está em [10, 20, 30, 40].",
    "dog": "cão",
    "Which is a fruit? A) apple B) stone": "Qual é um fruto? A) maçã B) pedra",
    "Say hello politely.": "Cumprimenta com educação.",
    "Hello, good morning.": "Olá, bom dia.",
    "Go away.": "Vai-te embora.",
}


def test_every_record_kind_is_translated_with_its_structure(tmp_path: Path) -> None:
    from components.translate import translate_shard

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in KIND_RECORDS), encoding="utf-8")
    memory = tmp_path / "memory.jsonl"
    memory.write_text("".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n"
                              for s, t in KIND_MEMORY.items()), encoding="utf-8")
    settings = settings_for(tmp_path, tmp_path / "cache",
                            translate={"memory_path": str(memory)})
    report = translate_shard(src, settings, tmp_path / "out")
    assert report["kept"] == 4, json.loads((tmp_path / "out" / "quarantine.jsonl")
                                           .read_text() or "{}")
    out = {r.id: r for r in read_records(tmp_path / "out" / "seed_pt.jsonl")}
    conv = out["c1-pt"]
    assert [t.role for t in conv.conversations] == ["system", "user", "assistant"]
    assert conv.conversations[1].content == "<image>\nO que está na imagem?"
    assert conv.source == "llava_en" and conv.language == "pt-PT" and conv.image == "img/a.png"
    ground = out["g1-pt"]
    assert ground.boxes[0].label == "cão" and ground.boxes[0].bbox == [10, 20, 30, 40]
    assert ground.answer == "O cão está em [10, 20, 30, 40]."
    mc = out["m1-pt"]
    assert mc.options == ["A", "B"] and mc.answer == "A" and "A) maçã B) pedra" in mc.question
    assert out["p1-pt"].chosen == "Olá, bom dia." and out["p1-pt"].image is None
    assert report["by_source"].keys() == {"llava_en", "refcoco_en", "bench_en", "seed_en"}
