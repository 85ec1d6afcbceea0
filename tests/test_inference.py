"""Inference: any image of any size or mode goes through tiling; batched (left-padded)
generation equals one-by-one and today's prompts; generation stops on the template's
end-of-turn token; unreadable images fail with one clear line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from components.errors import AmaliaError
from components.inference import ask, generate_answers
from components.model.build import build_tiny_model, make_processor, save_model
from components.settings import load_settings
from components.train.data import load_image
from tests.legacy_encoding import Encoded, collate, encode_prompt

QUESTION = "Quantas formas há na imagem?"


@pytest.fixture(scope="module")
def settings():
    return load_settings("tiny")


@pytest.fixture(scope="module")
def model_and_processor(settings):
    model, processor = build_tiny_model(settings, [QUESTION, "3", "vermelho", "à esquerda"] * 4)
    return model.eval(), processor


def _odd_images(root):
    """Every awkward kind of photo a user might upload."""
    rng = np.random.default_rng(0)
    specs = {
        "rgba.png": Image.fromarray(rng.integers(0, 255, (40, 70, 4), dtype=np.uint8), "RGBA"),
        "grey.png": Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8), "L"),
        "palette.png": Image.new("RGB", (33, 65), (10, 200, 30)).convert("P"),
        "grey16.png": Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)),
        "one.png": Image.new("RGB", (1, 1), (255, 0, 0)),
        "big.jpg": Image.new("RGB", (4000, 3000), (120, 90, 60)),
        "tall.png": Image.new("RGB", (17, 300), (0, 0, 255)),
        "wide.png": Image.new("RGB", (3000, 20), (0, 255, 0)),
        "cmyk.jpg": Image.new("CMYK", (64, 48), (0, 50, 100, 0)),
        "bw.png": Image.new("1", (31, 29), 1),
    }
    paths = []
    for name, image in specs.items():
        path = root / name
        image.save(path)
        paths.append(path)
    return paths


def test_any_image_goes_through(tmp_path, model_and_processor):
    model, processor = model_and_processor
    paths = _odd_images(tmp_path)
    for path in paths:
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 1
    items = [(p, QUESTION) for p in paths]
    batched = generate_answers(model, processor, items, max_new_tokens=4, batch_size=4)
    assert len(batched) == len(items) and all(isinstance(a, str) for a in batched)
    assert all(a == a.strip() for a in batched)
    one_by_one = generate_answers(model, processor, items, max_new_tokens=4, batch_size=1)
    assert batched == one_by_one  # left padding does not change greedy answers


def test_sixteen_bit_images_are_not_washed_out(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    pixels = np.asarray(load_image(tmp_path / "ramp.png"))
    assert pixels.min() == 0 and pixels.max() == 255


def test_huge_images_are_shrunk_on_load(tmp_path):
    Image.new("RGB", (5000, 100)).save(tmp_path / "huge.png")
    assert load_image(tmp_path / "huge.png").size == (2048, 41)


def test_unreadable_image_is_one_clear_error(tmp_path, model_and_processor):
    model, processor = model_and_processor
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(AmaliaError, match=f"cannot read image {broken}: "):
        generate_answers(model, processor, [(broken, QUESTION)], 4, 1)
    with pytest.raises(AmaliaError, match="cannot read image .*missing.png"):
        load_image(tmp_path / "missing.png")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    with pytest.raises(AmaliaError, match="cannot read image"):
        load_image(truncated)


def test_ask_from_a_saved_folder(tmp_path, model_and_processor, settings):
    model, processor = model_and_processor
    folder = save_model(model, processor, tmp_path / "model")
    Image.new("RGBA", (80, 50), (255, 0, 0, 128)).save(tmp_path / "q.png")
    answer = ask(str(folder), tmp_path / "q.png", QUESTION, settings.evaluate.max_new_tokens)
    assert isinstance(answer, str)
    assert answer == generate_answers(model, processor, [(tmp_path / "q.png", QUESTION)],
                                      settings.evaluate.max_new_tokens, 1)[0]
    with pytest.raises(AmaliaError, match="cannot read image"):
        ask(folder, tmp_path / "nope.png", QUESTION)


def test_answers_equal_the_pre_chat_format_prompt_path(tmp_path, model_and_processor):
    """The tiny template's prompts, pixels and stop are what `encode_prompt` + `collate`
    + eos gave before `ChatFormat`, so the tiny retrain's scores do not move."""
    import torch

    model, processor = model_and_processor
    tok = processor.tokenizer
    paths = _odd_images(tmp_path)[:5]
    encoded = []
    for path in paths:
        p = encode_prompt(processor, load_image(path), QUESTION)
        encoded.append(Encoded(str(path), p["input_ids"], p["input_ids"], p["pixel_values"],
                               p["image_sizes"]))
    batch = collate(encoded, tok.pad_token_id, padding_side="left")
    batch.pop("labels")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    before = [t.strip() for t in tok.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                                  skip_special_tokens=True)]
    items = [(p, QUESTION) for p in paths]
    assert generate_answers(model, processor, items, max_new_tokens=6, batch_size=5) == before


def test_generation_stops_on_the_templates_end_of_turn(tmp_path, settings):
    """A ChatML model ends its answers with <|im_end|>, not eos: generate must stop there."""
    import torch

    from tests.test_chat import STAND_INS, _stand_in_tokenizer, _tiny_model_for

    processor = make_processor(_stand_in_tokenizer(*STAND_INS["chatml"]), settings)
    model = _tiny_model_for(processor, settings).eval()
    with torch.no_grad():  # every logit 0: greedy always picks id 0 = <|im_end|>
        model.lm_head.weight.zero_()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(tmp_path / "a.png")
    seen = {}
    generate = model.generate

    def spy(**kwargs):
        out = generate(**kwargs)
        seen["new"] = out.shape[1] - kwargs["input_ids"].shape[1]
        return out

    model.generate = spy
    answers = generate_answers(model, processor, [(tmp_path / "a.png", QUESTION)],
                               max_new_tokens=6, batch_size=1)
    assert answers == [""] and seen["new"] == 1
