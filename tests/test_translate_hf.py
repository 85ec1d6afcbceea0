"""The transformers backends on tiny models built here (random weights, local tokenizers).

Outputs are gibberish: these tests check the plumbing of the real generation path
(factory, lazy loading, target-language conditioning, prompts, length-sorted batches and
restored order, caching, and that garbage ends in quarantine with reasons), not quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from components.data.synthetic import generate
from components.records import read_records
from components.settings import load_settings
from components.translate import make_translator, translate_shard
from components.translation.backends import ProtectedTranslator, load_memory
from components.translation.hf import (
    DEFAULT_PROMPT,
    LLMTranslator,
    Seq2SeqTranslator,
    clean_llm_output,
    length_sorted_batches,
)

SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")
TEXTS = ["How many shapes are in the image?", "red", "A large red square on a white background.",
         "Which bar is the tallest?", "on the left", "Four blue triangles on a white background."]


def tokenizer(corpus: list[str], extra: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>", "<s>", *extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>")


def spread(model, std: float = 1.0) -> None:
    """Larger random weights, so outputs depend more on the input (order becomes testable)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std if p.dim() > 1 else 0.1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translate-hf") / "data"
    generate(root, load_settings("ci", overrides={"synthetic": SMALL}))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory, data: Path) -> dict[str, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM, MarianConfig, MarianMTModel

    root = tmp_path_factory.mktemp("tiny-mt")
    memory = load_memory(data / "seed_en" / "translation_memory.jsonl")
    corpus = [*memory, *memory.values(), "[[0]] [[1]] [[2]] <image> 12,40 €"] * 3
    out: dict[str, Path] = {}
    for name, extra in (("nllb_like", ("eng_Latn", "por_Latn")), ("marian_multi", (">>por<<",))):
        tok = tokenizer(corpus, extra)
        cfg = MarianConfig(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                           forced_eos_token_id=1, scale_embedding=False)
        model = MarianMTModel(cfg)
        spread(model, 0.5)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    tok = tokenizer(corpus)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
                      bos_token_id=3)
    model = LlamaForCausalLM(cfg)
    spread(model)
    model.save_pretrained(root / "llm_plain")
    tok.save_pretrained(root / "llm_plain")
    shutil.copytree(root / "llm_plain", root / "llm_chat")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(root / "llm_chat")
    out.update(llm_plain=root / "llm_plain", llm_chat=root / "llm_chat")
    return out


def settings_for(data: Path, tmp: Path, **translate):
    return load_settings("ci", overrides={
        "data_dir": str(data), "synthetic": SMALL,
        "translate": {"cache_dir": str(tmp / "cache"), "batch_size": 4, "max_new_tokens": 6,
                      **translate}})


def test_length_sorted_batches_cover_every_index_once() -> None:
    batches = list(length_sorted_batches([3, 9, 1, 9, 5], 2))
    assert batches == [[1, 3], [4, 0], [2]]


def test_seq2seq_backend_through_the_factory(models, data: Path, tmp_path: Path) -> None:
    settings = settings_for(data, tmp_path, backend="hf_seq2seq",
                            model_id=str(models["nllb_like"]))
    wrapped = make_translator(settings)
    assert isinstance(wrapped, ProtectedTranslator)
    seq = wrapped.inner
    assert isinstance(seq, Seq2SeqTranslator) and seq._model is None  # loads lazily
    batched = seq.translate_batch(TEXTS)
    assert len(batched) == len(TEXTS) and all(isinstance(t, str) for t in batched)
    assert seq.forced_bos_token_id == seq.tokenizer.convert_tokens_to_ids("por_Latn")
    assert seq.model.dtype == torch.float32 and seq.model.config._attn_implementation == "sdpa"
    # length-sorted batches of batch_size, every text once, results back in input order
    lengths = [len(seq.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert sorted(i for b in seq.batches_seen for i in b) == list(range(len(TEXTS)))
    assert [len(b) for b in seq.batches_seen] == [4, 2]
    flat = [lengths[i] for b in seq.batches_seen for i in b]
    assert flat == sorted(flat, reverse=True)
    # outputs come back in input order: batched == one at a time, on texts whose outputs
    # differ (random weights give few distinct outputs, so use the whole memory)
    pool = sorted(load_memory(data / "seed_en" / "translation_memory.jsonl"))[::3]
    singles = [seq.translate_batch([t])[0] for t in pool]
    assert len(set(singles)) > 1
    assert seq.translate_batch(pool) == singles
    assert seq.translate_batch(pool[::-1]) == singles[::-1]


def test_marian_multi_target_gets_its_prefix_token(models) -> None:
    seq = Seq2SeqTranslator(models["marian_multi"], "en", "pt-PT", max_new_tokens=4)
    assert seq.translate_batch(["red"])[0] is not None
    assert seq.target_prefix == ">>por<< " and seq.forced_bos_token_id is None


def test_llm_backend_chat_and_plain_prompts(models) -> None:
    chat = LLMTranslator(models["llm_chat"], max_new_tokens=5, batch_size=4)
    plain = LLMTranslator(models["llm_plain"], max_new_tokens=5, batch_size=4)
    assert chat.uses_chat_template and not plain.uses_chat_template
    prompt = chat.prompt_for("red")
    assert prompt.startswith("<s>user: ") and prompt.endswith("assistant: ")
    assert "não português do Brasil" in prompt and "European Portuguese (pt-PT)" in prompt
    assert plain.prompt_for("red") == DEFAULT_PROMPT.format(text="red", source_name="English")
    for llm in (chat, plain):
        batched = llm.translate_batch(TEXTS)
        assert len(batched) == len(TEXTS) and llm.tokenizer.padding_side == "left"
        assert batched == [llm.translate_batch([t])[0] for t in TEXTS]
    other = LLMTranslator(models["llm_chat"], "Traduz para pt-PT: {text}")
    assert chat.identity.prompt != other.identity.prompt  # the prompt is part of cache keys


def test_clean_llm_output() -> None:
    assert clean_llm_output('  Tradução: "Um quadrado."  ', "A square.") == "Um quadrado."
    assert clean_llm_output("Um quadrado.\n\nNota: traduzi livremente.", "A square.") == \
        "Um quadrado."
    assert clean_llm_output('"Olá"', '"Hello"') == '"Olá"'  # quoted source keeps its quotes


def test_garbage_translations_go_to_quarantine_and_are_cached(models, data: Path,
                                                              tmp_path: Path) -> None:
    settings = settings_for(data, tmp_path, backend="hf_seq2seq",
                            model_id=str(models["nllb_like"]), seed_cache_from_memory=False)
    src = data / "seed_en" / "records.jsonl"
    report = translate_shard(src, settings, tmp_path / "out")
    assert report["backend"] == "hf_seq2seq" and report["total"] == 30
    assert report["total"] == report["kept"] + report["quarantined"]
    assert report["quarantined"] > 20  # random weights: nearly everything is rejected
    rows = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text()
            .splitlines()]
    assert len(rows) == report["quarantined"] and all(r["reasons"] for r in rows)
    assert {"untranslated", "length_ratio", "wrong_language", "number_lost",
            "placeholder_lost", "copied"} & set(report["by_reason"])
    assert report["cache_misses"] > 0 and report["backend_source_tokens"] > 0
    for rec in read_records(tmp_path / "out" / "seed_pt.jsonl"):
        assert rec.kind != "qa" or rec.answer in rec.options

    # a re-run asks the model only for what it failed to return (empty outputs)
    again = make_translator(settings)
    report2 = translate_shard(src, settings, tmp_path / "out", translator=again)
    assert report2["cache_misses"] == report["backend_failed"]
    if report["backend_failed"] == 0:
        assert again.inner._model is None  # nothing to translate: the model never loaded
    assert report2["quarantined"] == report["quarantined"]


def test_memory_seeds_the_model_cache(models, data: Path, tmp_path: Path) -> None:
    """With the memory as cache seed the model only translates what the memory lacks."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    path = copy / "seed_en" / "translation_memory.jsonl"
    memory = load_memory(path)
    caption = next(r.text for r in read_records(copy / "seed_en" / "records.jsonl")
                   if r.kind == "caption")
    del memory[caption]
    path.write_text("".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n"
                            for s, t in memory.items()), encoding="utf-8")
    settings = settings_for(copy, tmp_path, backend="hf_seq2seq",
                            model_id=str(models["nllb_like"]))
    report = translate_shard(copy / "seed_en" / "records.jsonl", settings, tmp_path / "out")
    assert report["cache_seeded"] == len(memory)
    assert report["cache_misses"] == 1 and report["cache_hits"] > 0
    assert report["kept"] >= report["total"] - sum(
        1 for r in read_records(copy / "seed_en" / "records.jsonl") if r.text == caption)
