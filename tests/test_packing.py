"""Sequence packing (components/train/packing.py): rows of whole samples that train exactly
like padded batches, with no attention across samples, every sample once per epoch, and a
clear refusal for an attention implementation that cannot isolate samples."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from components.errors import ConfigError
from components.model.build import build_tiny_model, set_text_attention
from components.records import Record, Turn
from components.settings import load_settings
from components.train.chat import Budget, ChatFormat
from components.train.data import IGNORE_INDEX, model_inputs
from components.train.dataset import SampleCollator, ShardDataset
from components.train.dpo import DPOObjective, make_reference, pair_logps
from components.train.engine import LMObjective, real_tokens
from components.train.packing import (
    PackedCollator,
    PackedDataset,
    attention_layout,
    first_fit_decreasing,
    pack_rows,
    register_sdpa_varlen,
    split_to_multiple,
)
from tests.train_helpers import COLOURS, QUESTION, make_mix, overrides

BASE = {"source": "native", "language": "pt-PT", "task_family": "cor"}


# ----------------------------------------------------------------------------- bins


def _naive_ffd(lengths, capacity):
    """First-fit decreasing the textbook way (a list scan per item)."""
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for b, room in enumerate(free):
            if room >= lengths[i]:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


@pytest.mark.parametrize("seed", range(6))
def test_first_fit_decreasing_is_first_fit_decreasing(seed):
    rng = random.Random(seed)
    capacity = rng.choice([64, 100, 256])
    lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 300))]
    bins = first_fit_decreasing(lengths, capacity)
    assert bins == _naive_ffd(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)


def test_an_item_longer_than_a_row_gets_its_own_row_and_rows_split_to_the_batch():
    bins = first_fit_decreasing([30, 5, 200, 40], 64)
    assert [2] in bins and all(sum([30, 5, 200, 40][i] for i in b) <= 64
                               for b in bins if b != [2])
    lengths = [10] * 12
    rows = split_to_multiple([[0, 1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11]], 4, lengths)
    assert len(rows) % 4 == 0
    assert sorted(i for r in rows for i in r) == list(range(12))
    rows, groups = pack_rows([np.arange(0, 6), np.arange(6, 12)], np.asarray(lengths), 35,
                             multiple=5)
    assert len(rows) % 5 == 0
    for g, members in zip(groups, [set(range(6)), set(range(6, 12))], strict=True):
        assert {int(i) for k in g for i in rows[k]} == members  # rows stay in their group


# ----------------------------------------------------------------------------- data


def _mixed_records(data):
    """Samples of very different lengths: captions, QA, a multi-image question, a
    multi-turn conversation, text-only questions (a dummy image each)."""
    Image.new("RGB", (32, 32), (200, 40, 40)).save(data / "img" / "big.png")
    Image.new("RGB", (17, 40), (40, 40, 200)).save(data / "img" / "thin.png")
    return [
        Record(id="two", kind="qa", images=["img/big.png", "img/thin.png"],
               question="<image> e <image>: que cores?", answer="vermelho e azul", **BASE),
        Record(id="conv", kind="conversation", image="img/0.png", conversations=[
            Turn(role="user", content="<image>\nQue forma é esta? " + "Diz-me. " * 6),
            Turn(role="assistant", content="Um círculo."),
            Turn(role="user", content="E a cor?"), Turn(role="assistant", content="vermelho")],
            **BASE),
        Record(id="text1", kind="qa", question="Quanto é dois mais dois?", answer="quatro",
               **BASE),
        Record(id="text2", kind="qa", question="Qual é a capital de Portugal?",
               answer="Lisboa", **BASE),
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    (root / "data" / "img").mkdir(parents=True)
    data, run = make_mix(root, n=10, seed=3, extra_sft=_mixed_records(root / "data"))
    settings = load_settings("tiny", overrides=overrides(data))
    model, processor = build_tiny_model(settings, [QUESTION, *COLOURS, "Lisboa"] * 3)
    chat = ChatFormat(processor)
    dataset = ShardDataset(run / "mix" / "shards" / "sft", data, processor, chat,
                           Budget(settings.model.max_length))
    assert not dataset.skipped and len(dataset) == 14
    return settings, model.float(), processor, chat, dataset, run, data


def _collator(model, chat, processor):
    return PackedCollator.for_model(model, chat, processor.tokenizer.pad_token_id)


def test_packed_rows_hold_whole_samples_and_every_sample_once_per_epoch(setup):
    settings, model, processor, chat, dataset, _, _ = setup
    capacity = settings.model.max_length
    packed = PackedDataset(dataset, capacity, multiple=2)
    assert len(packed) < len(dataset) and len(packed) % 2 == 0
    assert all(int(dataset.packed_lengths[r].sum()) <= capacity for r in packed.rows)
    every = sorted(int(i) for r in packed.rows for i in r)
    assert every == list(range(len(dataset)))
    # a row's samples arrive whole: their full token sequences, as the planning pass counted
    for k in range(len(packed)):
        for sample in packed[k]:
            n = len(sample.tokens) - (sample.tokens.n_image_tokens
                                      if sample.tokens.dummy_image else 0)
            assert n == dataset.packed_lengths[sample.index]
    sampler = packed.sampler(settings.seed)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(packed)))
        assert sorted(int(i) for k in order for i in packed.rows[k]) == \
            list(range(len(dataset)))
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # re-shuffled per epoch


def _segments_of(batch):
    """Per row, the (start, end) of each packed segment by position_ids restarting at 0."""
    out = []
    for row in batch["position_ids"]:
        starts = (row == 0).nonzero().flatten().tolist()
        out.append(list(zip(starts, [*starts[1:], len(row)], strict=True)))
    return out


def test_no_token_attends_across_a_sample_boundary(setup):
    settings, model, processor, chat, dataset, _, _ = setup
    packed = PackedDataset(dataset, settings.model.max_length)
    rows = [packed[k] for k in range(len(packed))]
    batch = _collator(model, chat, processor)(rows)
    mask = batch["attention_mask"][:, 0]
    seg = batch["segment_ids"]
    assert mask.dtype == torch.bool
    for r in range(mask.shape[0]):
        real = seg[r] > 0
        same = seg[r][:, None] == seg[r][None, :]
        causal = torch.ones_like(mask[r]).tril()
        # real tokens see exactly the earlier tokens of their own sample
        want = same & causal & real[:, None] & real[None, :]
        assert torch.equal(mask[r][real], want[real])
        # ... and no real token sees padding or another sample
        assert not mask[r][real][:, ~real].any()
        # positions restart at 0 at every sample and count up inside it
        for s in seg[r][real].unique().tolist():
            where = (seg[r] == s).nonzero().flatten()
            assert torch.equal(batch["position_ids"][r, where], torch.arange(len(where)))
            assert batch["labels"][r, where[0]] == IGNORE_INDEX  # never predicts across
    # images land in their own sample: one image's tokens per image, in sample order
    image_id = processor.image_token_id
    per_segment = [int((batch["input_ids"][seg == s] == image_id).sum())
                   for s in range(1, int(seg.max()) + 1)]
    samples = [s for row in rows for s in row]
    expected = [0 if s.tokens.dummy_image else s.tokens.n_image_tokens for s in samples]
    assert per_segment == expected
    assert batch["image_sizes"].shape[0] == sum(len(s.tokens.image_sizes) for s in samples
                                                if not s.tokens.dummy_image)
    assert real_tokens(batch)[0] == sum(expected_len for expected_len in
                                        (int(dataset.packed_lengths[s.index])
                                         for s in samples))


def test_varlen_layout_gives_flash_attn_cu_seqlens_at_the_sample_boundaries(setup):
    settings, model, processor, chat, dataset, _, _ = setup
    packed = PackedDataset(dataset, settings.model.max_length)
    rows = [packed[k] for k in range(3)]
    collate = PackedCollator(processor.tokenizer.pad_token_id, processor.image_token_id,
                             "varlen", dummy_tokens=4, dummy_tiles=1, tile_side=16)
    batch = collate(rows)
    samples = [s for row in rows for s in row]
    lengths = [int(dataset.packed_lengths[s.index]) for s in samples]
    assert batch["input_ids"].shape == (1, sum(lengths))  # no padding at all
    assert batch["cu_seq_lens_q"].tolist() == np.cumsum([0, *lengths]).tolist()
    assert batch["max_length_q"] == max(lengths)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == batch["cu_seq_lens_q"][:-1].tolist()


def test_a_micro_batch_without_images_gets_one_isolated_dummy(setup):
    settings, model, processor, chat, dataset, _, _ = setup
    text_only = [dataset[i] for i in range(len(dataset)) if dataset[i].real_images == 0]
    assert len(text_only) == 2
    batch = _collator(model, chat, processor)([text_only])
    assert batch["pixel_values"].shape[0] == 1 and not batch["pixel_values"].any()
    seg = batch["segment_ids"][0]
    dummy = batch["input_ids"][0] == processor.image_token_id
    assert dummy.any() and (seg[dummy] == 0).all()
    assert (batch["labels"][0][dummy] == IGNORE_INDEX).all()
    mask = batch["attention_mask"][0, 0]
    assert not mask[seg > 0][:, dummy].any() and not mask[dummy][:, seg > 0].any()
    loss = model(**model_inputs(batch)).loss  # the vision tower runs on the dummy
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- equivalence


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def _unpacked_loss(model, samples, pad):
    batch = SampleCollator(pad)(samples)
    n = torch.tensor(LMObjective().count(batch))
    return LMObjective()(model, batch, n)[0], int(n)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "varlen"])
def test_packed_and_unpacked_training_give_the_same_loss_and_gradients(setup, attention):
    settings, model, processor, chat, dataset, _, _ = setup
    pad = processor.tokenizer.pad_token_id
    samples = [dataset[i] for i in range(len(dataset))]
    set_text_attention(model, "sdpa")
    torch.manual_seed(0)
    want_loss, n_unpacked = _unpacked_loss(model, samples, pad)
    want = _grads(model, want_loss)
    name = register_sdpa_varlen() if attention == "varlen" else attention
    set_text_attention(model, name)
    try:
        packed = PackedDataset(dataset, settings.model.max_length)
        rows = [packed[k] for k in range(len(packed))]
        batch = _collator(model, chat, processor)(rows)
        assert batch["input_ids"].shape[0] < len(samples)
        assert ("cu_seq_lens_q" in batch) == (attention == "varlen")
        n = torch.tensor(LMObjective().count(batch))
        assert int(n) == n_unpacked  # the same label tokens, none across a boundary
        loss = LMObjective()(model, batch, n)[0]
        got = _grads(model, loss)
    finally:
        set_text_attention(model, "sdpa")
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4, msg=key)


def test_packing_changes_the_loss_if_samples_could_see_each_other(setup):
    """The equality above is not vacuous: the same rows with a plain causal mask (samples
    attending across boundaries) give another loss."""
    settings, model, processor, chat, dataset, _, _ = setup
    packed = PackedDataset(dataset, settings.model.max_length)
    batch = _collator(model, chat, processor)([packed[k] for k in range(len(packed))])
    n = torch.tensor(LMObjective().count(batch))
    isolated = LMObjective()(model, batch, n)[0]
    leaky = dict(batch)
    width = batch["input_ids"].shape[1]
    leaky["attention_mask"] = torch.ones(width, width, dtype=torch.bool).tril().expand(
        batch["input_ids"].shape[0], 1, width, width)
    assert not torch.allclose(LMObjective()(model, leaky, n)[0], isolated, atol=1e-4)


def test_packed_preference_pairs_score_like_padded_pairs(tmp_path):
    data, run = make_mix(tmp_path, n=6)
    settings = load_settings("tiny", overrides=overrides(data))
    model, processor = build_tiny_model(settings, [QUESTION, *COLOURS] * 3)
    model = model.float()
    chat = ChatFormat(processor)
    pairs = ShardDataset(run / "mix" / "shards" / "dpo", data, processor, chat,
                         Budget(settings.model.max_length), preference=True)
    samples = [pairs[i] for i in range(len(pairs))]
    padded = SampleCollator(processor.tokenizer.pad_token_id)(samples)
    packed_set = PackedDataset(pairs, settings.model.max_length)
    assert len(packed_set) < len(pairs)
    rows = [packed_set[k] for k in range(len(packed_set))]
    packed = _collator(model, chat, processor)(rows)
    order = packed["sample_index"].tolist()
    with torch.no_grad():
        want_c, want_r = pair_logps(model, padded)
        got_c, got_r = pair_logps(model, packed)
    torch.testing.assert_close(got_c, want_c[order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_r, want_r[order], atol=1e-5, rtol=1e-5)
    # the objective counts pairs, not rows, and its loss matches
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # a policy that differs from the reference
    objective = DPOObjective(0.1, 1.0, reference=make_reference(model))
    with torch.no_grad():
        for p in objective.reference.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        n = torch.tensor(len(pairs))
        assert objective.count(packed) == len(pairs)
        loss_padded = objective(model, padded, n)[0]
        loss_packed = objective(model, packed, n)[0]
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- refusals


def test_packing_refuses_an_attention_that_cannot_isolate_samples(setup):
    settings, model, processor, chat, dataset, _, _ = setup
    AttentionInterface.register("plain_attention", sdpa_attention_forward)
    set_text_attention(model, "plain_attention")
    try:
        with pytest.raises(ConfigError) as err:
            attention_layout(model)
        assert "train.packing" in err.value.message
        assert "model.attn_implementation='plain_attention'" in err.value.message
        with pytest.raises(ConfigError):
            _collator(model, chat, processor)
    finally:
        set_text_attention(model, "sdpa")
    assert attention_layout(model) == "mask"


def test_an_attention_that_cannot_run_here_names_the_setting(setup):
    _, model, *_ = setup
    with pytest.raises(ConfigError) as err:
        set_text_attention(model, "flash_attention_2")  # no flash-attn on a CPU box
    assert "model.attn_implementation='flash_attention_2'" in err.value.message


# ----------------------------------------------------------------------------- stages


def test_sft_and_dpo_stages_train_packed(tmp_path):
    """sft packs on the default CPU attention (sdpa_varlen: the varlen layout), dpo on sdpa
    (the block-diagonal mask); both learn, skip what cannot fit, log low padding and save
    a model that loads with plain attention."""
    from components.stages import run_stage

    too_long = Record(id="long", kind="qa", image="img/0.png", question="muito " * 400,
                      answer="sim", **BASE)
    data, run = make_mix(tmp_path, n=16, extra_sft=[too_long])
    common = overrides(data, align={"epochs": 1, "global_batch_size": 4},
                       sft={"epochs": 6, "global_batch_size": 2, "learning_rate": 3e-3},
                       dpo={"epochs": 2, "global_batch_size": 2, "learning_rate": 1e-3})
    common["train"]["max_skip_ratio"] = 0.2
    settings = load_settings("tiny", overrides=common)
    run_stage("align", settings, run, lambda m, s: None, progress=False)
    padded = json.loads((run / "align" / "metrics.json").read_text())["packing"]
    assert padded["samples_left_out"] == padded["samples_repeated"] == 0  # recorded
    # 2 samples per step at ~2.7 per row: whole rows cannot come within the default
    # tolerance of the recipe; this test is about the stage, not the recipe
    common["train"]["packed_batch_tolerance"] = None
    packed_settings = load_settings("tiny", overrides={
        **common, "train": {**common["train"], "packing": True}})
    logged = []
    out, manifest = run_stage("sft", packed_settings, run,
                              lambda m, s: logged.append(m), progress=False)
    metrics = json.loads((run / "sft" / "metrics.json").read_text())
    assert metrics["packing"]["packing"] is True
    assert metrics["packing"]["packing_layout"] == "varlen"
    assert metrics["packing"]["attn_implementation"] == "sdpa_varlen"
    rows = metrics["packing"]["packed_rows"]
    # global_batch_size keeps meaning samples: the plan counts rows from samples per row
    engine = metrics["engine"]
    per_step = engine["global_batch_size"]
    assert engine["batch_unit"] == "rows" and rows < 16 and rows % per_step == 0
    assert metrics["packing"]["rows_left_out"] == metrics["packing"]["rows_repeated"] == 0
    assert per_step == max(1, round(2 / metrics["packing"]["samples_per_row"]))
    assert engine["samples_per_step"] == pytest.approx(
        per_step * metrics["packing"]["samples_per_row"], rel=0.01)
    assert out.counts["train_samples"] == 16 and out.counts["skipped"] == 1
    skipped = [json.loads(x) for x in (run / "sft" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["reason"]) for s in skipped] == [("long", "too_long")]
    assert out.counts["steps"] == 6 * rows // per_step
    # measured per step: rows of the plan, their samples and tokens, in MLflow and metrics
    measured = [m for m in metrics["step_metrics"]]
    assert all(m["rows_per_step"] == per_step for m in measured)
    assert sum(m["samples_per_step"] for m in measured) == 6 * 16
    assert all(m["tokens_per_step"] > 0 for m in measured)
    assert any("samples_per_step" in m and "tokens_per_step" in m for m in logged)
    assert out.metrics["loss_last"] < out.metrics["loss_first"]
    steps = [m for m in logged if "padding_ratio" in m]
    assert steps and all(m["padding_ratio"] < 0.2 for m in steps)
    assert "sdpa_varlen" not in (run / "sft" / "model" / "config.json").read_text()

    mask_settings = load_settings("tiny", overrides={
        **common, "train": {**common["train"], "packing": True},
        "model": {**common["model"], "attn_implementation": "sdpa"}})
    out, _ = run_stage("dpo", mask_settings, run, lambda m, s: None, progress=False)
    assert out.metrics["margin_after"] > out.metrics["margin_before"]
    dpo = json.loads((run / "dpo" / "metrics.json").read_text())["packing"]
    assert dpo["packed_rows"] < 16 and dpo["packing_layout"] == "mask"


def test_a_packed_stage_refuses_an_attention_that_cannot_isolate_samples(tmp_path):
    from components.stages import run_stage

    AttentionInterface.register("plain_attention", sdpa_attention_forward)
    data, run = make_mix(tmp_path, n=8)
    settings = load_settings("tiny", overrides=overrides(
        data, align={"epochs": 1, "global_batch_size": 4},
        train={"packing": True}, model={**overrides(data)["model"],
                                        "attn_implementation": "plain_attention"}))
    with pytest.raises(ConfigError) as err:
        run_stage("align", settings, run, lambda m, s: None, progress=False)
    assert "train.packing" in err.value.message and "plain_attention" in err.value.message


def test_a_labelled_first_token_is_not_a_target_of_the_sample_before(setup):
    """A padded row never trains its first label (nothing predicts it); a packed row must
    not let the previous sample's last token predict it either."""
    import dataclasses

    settings, model, processor, chat, dataset, _, _ = setup
    samples = [dataset[i] for i in range(4)]
    for s in samples:
        labels = s.tokens.labels.clone()
        labels[0] = s.tokens.input_ids[0]
        s.tokens = dataclasses.replace(s.tokens, labels=labels)
    unpacked = SampleCollator(processor.tokenizer.pad_token_id)(samples)
    packed = _collator(model, chat, processor)([samples])
    assert LMObjective().count(packed) == LMObjective().count(unpacked)
