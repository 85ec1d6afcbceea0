"""Training on the Trainer engine, in one process: the three stages learn on ~16 tiny
records, align moves only the connector, DPO raises the margin, bf16 keeps fp32 master
weights that move at the paper's DPO rate, per-part learning rates, budgets skip instead
of crashing, every record kind trains, and the data streams from the mix shards."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from components.errors import DataQualityError
from components.model.build import build_tiny_model, load_model
from components.model.freeze import PARTS, parameter_groups, set_trainable
from components.records import Box, Record, Turn
from components.settings import load_settings
from components.stages import StageContext
from components.train.chat import Budget, ChatFormat
from components.train.dataset import BlockShuffleSampler, SampleCollator, ShardDataset
from components.train.engine import LMObjective, train_stage
from tests.train_helpers import COLOURS, QUESTION, make_mix, overrides, shard


def _connector_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(PARTS["connector"])}


def _ctx(name, settings, run, logged=None):
    sink = (lambda m, s: logged.append((m, s))) if logged is not None else (lambda m, s: None)
    ctx = StageContext(name, settings, run, sink, progress=False)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def test_align_sft_dpo_learn(tmp_path):
    from components.stages import run_stage

    data, run = make_mix(tmp_path, n=16)
    settings = load_settings("tiny", overrides=overrides(
        data,
        align={"epochs": 4, "global_batch_size": 4, "learning_rate": 3e-3},
        sft={"epochs": 6, "global_batch_size": 4, "learning_rate": 3e-3},
        dpo={"epochs": 3, "global_batch_size": 4, "learning_rate": 1e-3},
    ))
    logged: list[tuple[dict, int | None]] = []
    outputs = {}
    for name in ("align", "sft", "dpo"):
        out, manifest = run_stage(name, settings, run, lambda m, s: logged.append((m, s)),
                                  progress=False)
        ctx = _ctx(name, settings, run)
        outputs[name] = out
        assert manifest["resumed_from_step"] is None
        assert manifest["engine"]["per_device_batch_size"] == 4
        assert manifest["engine"]["gradient_accumulation_steps"] == 1
        assert len(manifest["loss_history"]) == out.counts["steps"]
        assert out.metrics["loss_last"] < out.metrics["loss_first"], name
        assert out.counts["train_samples"] == 16 and out.counts["steps"] == \
            settings.stage_train(name).epochs * 16 // 4
        assert (ctx.out_dir / "model" / "config.json").exists()
        for artifact in out.artifacts:
            assert (ctx.out_dir / artifact).exists(), artifact
        saved = json.loads((ctx.out_dir / "metrics.json").read_text())
        assert len(saved["loss_history"]) == out.counts["steps"] == saved["steps"]
        assert saved["engine"]["global_batch_size"] == 4
        assert saved["engine"]["world_size"] == 1
        assert out.extra["resumed_from_step"] is None
        assert not (ctx.out_dir / "checkpoints").exists()  # discarded once finished

    init = load_model(run / "align" / "init")[0].state_dict()
    aligned = load_model(run / "align" / "model")[0].state_dict()
    for key, value in _connector_free(init).items():
        torch.testing.assert_close(aligned[key], value, msg=key)
    assert not torch.equal(aligned["model.multi_modal_projector.linear_1.weight"],
                           init["model.multi_modal_projector.linear_1.weight"])

    dpo = outputs["dpo"].metrics
    assert dpo["margin_before"] == pytest.approx(0.0, abs=1e-6)
    assert dpo["margin_after"] > 0.0
    # metrics reached the sink every logging step, with what the issue lists
    sft_steps = [m for m, _ in logged if "loss" in m and "rewards/margins" not in m]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "images_per_s", "padding_ratio"):
        assert key in sft_steps[0], key
    dpo_steps = [m for m, _ in logged if "rewards/margins" in m]
    assert dpo_steps and {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                          "logps/chosen", "logps/rejected"} <= set(dpo_steps[0])


class _Snapshots(TrainerCallback):
    """The fp32 master copy of one trainable weight after every optimizer step."""

    def __init__(self, param):
        self.param = param
        self.values = [param.detach().clone()]

    def on_step_end(self, args, state, control, **kwargs):
        self.values.append(self.param.detach().clone())


def _sft_setup(tmp_path, **train):
    data, run = make_mix(tmp_path, n=8)
    settings = load_settings("tiny", overrides=overrides(
        data, sft={"epochs": 1, "global_batch_size": 2, "warmup_ratio": 0.0, **train}))
    model, processor = build_tiny_model(settings, [QUESTION, *COLOURS] * 3)
    chat = ChatFormat(processor)
    dataset = ShardDataset(run / "mix" / "shards" / "sft", data, processor, chat,
                           Budget(settings.model.max_length))
    return settings, run, model.float(), processor, dataset


def _train_sft(tmp_path, engine: dict, make_callback, **train):
    """Train the connector and LLM of a small model for one epoch of 8 samples (4 steps)
    with `engine` settings changed; `make_callback(model)` watches the run."""
    settings, run, model, processor, dataset = _sft_setup(tmp_path, **train)
    settings = settings.model_copy(update={"train_": settings.engine.model_copy(
        update=engine)})
    set_trainable(model, ["connector", "language_model"])
    callback = make_callback(model)
    out = run / "sft"
    out.mkdir()
    result = train_stage(settings, "sft", out, model, dataset,
                         SampleCollator(processor.tokenizer.pad_token_id), LMObjective(),
                         config_digest="t", log_metrics=lambda m, s: None, progress=False,
                         callbacks=[callback])
    return model, callback, result


def test_bf16_autocast_keeps_fp32_master_weights_that_move_at_the_dpo_rate(tmp_path):
    model, snaps, result = _train_sft(
        tmp_path, {"precision": "bf16"},
        lambda m: _Snapshots(m.model.language_model.layers[0].mlp.down_proj.weight),
        learning_rate=5e-7)
    weight = snaps.param
    assert result.precision == "bf16"
    assert weight.dtype == torch.float32
    assert len(snaps.values) == result.steps + 1 == 5
    for before, after in zip(snaps.values, snaps.values[1:], strict=False):
        moved = (after != before).float().mean()
        assert moved > 0.5, f"only {moved:.1%} of the weights moved in a step at lr 5e-7"


def test_per_part_learning_rates_from_one_table(tmp_path):
    settings, _run, model, _processor, _dataset = _sft_setup(tmp_path)
    set_trainable(model, ["connector", "language_model", "vision_tower"])
    groups = parameter_groups(model, ["connector", "language_model", "vision_tower"], 1e-3,
                              {"connector": 1.0, "language_model": 0.5, "vision_tower": 0.1},
                              weight_decay=0.01)
    lr = {}
    for g in groups:
        lr.setdefault(g["part"], set()).add(g["lr"])
        if g["weight_decay"]:
            assert all(p.ndim >= 2 for p in g["params"])
    assert lr == {"connector": {1e-3}, "language_model": {5e-4}, "vision_tower": {1e-4}}
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}


def test_every_record_kind_trains_in_one_batch(tmp_path):
    base = {"source": "native", "language": "pt-PT", "task_family": "cor"}
    extra = [
        Record(id="conv", kind="conversation", image="img/0.png", conversations=[
            Turn(role="system", content="Responde em português europeu."),
            Turn(role="user", content="<image>\nQue forma é esta?"),
            Turn(role="assistant", content="Um círculo."),
            Turn(role="user", content="E a cor?"), Turn(role="assistant", content="vermelho")],
            **base),
        Record(id="ground", kind="grounding", image="img/1.png", question="o círculo",
               boxes=[Box(bbox=[4, 4, 20, 20])], **base),
        Record(id="mc", kind="multiple_choice", image="img/2.png", question=QUESTION,
               options=list(COLOURS), answer="verde", **base),
        Record(id="text", kind="qa", question="Quanto é dois mais dois?", answer="quatro",
               **base),
    ]
    data, run = make_mix(tmp_path, n=4, extra_sft=extra)
    settings = load_settings("tiny", overrides=overrides(data))
    model, processor = build_tiny_model(settings, [QUESTION, *COLOURS] * 3)
    chat = ChatFormat(processor)
    dataset = ShardDataset(run / "mix" / "shards" / "sft", data, processor, chat,
                           Budget(settings.model.max_length))
    assert len(dataset) == 8 and not dataset.skipped
    samples = [dataset[i] for i in range(len(dataset))]
    by_id = {s.tokens.record_id: s for s in samples}
    assert by_id["text"].tokens.dummy_image and by_id["text"].real_images == 0
    batch = SampleCollator(processor.tokenizer.pad_token_id)(samples)
    assert batch["pixel_values"].shape[0] == len(samples)  # every sample has an image
    assert int(batch["real_images"].sum()) == 7
    loss = LMObjective()(model, batch, torch.tensor(LMObjective().count(batch)))[0]
    loss.backward()
    assert torch.isfinite(loss)
    tower = [p for n, p in model.named_parameters() if n.startswith("model.vision_tower.")]
    assert all(p.grad is not None for p in tower[:1])


def test_over_budget_samples_are_skipped_and_counted_not_a_crash(tmp_path):
    from components.train.stages import record_skips

    long = Record(id="long", kind="qa", source="native", language="pt-PT", task_family="cor",
                  image="img/0.png", question="muito " * 400, answer="sim")
    data, run = make_mix(tmp_path, n=8, extra_sft=[long])
    settings = load_settings("tiny", overrides=overrides(data, train={"max_skip_ratio": 0.5}))
    _model, processor = build_tiny_model(settings, [QUESTION, *COLOURS] * 3)
    dataset = ShardDataset(run / "mix" / "shards" / "sft", data, processor,
                           ChatFormat(processor), Budget(settings.model.max_length))
    assert len(dataset) == 8
    assert [(s["id"], s["reason"]) for s in dataset.skipped] == [("long", "too_long")]
    ctx = _ctx("sft", settings, run)
    assert record_skips(ctx, dataset, "sft") == {"too_long": 1}
    rows = [json.loads(line) for line in (ctx.out_dir / "skipped.jsonl").read_text().splitlines()]
    assert rows[0]["id"] == "long" and "max_length" in rows[0]["detail"]
    strict = load_settings("tiny", overrides=overrides(data, train={"max_skip_ratio": 0.05}))
    with pytest.raises(DataQualityError, match=r"1 of 9 sft samples cannot fit.*max_skip_ratio"):
        record_skips(_ctx("sft", strict, run), dataset, "sft")


def test_block_shuffle_is_seeded_per_epoch_and_keeps_row_groups_together():
    import numpy as np

    groups = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 20)]
    sampler = BlockShuffleSampler(groups, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(20)) and len(sampler) == 20
    assert list(BlockShuffleSampler(groups, seed=3)) == first  # reproducible
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    # each row group's rows come out consecutively (one read per group)
    runs = [next(k for k, g in enumerate(groups) if i in g) for i in first]
    assert sum(1 for a, b in zip(runs, runs[1:], strict=False) if a != b) == 2


def test_dataset_memory_is_indices_not_samples(tmp_path):
    data, run = make_mix(tmp_path, n=16)
    settings = load_settings("tiny", overrides=overrides(data))
    _model, processor = build_tiny_model(settings, [QUESTION, *COLOURS] * 3)
    dataset = ShardDataset(run / "mix" / "shards" / "sft", data, processor,
                           ChatFormat(processor), Budget(settings.model.max_length))
    # the dataset holds three integers per sample; images are read when a sample is asked
    assert dataset.rows.shape == (16, 3) and dataset.rows.dtype.itemsize == 4
    assert not any(isinstance(v, list | dict) and len(v) >= 16 for v in vars(dataset).values()
                   if not isinstance(v, set))
    sample = dataset[3]
    assert sample.pixel_values[0].ndim == 4 and sample.real_images == 1


def test_tokenizer_corpus_is_training_texts_only(tmp_path):
    from components.train.stages import mix_texts

    data, run = make_mix(tmp_path, n=4)
    held_out = Record(id="t1", kind="qa", source="native", language="pt-PT", split="test",
                      task_family="cor", image="img/0.png", question="Palavrasecretíssima?",
                      answer="azul")
    shard(run / "mix" / "shards" / "eval", [held_out], data, embed=False)
    texts = mix_texts(run / "mix")
    assert "Palavrasecretíssima?" not in texts  # eval text never reaches the vocabulary
    assert "Um círculo vermelho." in texts and QUESTION in texts  # training texts do
    assert any("Responde diretamente" in t for t in texts)  # the MC prompt training adds


class _Checkpointing(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen = getattr(model, "is_activation_checkpointing", False)


def test_gradient_checkpointing_trains_and_matches_the_plain_run(tmp_path):
    losses = {}
    for flag in (False, True):
        _model, probe, result = _train_sft(tmp_path / str(flag),
                                           {"gradient_checkpointing": flag},
                                           lambda m: _Checkpointing())
        assert probe.seen is flag
        losses[flag] = result.loss_history
    # recomputing activations changes memory, not the maths
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_an_image_that_fails_to_decode_names_its_record(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from components.errors import AmaliaError
    from components.train.dataset import image_size, read_image

    buf = io.BytesIO()
    noise = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8")
    Image.fromarray(noise).save(buf, format="JPEG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]  # header intact, pixels cut
    assert image_size(truncated) == (48, 64)  # the planning pass cannot see it
    with pytest.raises(AmaliaError, match=r"record rec-7: cannot decode its embedded image "
                                          r"bytes: .*\(re-run validate"):
        read_image(truncated, (48, 64), "rec-7")
