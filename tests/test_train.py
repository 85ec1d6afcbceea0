"""Training behaviour: chat batches and label masking, the truncation guard, and the three
stages on ~16 tiny synthetic records (loss falls; align moves only the connector; DPO
raises the preference margin)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from components.errors import AmaliaError
from components.model.build import build_tiny_model, load_model
from components.model.freeze import PARTS
from components.records import Record, write_records
from components.settings import load_settings
from components.stages import StageContext
from components.train.data import (
    CAPTION_PROMPT,
    IGNORE_INDEX,
    ChatDataset,
    PreferenceDataset,
    collate,
    collate_preference,
    encode_example,
)
from components.train.loop import lr_lambda

COLOURS = {"vermelho": (220, 30, 30), "azul": (30, 60, 220), "verde": (30, 170, 60),
           "amarelo": (230, 200, 20)}
QUESTION = "De que cor é a forma?"


def make_mix(root: Path, n: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """`(data_dir, run_dir)` with PNGs of one coloured disc and a full `mix/`."""
    rng = random.Random(seed)
    data = root / "data"
    (data / "img").mkdir(parents=True)
    caps, qas, prefs = [], [], []
    for i in range(n):
        w, h = rng.randint(48, 96), rng.randint(48, 96)
        colour = list(COLOURS)[i % len(COLOURS)]
        image = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(image).ellipse([w * 0.2, h * 0.2, w * 0.8, h * 0.8], fill=COLOURS[colour])
        rel = f"img/{i}.png"
        image.save(data / rel)
        base = {"source": "native", "language": "pt-PT", "task_family": "cor", "image": rel}
        caps.append(Record(id=f"c{i}", kind="caption", text=f"Um círculo {colour}.", **base))
        qas.append(Record(id=f"q{i}", kind="qa", question=QUESTION, answer=colour,
                          options=list(COLOURS), **base))
        wrong = list(COLOURS)[(i + 1) % len(COLOURS)]
        prefs.append(Record(id=f"p{i}", kind="preference", question=QUESTION, chosen=colour,
                            rejected=wrong, **base))
    mix = root / "run" / "mix"
    write_records(mix / "align.jsonl", caps)
    write_records(mix / "sft.jsonl", qas)
    write_records(mix / "dpo.jsonl", prefs)
    write_records(mix / "dpo_eval.jsonl", prefs[: n // 2])
    write_records(mix / "eval.jsonl", [r.model_copy(update={"split": "test"}) for r in qas[:4]])
    return data, root / "run"


@pytest.fixture(scope="module")
def processor():
    _, proc = build_tiny_model(load_settings("tiny"), [QUESTION, *COLOURS, CAPTION_PROMPT] * 3)
    return proc


def _image(w=64, h=48):
    return Image.new("RGB", (w, h), (30, 60, 220))


def test_labels_cover_only_the_answer_and_end_token(processor):
    tok = processor.tokenizer
    ex = encode_example(processor, _image(), QUESTION, "à esquerda", 256, "r1")
    answer_at = (ex.labels != IGNORE_INDEX).nonzero().flatten()
    start = int(answer_at[0])
    assert answer_at.tolist() == list(range(start, len(ex)))  # one contiguous tail
    assert tok.decode(ex.labels[start:]) == "à esquerda</s>"
    assert int(ex.labels[-1]) == tok.eos_token_id
    # the prompt (image tokens, role markers, question) is never a target
    assert int(ex.input_ids[start - 1]) == tok.convert_tokens_to_ids("<|assistant|>")
    assert processor.image_token_id in ex.input_ids[:start].tolist()
    assert processor.image_token_id not in ex.labels.tolist()
    torch.testing.assert_close(ex.labels[start:], ex.input_ids[start:])


def test_collate_pads_right_or_left(processor):
    pad = processor.tokenizer.pad_token_id
    short = encode_example(processor, _image(40, 40), QUESTION, "3", 256, "a")
    long = encode_example(processor, _image(90, 30), "Quantas formas há na imagem?",
                          "a segunda", 256, "b")
    assert len(short) != len(long)
    for side in ("right", "left"):
        batch = collate([short, long], pad, padding_side=side)
        n = batch["input_ids"].shape[1]
        assert n == max(len(short), len(long))
        for row, ex in enumerate([short, long]):
            real = batch["attention_mask"][row].bool()
            assert int(real.sum()) == len(ex)
            torch.testing.assert_close(batch["input_ids"][row][real], ex.input_ids)
            torch.testing.assert_close(batch["labels"][row][real], ex.labels)
            assert torch.all(batch["labels"][row][~real] == IGNORE_INDEX)
            assert torch.all(batch["input_ids"][row][~real] == pad)
            pad_pos = (~real).nonzero().flatten().tolist()
            if pad_pos:
                assert (pad_pos[0] == 0) == (side == "left")
        assert batch["pixel_values"].shape[:2] == (2, max(short.pixel_values.shape[0],
                                                          long.pixel_values.shape[0]))
        assert batch["image_sizes"].tolist() == [[40, 40], [30, 90]]
    pref = collate_preference([(short, long)], pad)
    assert pref["input_ids"].shape[0] == 2


def test_too_long_sample_raises_naming_the_record(processor):
    with pytest.raises(AmaliaError, match=r"record rec-42: \d+ tokens \(\d+ image tokens\)"):
        encode_example(processor, _image(96, 96), QUESTION, "vermelho", 40, "rec-42")


def test_datasets_read_records(tmp_path, processor):
    data, run = make_mix(tmp_path, n=4)
    from components.records import read_records

    caps = ChatDataset(read_records(run / "mix" / "align.jsonl"), data, processor, 256)
    first = caps[0]
    prompt = processor.tokenizer.decode(first.input_ids[first.labels == IGNORE_INDEX])
    assert CAPTION_PROMPT in prompt
    prefs = PreferenceDataset(read_records(run / "mix" / "dpo.jsonl"), data, processor, 256)
    chosen, rejected = prefs[0]
    assert chosen.id == rejected.id == "p0"
    torch.testing.assert_close(chosen.pixel_values, rejected.pixel_values)
    with pytest.raises(AmaliaError, match="cannot read image"):
        bad = read_records(run / "mix" / "sft.jsonl")[:1]
        ChatDataset([bad[0].model_copy(update={"image": "img/missing.png"})], data, processor,
                    256)


def test_lr_schedule_warms_up_then_decays():
    f = lr_lambda(100)
    assert f(0) < f(5) < f(9) == pytest.approx(1.0)
    assert f(50) < f(10) and f(99) == pytest.approx(0.1, abs=0.01)


def _connector_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(PARTS["connector"])}


def test_align_sft_dpo_learn(tmp_path):
    from components.train.stages import run_align, run_dpo, run_sft

    data, run = make_mix(tmp_path, n=16)
    settings = load_settings("tiny", overrides={
        "data_dir": str(data),
        "align": {"epochs": 4, "batch_size": 4, "learning_rate": 3e-3},
        "sft": {"epochs": 5, "batch_size": 4, "learning_rate": 3e-3},
        "dpo": {"epochs": 3, "batch_size": 4, "learning_rate": 1e-3},
    })
    logged: list[tuple[dict, int | None]] = []
    outputs = {}
    for name, fn in (("align", run_align), ("sft", run_sft), ("dpo", run_dpo)):
        ctx = StageContext(name, settings, run, lambda m, s: logged.append((m, s)),
                           progress=False)
        ctx.out_dir.mkdir(parents=True)
        out = fn(ctx)
        outputs[name] = out
        assert out.metrics["loss_last"] < out.metrics["loss_first"], name
        assert out.counts["train_samples"] == 16 and out.counts["steps"] > 0
        assert out.model_dir == "model" and (ctx.out_dir / "model" / "config.json").exists()
        for artifact in out.artifacts:
            assert (ctx.out_dir / artifact).exists()
        saved = json.loads((ctx.out_dir / "metrics.json").read_text())
        assert len(saved["loss_history"]) == out.counts["steps"] == saved["steps"]
        assert out.params["trainable"] == list(settings.train(name).trainable)
        assert out.params["trainable_params"] > 0

    # align trained the connector and nothing else
    init = load_model(run / "align" / "init")[0].state_dict()
    aligned = load_model(run / "align" / "model")[0].state_dict()
    for key, value in _connector_free(init).items():
        torch.testing.assert_close(aligned[key], value, msg=key)
    assert not torch.equal(aligned["model.multi_modal_projector.linear_1.weight"],
                           init["model.multi_modal_projector.linear_1.weight"])
    assert outputs["align"].params["trainable_params"] < outputs["sft"].params["trainable_params"]

    dpo = outputs["dpo"].metrics
    assert dpo["margin_before"] == pytest.approx(0.0, abs=1e-5)
    assert dpo["margin_after"] > dpo["margin_before"]
    assert any("loss" in m for m, _ in logged)
