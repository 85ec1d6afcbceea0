"""Model behaviour: tokenizer, tiny build, save/reload through the Auto classes, image-token
agreement on many image sizes, pretrained assembly from local folders, freezing table."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from components.errors import ConfigError, MissingInputError
from components.model.build import (
    PROBE_SIZES,
    ImageTokenMismatchError,
    build_tiny_model,
    check_image_token_agreement,
    load_model,
    load_pretrained_parts,
    make_processor,
    save_model,
)
from components.model.freeze import (
    PARTS,
    count_by_part,
    part_of,
    set_trainable,
    unread_parameters,
)
from components.model.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer
from components.settings import load_settings

TEXTS = ["Quantas formas há na imagem?", "3", "vermelho", "à esquerda", "a segunda",
         "Descreve a imagem.", "Um círculo azul à direita de um quadrado verde."] * 5
MESSAGES = [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "Quantas formas há?"}]}]


@pytest.fixture(scope="module")
def settings():
    return load_settings("tiny")


@pytest.fixture(scope="module")
def built(settings):
    return build_tiny_model(settings, TEXTS)


def _inputs(processor, size=(64, 48), question="Quantas formas há?"):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    image = Image.new("RGB", size, (200, 30, 30))
    return processor(images=image, text=text, add_special_tokens=False, return_tensors="pt")


def test_tokenizer_specials_and_roundtrip():
    tok = train_tokenizer(TEXTS, 320)
    for special in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id or special == "<unk>"
    assert tok.image_token == "<image>"
    text = "Não, está à esquerda: a segunda."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: accents survive
    assert tok.unk_token_id not in tok("ção ü 😀")["input_ids"]
    with pytest.raises(ValueError):
        train_tokenizer(TEXTS, 100)


def test_chat_template_snapshot(built):
    _, processor = built
    rendered = processor.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                             tokenize=False)
    # a prompt snapshot: changing the template silently would invalidate every checkpoint
    assert rendered == "<s><|user|><image>Quantas formas há?</s><|assistant|>"
    assert rendered == processor.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False)
    assert processor.chat_template == CHAT_TEMPLATE
    full = processor.apply_chat_template(
        [*MESSAGES, {"role": "assistant", "content": [{"type": "text", "text": "3"}]}],
        tokenize=False)
    assert full == rendered + "3</s>"
    with pytest.raises(Exception, match="unknown chat role"):
        processor.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_build_matches_settings(built, settings):
    model, processor = built
    cfg = model.config
    assert cfg.vision_feature_select_strategy == "full"
    assert cfg.vision_config.image_size == settings.model.vision.image_size
    assert cfg.text_config.hidden_size == settings.model.text.hidden_size
    assert cfg.image_token_id == processor.tokenizer.image_token_id
    assert [list(p) for p in cfg.image_grid_pinpoints] == [
        list(p) for p in settings.model.image_grid_pinpoints]
    assert processor.num_additional_image_tokens == 0
    assert all(count_by_part(model, trainable_only=False).values())


def test_forward_backward_and_generate(built):
    model, processor = built
    batch = _inputs(processor)
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    model.zero_grad()
    gen = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= batch["input_ids"].shape[1] + 3


def test_save_and_reload_through_auto_classes(built, tmp_path):
    model, processor = built
    save_model(model, processor, tmp_path / "m")
    model2, processor2 = load_model(tmp_path / "m")
    assert type(model2).__name__ == "LlavaNextForConditionalGeneration"
    assert type(processor2).__name__ == "LlavaNextProcessor"
    batch = _inputs(processor2, size=(90, 50))
    with torch.no_grad():
        a = model.eval()(**batch).logits
        b = model2(**batch).logits
    torch.testing.assert_close(a, b)
    gen = model2.generate(**batch, max_new_tokens=4, do_sample=False)
    assert isinstance(processor2.batch_decode(gen[:, batch["input_ids"].shape[1]:])[0], str)
    check_image_token_agreement(processor2, model2)
    with pytest.raises(MissingInputError):
        load_model(tmp_path / "nothing-here")


SIZES = [(1, 1), (17, 300), (3000, 20), (640, 480), (2, 1), (1, 2), (31, 33), (65, 64),
         (96, 48), (48, 96), (127, 1), (1, 127), (250, 251), (4000, 3000), (63, 95), (7, 9)]


def test_image_token_agreement_many_sizes(built):
    model, processor = built
    assert check_image_token_agreement(processor, model, SIZES + list(PROBE_SIZES)) == len(
        SIZES) + len(PROBE_SIZES)
    # and the real forward agrees too (this is where a mismatch would blow up in training)
    with torch.no_grad():
        for size in [(1, 1), (17, 300), (3000, 20), (640, 480), (65, 64)]:
            model(**_inputs(processor, size=size))


def test_image_token_disagreement_is_caught(built, settings):
    model, processor = built
    other_pins = settings.model.model_copy(update={"image_grid_pinpoints": [(32, 32), (64, 96)]})
    wrong = make_processor(processor.tokenizer, settings.model_copy(update={"model": other_pins}))
    with pytest.raises(ImageTokenMismatchError, match="image_grid_pinpoints"):
        check_image_token_agreement(wrong, model)
    wrong_patch = make_processor(processor.tokenizer, settings, patch_size=4)
    with pytest.raises(ImageTokenMismatchError, match="patch_size"):
        check_image_token_agreement(wrong_patch, model)
    # a processor that counts a CLS token the SigLIP tower does not have
    processor.num_additional_image_tokens = 1
    try:
        with pytest.raises(ImageTokenMismatchError, match="do not match"):
            check_image_token_agreement(processor, model, [(64, 64)])
    finally:
        processor.num_additional_image_tokens = 0


def test_freeze_table_align_trains_only_the_connector(built):
    model, _ = built
    names = [n for n, _ in model.named_parameters()]
    assert {part_of(n) for n in names} == set(PARTS)  # every parameter has exactly one part
    assert part_of("model.image_newline") == "connector"
    assert part_of("lm_head.weight") == "language_model"
    counts = set_trainable(model, ["connector"])
    assert counts["connector"] > 0 and counts["language_model"] == 0
    assert counts["vision_tower"] == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if n.startswith(PARTS["connector"])}
    assert "model.image_newline" in trainable
    full = set_trainable(model, ["connector", "language_model", "vision_tower"])
    total = count_by_part(model, trainable_only=False)
    unread = unread_parameters(model)
    # SigLIP's post_layernorm never feeds LlavaNext (features are hidden_states[-1]):
    # trainable it would get no gradient and DDP / ZeRO would fail on it
    assert unread == {"model.vision_tower.post_layernorm.weight",
                      "model.vision_tower.post_layernorm.bias"}
    params = dict(model.named_parameters())
    assert full["vision_tower"] == total["vision_tower"] - sum(params[n].numel() for n in unread)
    assert full["connector"] == total["connector"]
    assert full["language_model"] == total["language_model"]
    with pytest.raises(ConfigError):
        set_trainable(model, ["projector"])
    with pytest.raises(ConfigError):
        part_of("model.some_new_module.weight")


def test_pretrained_parts_from_local_folders(tmp_path, settings):
    """The `init: pretrained` path with tiny stand-ins saved locally (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    v = settings.model.vision
    SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=v.image_size, patch_size=v.patch_size)).save_pretrained(tmp_path / "siglip")
    # an LM tokenizer like a real one: no <image>, no pad token
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.save_pretrained(tmp_path / "llama")
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
    )).save_pretrained(tmp_path / "llama")

    # params.yaml states the checkpoints' shapes (load_pretrained_parts checks them)
    m = settings.model
    pre = settings.model_copy(update={"model": m.model_copy(update={
        "init": "pretrained", "vision_model_id": str(tmp_path / "siglip"),
        "language_model_id": str(tmp_path / "llama"),
        "vision": m.vision.model_copy(update={"hidden_size": 32, "intermediate_size": 64,
                                              "num_hidden_layers": 1}),
        "text": m.text.model_copy(update={"hidden_size": 32, "intermediate_size": 64,
                                          "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "num_key_value_heads": 1,
                                          "max_position_embeddings": 2048})})})
    model, processor = load_pretrained_parts(pre)
    assert processor.tokenizer.image_token == "<image>"
    assert processor.tokenizer.pad_token is not None
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    check_image_token_agreement(processor, model, [(1, 1), (17, 300), (640, 480)])
    set_trainable(model, ["connector"])
    batch = _inputs(processor)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    save_model(model, processor, tmp_path / "joined")
    load_model(tmp_path / "joined")

    offline = pre.model_copy(update={"model": pre.model.model_copy(update={
        "vision_model_id": "google/siglip2-so400m-patch14-384"})})
    with pytest.raises(MissingInputError, match="google/siglip2-so400m-patch14-384"):
        load_pretrained_parts(offline)


def test_vision_feature_layer_is_configurable_and_unread_layers_stay_frozen():
    from components.model.build import build_tiny_model

    settings = load_settings("tiny", overrides={"model": {"vision_feature_layer": -2}})
    model, processor = build_tiny_model(settings, ["De que cor é a forma?"] * 3)
    assert model.config.vision_feature_layer == -2
    check_image_token_agreement(processor, model, [(64, 48), (300, 17)])
    set_trainable(model, ["vision_tower"])
    frozen = {n for n, p in model.named_parameters()
              if n.startswith("model.vision_tower.") and not p.requires_grad}
    last = model.config.vision_config.num_hidden_layers - 1
    # the penultimate layer's output feeds the connector: the last layer is never read
    assert frozen and all(f"layers.{last}." in n or "post_layernorm" in n for n in frozen)
    assert any(f"layers.{last}." in n for n in frozen)
    assert not any(f"layers.{last - 1}." in n for n in frozen)
