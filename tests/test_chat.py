"""Chat formatting with the model's own template: ChatML and Llama-3 stand-in tokenizers
(built offline) get string content, their own end-of-turn token as label terminator and
generation stop; every record kind trains on the tiny processor (qa unchanged from
`encode_example`); budgets downscale images or skip a sample, never abort a stage."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from components.errors import AmaliaError
from components.evaltasks.prompts import render_prompt
from components.evaltasks.spec import load_tasks
from components.metrics.boxes import box_iou, parse_box
from components.model.build import PROBE_SIZES, build_tiny_model, make_processor
from components.records import Record
from components.settings import load_settings
from components.train.chat import (
    CAPTION_PROMPT,
    IGNORE_INDEX,
    MC_POST_PROMPT,
    Budget,
    ChatFormat,
    SkipSample,
    collate_tokenized,
    multiple_choice_prompt,
    pixel_inputs,
)
from tests.legacy_encoding import encode_example

QUESTION = "Quantas formas há na imagem?"
TEXTS = [QUESTION, "3", "vermelho", "à esquerda", CAPTION_PROMPT, "Olá, tudo bem?",
         "Sim, obrigado.", "És um assistente.", "A. azul B. verde"] * 3

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama 3.1 style: bos, an injected system header with dates, string content (trimmed)
LLAMA3 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)
# ChatML that refuses a system turn (Gemma-like)
NO_SYSTEM = ("{% for message in messages %}{% if message['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
             "'\n'}}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# name -> (special tokens, end of turn first so it gets id 0; bos; eos; template)
STAND_INS = {
    "chatml": (["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<pad>", "<image>"],
               None, "<|endoftext|>", CHATML),
    "llama3": (["<|eot_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<pad>", "<image>"],
               "<|begin_of_text|>", "<|end_of_text|>", LLAMA3),
}
EOT = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def _stand_in_tokenizer(specials, bos, eos, template) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here (nothing downloaded) carrying a foreign template."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    kwargs = {"bos_token": bos} if bos else {}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        additional_special_tokens=[t for t in specials if t not in (bos, eos, "<pad>",
                                                                    "<image>")],
        clean_up_tokenization_spaces=False, **kwargs)
    hf.chat_template = template
    return hf


@pytest.fixture(scope="module")
def settings():
    return load_settings("tiny")


@pytest.fixture(scope="module")
def tiny(settings):
    model, processor = build_tiny_model(settings, TEXTS)
    return model, processor


@pytest.fixture(scope="module", params=sorted(STAND_INS))
def stand_in(request, settings):
    specials, bos, eos, template = STAND_INS[request.param]
    processor = make_processor(_stand_in_tokenizer(specials, bos, eos, template), settings)
    return request.param, processor


def _rec(kind: str, rid: str = "r1", **kw) -> Record:
    return Record(id=rid, source="native", language="pt-PT", task_family="test", kind=kind,
                  **kw)


def _conversation(system: str | None = None, image: bool = True) -> Record:
    turns = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "<image>\nOlá, tudo bem?" if image else "Olá, tudo bem?"},
        {"role": "assistant", "content": "Sim, obrigado."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "3"},
    ]
    return _rec("conversation", "conv", conversations=turns,
                **({"image": "a.png"} if image else {}))


def _labelled_spans(tokenizer, t) -> list[str]:
    """The decoded runs of labelled tokens, in order."""
    spans, run = [], []
    for token, label in zip(t.input_ids.tolist(), t.labels.tolist(), strict=True):
        if label == IGNORE_INDEX:
            if run:
                spans.append(tokenizer.decode(run))
            run = []
        else:
            assert label == token
            run.append(token)
    if run:
        spans.append(tokenizer.decode(run))
    return spans


def _tiny_model_for(processor, settings) -> LlavaNextForConditionalGeneration:
    m, tok = settings.model, processor.tokenizer
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=m.vision.image_size,
                                patch_size=m.vision.patch_size, vision_use_head=False)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text,
                             image_token_id=processor.image_token_id,
                             image_grid_pinpoints=[list(p) for p in m.image_grid_pinpoints],
                             vision_feature_select_strategy="full", vision_feature_layer=-1)
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config)


# -- foreign templates ----------------------------------------------------------------------

def test_stand_in_template_end_of_turn_and_string_content(stand_in):
    name, processor = stand_in
    tok = processor.tokenizer
    assert processor.chat_template == tok.chat_template == STAND_INS[name][3]
    chat = ChatFormat(processor)
    eot = tok.convert_tokens_to_ids(EOT[name])
    assert not chat.list_content and chat.system_role
    assert chat.eot_token_id == eot != tok.eos_token_id
    assert chat.stop_token_ids == [eot, tok.eos_token_id]

    record = _rec("qa", question=QUESTION, answer="vermelho", image="a.png")
    text = tok.apply_chat_template(chat.messages(record), tokenize=False)
    assert "{'type'" not in text and text.count(processor.image_token) == 1
    image = Image.new("RGB", (90, 30))
    t = chat.encode(record, [(30, 90)], Budget(max_length=512))
    expected = processor(images=image, text=text, add_special_tokens=False)["input_ids"][0]
    assert t.n_image_tokens == expected.count(processor.image_token_id) == \
        int((t.input_ids == processor.image_token_id).sum())
    assert _labelled_spans(tok, t) == ["vermelho" + EOT[name]]

    prompt = chat.generation_prompt(QUESTION, [(30, 90)])
    rendered = tok.apply_chat_template([{"role": "user", "content": "<image>\n" + QUESTION}],
                                       tokenize=False, add_generation_prompt=True)
    theirs = processor(images=image, text=rendered, add_special_tokens=False)["input_ids"][0]
    assert prompt.input_ids.tolist() == theirs
    assert torch.all(prompt.labels == IGNORE_INDEX)


def test_stand_in_multi_turn_labels_every_answer_and_nothing_else(stand_in):
    name, processor = stand_in
    tok = processor.tokenizer
    chat = ChatFormat(processor, system_prompt="És um assistente.")
    t = chat.encode(_conversation(), [(48, 64)], Budget(512))
    assert _labelled_spans(tok, t) == ["Sim, obrigado." + EOT[name], "3" + EOT[name]]
    context = tok.decode(t.input_ids[t.labels == IGNORE_INDEX])
    assert "És um assistente." in context and "Olá, tudo bem?" in context and QUESTION in context
    # an image placeholder in a string-content template becomes the image token in place
    first_image = int((t.input_ids == processor.image_token_id).nonzero()[0])
    assert "user" in tok.decode(t.input_ids[:first_image])


def test_stand_in_trains_and_generation_stops_on_end_of_turn(stand_in, settings):
    name, processor = stand_in
    tok = processor.tokenizer
    chat = ChatFormat(processor)
    model = _tiny_model_for(processor, settings)
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    samples = [chat.encode(_conversation(), [(48, 64)], Budget(512)),
               chat.encode(_rec("qa", "txt", question="Olá, tudo bem?", answer="Sim."), [],
                           Budget(512))]
    pixels = [pixel_inputs(processor, [image], samples[0].image_sizes)[0],
              pixel_inputs(processor, [None], samples[1].image_sizes)[0]]
    batch = collate_tokenized(samples, pixels, tok.pad_token_id)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.lm_head.weight.grad is not None

    with torch.no_grad():  # every logit 0: greedy picks id 0, the end-of-turn token
        model.lm_head.weight.zero_()
    assert tok.convert_ids_to_tokens(0) == EOT[name]
    prompt = chat.generation_prompt(QUESTION, [(48, 64)])
    gen = collate_tokenized([prompt], [pixel_inputs(processor, [image], prompt.image_sizes)[0]],
                            tok.pad_token_id, padding_side="left")
    gen.pop("labels")
    out = model.generate(**gen, max_new_tokens=5, do_sample=False,
                         eos_token_id=chat.stop_token_ids, pad_token_id=tok.pad_token_id)
    assert out[0, gen["input_ids"].shape[1]:].tolist() == [chat.eot_token_id]


def test_template_without_system_role_gets_it_in_the_first_user_turn(settings):
    specials, bos, eos, _ = STAND_INS["chatml"]
    processor = make_processor(_stand_in_tokenizer(specials, bos, eos, NO_SYSTEM), settings)
    chat = ChatFormat(processor, system_prompt="És um assistente.")
    assert not chat.system_role
    messages = chat.messages(_rec("qa", question=QUESTION, answer="3", image="a.png"))
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == f"<image>\nÉs um assistente.\n\n{QUESTION}"
    t = chat.encode(_rec("qa", question=QUESTION, answer="3", image="a.png"), [(48, 48)],
                    Budget(512))
    assert _labelled_spans(processor.tokenizer, t) == ["3<|im_end|>"]


def test_template_that_is_not_incremental_is_a_template_error(settings):
    specials, bos, eos, _ = STAND_INS["chatml"]
    odd = CHATML.replace("{{ '<|im_start|>assistant\n' }}", "{{ '<|im_start|>assistant:' }}")
    processor = make_processor(_stand_in_tokenizer(specials, bos, eos, odd), settings)
    chat = ChatFormat(processor)
    with pytest.raises(AmaliaError, match="does not render conversations incrementally") as err:
        chat.encode(_rec("qa", question=QUESTION, answer="3", image="a.png"), [(48, 48)],
                    Budget(512))
    assert not isinstance(err.value, SkipSample)  # every record would fail: stop the stage


# -- image tokens -------------------------------------------------------------------------

def test_image_token_count_matches_the_processor_on_many_sizes(tiny):
    _, processor = tiny
    chat = ChatFormat(processor)
    sizes = [(h, w) for w, h in PROBE_SIZES] + [(1, 1), (17, 300), (4000, 3000), (48, 48),
                                                (49, 47), (95, 97), (2, 500), (333, 111)]
    for h, w in sizes:
        batch = processor(images=Image.new("RGB", (w, h)), text=processor.image_token,
                          return_tensors="pt")
        tiles, tokens = chat.image_cost((h, w))
        assert tokens == int((batch["input_ids"] == processor.image_token_id).sum()), (h, w)
        assert tiles == batch["pixel_values"].shape[1], (h, w)
    images = [Image.new("RGB", (w, h), (9, 9, 9)) for h, w in sizes[:6]]
    pixels, image_sizes = pixel_inputs(processor, images, sizes[:6])
    assert image_sizes.tolist() == [list(s) for s in sizes[:6]]
    for image, tiles in zip(images, pixels, strict=True):
        alone = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert torch.equal(tiles, alone[0])


# -- record kinds on the tiny processor -----------------------------------------------------

def test_qa_is_unchanged_from_encode_example(tiny):
    _, processor = tiny
    chat = ChatFormat(processor)
    assert chat.list_content and chat.eot_token_id == processor.tokenizer.eos_token_id
    assert chat.stop_token_ids == [processor.tokenizer.eos_token_id]
    image = Image.new("RGB", (90, 30), (30, 60, 220))
    before = encode_example(processor, image, QUESTION, "à esquerda", 256, "r1")
    for options in (None, ["à esquerda", "à direita"]):  # options are not shown for qa
        record = _rec("qa", question=QUESTION, answer="à esquerda", options=options,
                      image="a.png")
        t = chat.encode(record, [(30, 90)], Budget(256))
        assert t.input_ids.tolist() == before.input_ids.tolist()
        assert t.labels.tolist() == before.labels.tolist()
        assert torch.all(t.attention_mask == 1) and not t.dummy_image
        pixels, sizes = pixel_inputs(processor, [image], t.image_sizes)
        assert torch.equal(pixels[0], before.pixel_values)
        assert sizes[0].tolist() == before.image_size.tolist()


def test_caption_and_multiple_choice(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    chat = ChatFormat(processor)
    t = chat.encode(_rec("caption", text="Um círculo vermelho.", image="a.png"), [(48, 48)],
                    Budget(256))
    assert _labelled_spans(tok, t) == ["Um círculo vermelho.</s>"]
    assert CAPTION_PROMPT in tok.decode(t.input_ids[t.labels == IGNORE_INDEX])

    options = ["azul", "verde", "vermelho"]
    record = _rec("multiple_choice", question="De que cor é?", options=options,
                  answer="verde", image="a.png")
    t = chat.encode(record, [(48, 48)], Budget(256))
    assert _labelled_spans(tok, t) == ["B</s>"]
    user = chat.messages(record)[0]["content"][1]["text"]
    assert user == "De que cor é?\nA. azul\nB. verde\nC. vermelho" + MC_POST_PROMPT
    # the same text the multiple-choice eval tasks ask
    ai2d = load_tasks()["ai2d_pt"]
    assert user == render_prompt(ai2d, {"question": "De que cor é?", "options": options})
    assert user == multiple_choice_prompt("De que cor é?", options)


def test_mc_post_prompt_is_the_eval_tasks_one():
    tasks = load_tasks()
    for name in ("ai2d_pt", "mmstar_pt", "seedbench_pt", "caravela_mcq"):
        assert tasks[name].prompt.post_prompt == MC_POST_PROMPT, name


def test_conversation_with_system_labels_both_answers(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    chat = ChatFormat(processor, system_prompt="Ignorado.")
    t = chat.encode(_conversation(system="És um assistente."), [(48, 64)], Budget(256))
    assert _labelled_spans(tok, t) == ["Sim, obrigado.</s>", "3</s>"]
    text = tok.decode(t.input_ids)
    assert text.startswith("<s><|system|>És um assistente.</s><|user|><image>")
    assert "Ignorado." not in text  # the record's system turn overrides the configured one
    assert t.n_image_tokens == chat.image_cost((48, 64))[1]
    # trailing user turns are dropped; no assistant turn at all is a skipped sample
    record = _conversation()
    extra = Record.model_validate({**record.model_dump(), "conversations": [
        *record.model_dump()["conversations"], {"role": "user", "content": "E?"}]})
    assert chat.encode(extra, [(48, 64)], Budget(256)).input_ids.tolist() == \
        ChatFormat(processor, system_prompt="Ignorado.").encode(
            record, [(48, 64)], Budget(256)).input_ids.tolist()
    only_user = _rec("conversation", conversations=[{"role": "user", "content": "Olá?"}])
    with pytest.raises(SkipSample) as err:
        chat.encode(only_user, [], Budget(256))
    assert err.value.reason == "no_assistant_turn"


def test_images_go_where_the_placeholders_are_and_the_model_takes_them(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    chat = ChatFormat(processor)
    record = _rec("conversation", "two", images=["a.png", "b.png"], image="a.png",
                  conversations=[{"role": "user", "content": "Olá, <image> tudo bem?"},
                                 {"role": "assistant", "content": "Sim, obrigado."},
                                 {"role": "user", "content": "E aqui? <image>"},
                                 {"role": "assistant", "content": "3"}])
    sizes = [(48, 64), (300, 17)]
    t = chat.encode(record, sizes, Budget(512))
    assert t.image_sizes == sizes
    assert t.n_image_tokens == sum(chat.image_cost(s)[1] for s in sizes)
    ids = t.input_ids.tolist()
    runs = []  # (start, length) of each run of image tokens
    for i, token in enumerate(ids):
        if token == processor.image_token_id:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
    assert [n for _, n in runs] == [chat.image_cost(s)[1] for s in sizes]
    assert tok.decode(ids[: runs[0][0]]).endswith("<|user|>Olá, ")
    assert tok.decode(ids[: runs[1][0]]).endswith("<|user|>E aqui? ")
    assert _labelled_spans(tok, t) == ["Sim, obrigado.</s>", "3</s>"]
    images = [Image.new("RGB", (64, 48), (200, 0, 0)), Image.new("RGB", (17, 300), (0, 0, 200))]
    qa = chat.encode(_rec("qa", question=QUESTION, answer="3", image="a.png"), [(48, 48)],
                     Budget(512))
    pixels = [pixel_inputs(processor, images, t.image_sizes)[0],
              pixel_inputs(processor, [images[0]], qa.image_sizes)[0]]
    batch = collate_tokenized([t, qa], pixels, tok.pad_token_id)
    assert batch["pixel_values"].shape[0] == 3 and batch["image_sizes"].tolist() == [
        [48, 64], [300, 17], [48, 48]]
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_grounding_answer_round_trips_through_parse_box(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    chat = ChatFormat(processor)
    record = _rec("grounding", question="o carro vermelho", image="a.png",
                  boxes=[{"bbox": [20, 10, 80, 40]}])
    t = chat.encode(record, [(100, 200)], Budget(256))
    (answer,) = _labelled_spans(tok, t)
    assert answer == "[0.100, 0.100, 0.400, 0.400]</s>"
    box = parse_box(answer)
    assert box_iou(answer, ["[20, 10, 80, 40]"], image_width=200, image_height=100,
                   box_format="norm1", answer_format="pixel") == pytest.approx(1.0)
    assert box == pytest.approx((0.1, 0.1, 0.4, 0.4))
    two = Record.model_validate({**record.model_dump(), "boxes": [
        {"bbox": [0, 0, 100, 50], "label": "carro"}, {"bbox": [100, 50, 200, 100],
                                                      "label": "mota"}]})
    t = chat.encode(two, [(100, 200)], Budget(256))
    assert _labelled_spans(tok, t) == [
        "carro: [0.000, 0.000, 0.500, 0.500]\nmota: [0.500, 0.500, 1.000, 1.000]</s>"]


def test_text_only_gets_one_masked_dummy_image(tiny):
    _, processor = tiny
    chat = ChatFormat(processor)
    side = processor.image_processor.size.height
    for record in (_rec("qa", question="Olá, tudo bem?", answer="Sim."),
                   _conversation(image=False)):
        t = chat.encode(record, [], Budget(256))
        is_image = t.input_ids == processor.image_token_id
        assert t.dummy_image and t.image_sizes == [(side, side)]
        assert int(is_image.sum()) == t.n_image_tokens == chat.image_cost((side, side))[1] > 0
        assert torch.equal(t.attention_mask == 0, is_image)  # zeros exactly on its tokens
        assert torch.all(t.labels[is_image] == IGNORE_INDEX)
        first = int(is_image.nonzero()[0])
        assert processor.tokenizer.decode(t.input_ids[:first]) == "<s><|user|>"
    pixels, _ = pixel_inputs(processor, [None], [(side, side)])
    assert pixels[0].shape[1:] == (3, side, side) and not pixels[0].any()
    chosen, rejected = chat.encode_preference(
        _rec("preference", question="Olá?", chosen="Sim.", rejected="Não sei, talvez."), [],
        Budget(256))
    assert chosen.dummy_image and rejected.dummy_image
    start = int((chosen.labels != IGNORE_INDEX).nonzero()[0])  # the prompt tokens are shared
    assert start == int((rejected.labels != IGNORE_INDEX).nonzero()[0])
    assert chosen.input_ids[:start].tolist() == rejected.input_ids[:start].tolist()
    assert torch.equal(chosen.attention_mask[:start], rejected.attention_mask[:start])


# -- budgets ----------------------------------------------------------------------------------

def test_big_image_is_downscaled_to_fit_the_tile_budget(tiny):
    _, processor = tiny
    chat = ChatFormat(processor)
    record = _rec("qa", "big", question=QUESTION, answer="3", image="a.png")
    full = chat.encode(record, [(3000, 4000)], Budget(512))
    assert full.image_sizes == [(3000, 4000)] and chat.image_cost((3000, 4000))[0] == 5
    small = chat.encode(record, [(3000, 4000)], Budget(512, max_tiles=3))
    (h, w), = small.image_sizes
    assert chat.image_cost((h, w))[0] <= 3 and abs(w / h - 4 / 3) < 0.05
    short = chat.encode(record, [(3000, 4000)], Budget(len(full) - 1))
    assert len(short) <= len(full) - 1
    pixels, sizes = pixel_inputs(processor, [Image.new("RGB", (4000, 3000))], small.image_sizes)
    assert pixels[0].shape[0] <= 3 and sizes.tolist() == [[h, w]]
    assert small.n_image_tokens == int((small.input_ids == processor.image_token_id).sum())


def test_impossible_samples_are_skipped_with_a_reason(tiny):
    _, processor = tiny
    chat = ChatFormat(processor)
    long = _rec("qa", "long-1", question="palavra " * 300, answer="3", image="a.png")
    with pytest.raises(SkipSample, match=r"record long-1: \d+ tokens \(\d+ image tokens\) > "
                                         r"max_length=64") as err:
        chat.encode(long, [(48, 48)], Budget(64))
    assert err.value.reason == "too_long"
    record = _rec("qa", "tiles-1", question=QUESTION, answer="3", image="a.png")
    with pytest.raises(SkipSample, match="record tiles-1: 2 tiles > max_tiles=1") as err:
        chat.encode(record, [(3000, 4000)], Budget(512, max_tiles=1))
    assert err.value.reason == "too_many_tiles"
