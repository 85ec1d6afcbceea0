"""What keys a cached translation (weights fingerprint, revision, max_source_tokens) and how
numbers come back in pt-PT (thousands separators, decimals, version numbers). No models are
loaded: the HF translators fingerprint their weights without reading them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from components.settings import load_settings
from components.translation import protect
from components.translation.backends import Identity, ProtectedTranslator
from components.translation.cache import TranslationCache, cache_key
from components.translation.hf import (
    LLMTranslator,
    Seq2SeqTranslator,
    model_fingerprint,
    split_revision,
)
from components.translation.quality import pair_reasons

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_model_dir(path: Path, weights: bytes = b"\0" * (2 << 20)) -> Path:
    """A save_pretrained-like folder: config, tokenizer, a weights file over 1 MiB."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "marian", "d_model": 64}))
    (path / "tokenizer.json").write_text(json.dumps({"vocab": ["a", "b"]}))
    (path / "model.safetensors").write_bytes(weights)
    return path


# ------------------------------------------------------------------ local folders


def test_local_fingerprint_is_stable_and_sees_retraining(tmp_path: Path) -> None:
    model = fake_model_dir(tmp_path / "mt")
    first = model_fingerprint(str(model))
    assert first.startswith("local:") and model_fingerprint(str(model)) == first
    (model / ".cache").mkdir()  # hidden tool folders do not count
    (model / ".cache" / "lock").write_text("x")
    assert model_fingerprint(str(model)) == first

    # retrained in place: same size, new bytes, new mtime
    weights = model / "model.safetensors"
    weights.write_bytes(b"\1" * (2 << 20))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    retrained = model_fingerprint(str(model))
    assert retrained != first

    # a config or tokenizer edit counts too (small files are hashed by content)
    (model / "config.json").write_text(json.dumps({"model_type": "marian", "d_model": 128}))
    assert model_fingerprint(str(model)) not in (first, retrained)


def test_retrained_local_model_never_reuses_the_cache(tmp_path: Path) -> None:
    model = fake_model_dir(tmp_path / "mt")
    before = Seq2SeqTranslator(str(model)).identity
    assert before.model.startswith(f"{model}@local:")
    with TranslationCache(tmp_path / "cache") as cache:
        cache.put_many({"red": "vermelho"}, before)
        weights = model / "model.safetensors"
        st = weights.stat()
        weights.write_bytes(b"\2" * (2 << 20))
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        after = Seq2SeqTranslator(str(model)).identity
        assert after != before
        assert cache.get_many(["red"], after) == {}
        assert cache.get_many(["red"], Seq2SeqTranslator(str(model)).identity) == {}
        assert cache.get_many(["red"], before) == {"red": "vermelho"}


# ------------------------------------------------------------------ hub ids


def test_hub_ids_carry_the_revision(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert split_revision("org/mt@v2") == ("org/mt", "v2")
    assert split_revision("org/mt", "v3") == ("org/mt", "v3")
    assert split_revision("org/mt") == ("org/mt", None)
    # not cached here: unresolved, but the revision asked for still keys the cache
    assert model_fingerprint("org/mt") == "rev:main=unresolved"
    assert model_fingerprint("org/mt", "v2") == "rev:v2=unresolved"
    assert model_fingerprint("org/mt", COMMIT) == f"rev:{COMMIT}"

    # cached: the commit the local HF cache resolves `main` to (no network)
    repo = tmp_path / "hub" / "models--org--mt"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    assert model_fingerprint("org/mt") == f"rev:main={COMMIT}"
    llm = LLMTranslator("org/mt")
    assert llm.identity.model == f"org/mt@rev:main={COMMIT}" and llm.revision is None

    # the hub moved `main` on: a new commit, a new cache key
    newer = COMMIT[::-1]
    (repo / "refs" / "main").write_text(newer)
    (repo / "snapshots" / newer).mkdir()
    (repo / "snapshots" / newer / "config.json").write_text("{}")
    assert LLMTranslator("org/mt").identity != llm.identity

    pinned = LLMTranslator("org/mt@v2")
    assert pinned.model_id == "org/mt" and pinned.revision == "v2"
    assert pinned.identity.model == "org/mt@rev:v2=unresolved"


def test_max_source_tokens_is_part_of_the_seq2seq_key(tmp_path: Path) -> None:
    model = str(fake_model_dir(tmp_path / "mt"))
    short = Seq2SeqTranslator(model, max_source_tokens=64).identity
    long = Seq2SeqTranslator(model, max_source_tokens=512).identity
    assert short != long and "max_source_tokens=64" in short.prompt
    assert cache_key("red", short) != cache_key("red", long)
    # the LLM path never truncates its input, so the setting does not change its outputs
    assert (LLMTranslator(model, max_source_tokens=64).identity
            == LLMTranslator(model, max_source_tokens=512).identity)


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(("source", "pt"), [
    ("12.40", "12,40"),                    # decimal point -> decimal comma
    ("1,000", "1.000"),                    # thousands: "1,000" would read as 1 in pt-PT
    ("1,234.50", "1.234,50"),
    ("1,000,000", "1.000.000"),
    ("1,5", "1,5"),                        # not thousands groups: left alone
    ("10,20", "10,20"),
    ("1.2.3", "1.2.3"),                    # more than one dot: a version, an IP, a date
    ("3", "3"),
])
def test_localise_number(source: str, pt: str) -> None:
    assert protect.localise_number(source, decimal_comma=True) == pt
    assert protect.localise_number(source, decimal_comma=False) == source


@pytest.mark.parametrize(("source", "target"), [
    ("There are 1,000 people and 2.5 tonnes.", "THERE ARE 1.000 PEOPLE AND 2,5 TONNES."),
    ("Pay 1,234.50 € now.", "PAY 1.234,50 € NOW."),
    ("Install v3.10 today.", "INSTALL V3.10 TODAY."),            # after v: a version
    ("This is version 3.10 of it.", "THIS IS VERSION 3.10 OF IT."),
    ("A versão 2.0 saiu.", "A VERSÃO 2.0 SAIU."),
    ("Release 1.2.3 is out.", "RELEASE 1.2.3 IS OUT."),
    # chosen limitation: without a v/version cue a dotted number reads as a decimal
    ("Python 3.10 is here.", "PYTHON 3,10 IS HERE."),
])
def test_numbers_come_back_in_pt_pt_format(source: str, target: str) -> None:
    class Upper:
        identity = Identity("fake", "upper")

        def translate_batch(self, texts: list[str]) -> list[str]:
            return [t.upper() for t in texts]

    out = ProtectedTranslator(Upper(), decimal_comma=True).translate_batch([source])[0]
    assert out == target
    settings = load_settings("ci", overrides={"translate": {"cache_dir": None}})
    assert "number_lost" not in pair_reasons(source, out, settings)
    assert "placeholder_lost" not in pair_reasons(source, out, settings)
    masked = protect.protect(source)
    assert protect.restore(masked.masked, masked, decimal_comma=False) == source
    assert protect.passthrough("1,000", decimal_comma=True) == "1.000"
