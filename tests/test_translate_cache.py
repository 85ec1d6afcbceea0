"""The content-addressed translation cache: keys, persistence, re-runs and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data.synthetic import generate
from components.records import read_records
from components.settings import load_settings
from components.stages import run_stage
from components.translate import MemoryTranslator, memory_path, translate_shard
from components.translation import protect
from components.translation.backends import Identity
from components.translation.cache import TranslationCache, cache_key
from components.translation.engine import record_texts

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}


def settings_for(data_dir: Path, cache_dir: Path, **translate):
    return load_settings("ci", overrides={
        "data_dir": str(data_dir), "synthetic": SMALL,
        "translate": {"cache_dir": str(cache_dir), **translate}})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translate-cache") / "data"
    generate(root, settings_for(root, root / "unused"))
    return root


def test_keys_depend_on_text_backend_model_prompt() -> None:
    base = Identity("hf_llm", "google/gemma-3-27b-it", "prompt:abc")
    keys = {cache_key("red", base), cache_key("red ", base),
            cache_key("red", Identity("hf_seq2seq", base.model, base.prompt)),
            cache_key("red", Identity(base.backend, "utter/tower", base.prompt)),
            cache_key("red", Identity(base.backend, base.model, "prompt:def"))}
    assert len(keys) == 5 and all(len(k) == 64 for k in keys)
    assert cache_key("red", base) == cache_key("red", Identity(*base.__dict__.values()))


def test_cache_persists_and_merges(tmp_path: Path) -> None:
    ident = Identity("fake", "m")
    with TranslationCache(tmp_path / "a") as cache:
        assert cache.put_many({"red": "vermelho", "blue": "", "green": "verde"}, ident) == 2
        assert cache.put_many({"red": "encarnado"}, ident) == 0  # first write wins
    with TranslationCache(tmp_path / "a") as cache:  # a new process sees the rows
        assert cache.get_many(["red", "blue", "green", "pink"], ident) == {
            "red": "vermelho", "green": "verde"}  # empty targets are retried, not cached
        assert cache.get_many(["red"], Identity("fake", "other")) == {}
    with TranslationCache(tmp_path / "b") as other:
        other.put_many({"pink": "cor-de-rosa"}, ident)
        assert other.merge_from(tmp_path / "a") == 2 and len(other) == 3


def test_edited_memory_never_reuses_stale_entries(data: Path, tmp_path: Path) -> None:
    memory = MemoryTranslator.from_file(memory_path(settings_for(data, tmp_path)))
    edited = MemoryTranslator({**memory.memory, "red": "encarnado"})
    assert memory.identity.model != edited.identity.model


class Recording:
    """Wraps a translator: records every text it is asked for; may fail after k calls."""

    def __init__(self, inner: MemoryTranslator, fail_after: int | None = None):
        self.inner, self.fail_after = inner, fail_after
        self.identity = inner.identity
        self.calls: list[list[str]] = []

    def translate_batch(self, texts: list[str]) -> list[str]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("worker preempted")
        self.calls.append(list(texts))
        return self.inner.translate_batch(texts)

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]


def test_interrupted_run_resumes_without_redoing_work(data: Path, tmp_path: Path) -> None:
    settings = settings_for(data, tmp_path / "cache", batch_records=6)
    src = data / "seed_en" / "records.jsonl"
    memory = MemoryTranslator.from_file(memory_path(settings))
    needed = {t for r in read_records(src) for t in record_texts(r)
              if protect.protect(t).translatable}

    crashed = Recording(memory, fail_after=2)
    with pytest.raises(RuntimeError, match="preempted"):
        translate_shard(src, settings, tmp_path / "out", translator=crashed)
    done = set(crashed.texts)
    assert len(crashed.calls) == 2 and done and done < needed

    resumed = Recording(memory)
    report = translate_shard(src, settings, tmp_path / "out", translator=resumed)
    assert set(resumed.texts) == needed - done  # only what the crash left undone
    assert len(resumed.texts) == len(set(resumed.texts))
    assert report["kept"] == report["total"] == 30
    assert report["cache_misses"] == len(resumed.texts) and report["cache_hits"] > 0

    again = Recording(memory)
    report = translate_shard(src, settings, tmp_path / "out", translator=again)
    assert again.calls == [] and report["cache_misses"] == 0 and report["kept"] == 30


def test_stage_rerun_is_served_from_the_cache(data: Path, tmp_path: Path) -> None:
    settings = settings_for(data, tmp_path / "cache")
    run_dir = tmp_path / "run"
    run_stage("validate", settings, run_dir, progress=False)
    first, _ = run_stage("translate", settings, run_dir, progress=False)
    report1 = json.loads((run_dir / "translate" / "report.json").read_text())
    output1 = (run_dir / "translate" / "seed_pt.jsonl").read_bytes()
    second, _ = run_stage("translate", settings, run_dir, progress=False)
    report2 = json.loads((run_dir / "translate" / "report.json").read_text())
    assert report1["cache_hits"] == 0 and report1["cache_misses"] > 0
    assert report2["cache_misses"] == 0 and report2["cache_hits"] == report1["cache_misses"]
    assert (run_dir / "translate" / "seed_pt.jsonl").read_bytes() == output1
    assert second.counts == first.counts and second.metrics["cache_hit_ratio"] == 1.0
