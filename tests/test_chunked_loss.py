"""The chunked LM loss and DPO log-probs (components/train/loss.py) against the plain ones
on the real tiny LlavaNext: same loss, same gradient of every trainable parameter, padded
and packed, with a chunk size that leaves a partial tail chunk; never more than one chunk
of positions projected onto the vocabulary at once; the same under 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from components.model.build import build_tiny_model, set_text_attention
from components.records import Record
from components.settings import load_settings
from components.train.chat import Budget, ChatFormat
from components.train.data import IGNORE_INDEX, model_inputs
from components.train.dataset import SampleCollator, ShardDataset
from components.train.dpo import pair_logps
from components.train.engine import LMObjective
from components.train.loss import lm_loss
from components.train.packing import PackedCollator, PackedDataset, register_sdpa_varlen
from tests.train_helpers import COLOURS, QUESTION, REPO, make_mix, overrides

CHUNK = 7  # divides no batch here: the tail chunk is always partial


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunked")
    base = {"source": "native", "language": "pt-PT", "task_family": "cor"}
    answers = ["um círculo vermelho", "azul e verde no meio", "amarelo",
               "um círculo azul pequeno no centro da imagem"]
    longer = [Record(id=f"long{i}", kind="qa", image=f"img/{i}.png", question=QUESTION,
                     answer=a, **base) for i, a in enumerate(answers)]
    data, run = make_mix(root, n=8, seed=5, extra_sft=longer)
    settings = load_settings("tiny", overrides=overrides(data))
    model, processor = build_tiny_model(settings, [QUESTION, *COLOURS, *answers] * 3)
    model = model.float()
    chat = ChatFormat(processor)
    budget = Budget(settings.model.max_length)
    sft = ShardDataset(run / "mix" / "shards" / "sft", data, processor, chat, budget)
    dpo = ShardDataset(run / "mix" / "shards" / "dpo", data, processor, chat, budget,
                       preference=True)
    return settings, model, processor, chat, sft, dpo


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_same(got_loss, want_loss, got, want):
    torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    assert set(got) == set(want) and len(want) > 10
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5, msg=key)


def _padded(setup):
    settings, model, processor, chat, sft, _ = setup
    batch = SampleCollator(processor.tokenizer.pad_token_id)([sft[i] for i in range(6, 12)])
    counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
    assert len(set(counts.tolist())) > 1  # scored tokens vary per row
    return batch


def _packed(setup, attention: str):
    settings, model, processor, chat, sft, _ = setup
    packed = PackedDataset(sft, settings.model.max_length)
    set_text_attention(model, attention)
    collate = PackedCollator.for_model(model, chat, processor.tokenizer.pad_token_id)
    return collate([packed[k] for k in range(len(packed))])


def _lm_case(setup, batch):
    model = setup[1]
    n = torch.tensor(LMObjective().count(batch))
    want_loss = LMObjective(0)(model, batch, n)[0]
    want = _grads(model, want_loss)
    assert (batch["labels"][:, 1:] != IGNORE_INDEX).sum() % CHUNK  # a partial tail chunk
    got_loss = LMObjective(CHUNK)(model, batch, n)[0]
    _assert_same(got_loss, want_loss, _grads(model, got_loss), want)


def test_chunked_lm_loss_equals_the_plain_loss_padded(setup):
    _lm_case(setup, _padded(setup))


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_chunked_lm_loss_equals_the_plain_loss_packed(setup, attention):
    model = setup[1]
    name = register_sdpa_varlen() if attention == "varlen" else attention
    try:
        batch = _packed(setup, name)
        assert ("cu_seq_lens_q" in batch) == (attention == "varlen")
        _lm_case(setup, batch)
    finally:
        set_text_attention(model, "sdpa")


def test_chunked_loss_without_num_items_is_the_mean(setup):
    model = setup[1]
    batch = _padded(setup)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "real_images",
                                                          "sample_index")}
    with torch.no_grad():
        want = model(**inputs, labels=batch["labels"]).loss
        got = lm_loss(model, inputs, batch["labels"], None, CHUNK)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_dpo_logps_equal_the_plain_ones(setup, packed):
    settings, model, processor, chat, _, dpo = setup
    if packed:
        rows = PackedDataset(dpo, settings.model.max_length)
        batch = PackedCollator.for_model(model, chat, processor.tokenizer.pad_token_id)(
            [rows[k] for k in range(len(rows))])
    else:
        batch = SampleCollator(processor.tokenizer.pad_token_id)([dpo[i] for i in range(4)])

    def objective(chunk):
        chosen, rejected = pair_logps(model, batch, chunk)
        # weights that differ per pair and side: every log-prob's gradient counts
        w = torch.arange(1, chosen.shape[0] + 1, dtype=torch.float32)
        return chosen, rejected, (w * chosen).sum() - (w * rejected).sum() * 0.5

    want_c, want_r, want_obj = objective(0)
    want = _grads(model, want_obj)
    got_c, got_r, got_obj = objective(CHUNK)
    torch.testing.assert_close(got_c, want_c, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_r, want_r, atol=1e-6, rtol=1e-6)
    _assert_same(got_obj, want_obj, _grads(model, got_obj), want)


def test_no_more_than_one_chunk_is_projected_at_once(setup):
    """The lm_head sees one position in the model's forward and then at most CHUNK
    positions per call, forward and backward (recomputed): never the whole row."""
    model = setup[1]
    batch = _padded(setup)
    seen: list[int] = []
    # logits rows each lm_head call produces
    handle = model.lm_head.register_forward_hook(
        lambda m, args, out: seen.append(out.reshape(-1, out.shape[-1]).shape[0]))
    try:
        n = torch.tensor(LMObjective().count(batch))
        loss = LMObjective(CHUNK)(model, batch, n)[0]
        forward_calls = list(seen)
        loss.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    scored = int(n)
    chunks = -(-scored // CHUNK)
    assert forward_calls[0] == batch["input_ids"].shape[0]  # one position per row
    assert max(seen[1:]) <= CHUNK
    assert sum(forward_calls[1:]) == scored and len(forward_calls) == 1 + chunks
    assert len(seen) == 1 + 2 * chunks  # each chunk recomputed once in backward


def test_the_chunks_run_in_the_forwards_autocast(setup):
    """Under bf16 autocast (the Trainer's bf16 on CPU: accelerate autocasts the model's
    forward, not compute_loss) the chunks project in bf16 as the plain forward does: per
    token the log-probs agree far closer than an fp32 projection of the same hidden
    states would."""
    from components.train import loss as chunked
    from components.train.dpo import token_logps

    model = setup[1]
    batch = _padded(setup)
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
    labels = batch["labels"]
    forward = model.forward
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(forward)  # as accelerate
    try:
        with torch.no_grad():
            want = token_logps(model(**inputs).logits, labels)
            got = chunked.token_logps(model, inputs, labels, CHUNK)
            kept = chunked.final_hidden(model, inputs)
            fp32 = token_logps(model.lm_head(kept.hidden.float()), labels)
    finally:
        model.forward = forward
    fp32_gap = float((fp32 - want).abs().max())
    assert fp32_gap > 1e-4  # the projection's precision is visible here
    assert float((got - want).abs().max()) < fp32_gap / 10


def _torchrun(folder, *extra):
    """The 2-process launch (~20 s). Once in a full-suite run on the loaded 2-core CI box
    a launch stalled past 300 s before any step (never reproduced alone, 0 of 5 runs): a
    stalled launch is killed at 150 s and started once more; a wrong gradient or a failed
    worker is never retried."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", str(REPO / "tests" / "chunked_ddp_worker.py"), str(folder),
           str(CHUNK), *extra]
    def launch():
        try:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150,
                                  cwd=REPO)
        except subprocess.TimeoutExpired:
            return None

    proc = launch()
    if proc is None or (proc.returncode != 0 and "Timed out" in proc.stderr):
        proc = launch()  # stalled (the worker's collectives time out at 60 s): once more
    assert proc is not None and proc.returncode == 0, proc and proc.stderr[-3000:]


@pytest.mark.parametrize("zero3", [False, True], ids=["ddp", "zero3-marker"])
def test_chunked_gradients_match_under_two_process_ddp(setup, tmp_path, zero3):
    """2 gloo processes (real torchrun), each the chunked loss on half the batch through
    DDP, give the plain 1-process gradients of the whole batch. With lm_head marked as
    ZeRO-3-partitioned (its calls are collectives there) both ranks call it equally
    often although their micro-batches score different numbers of tokens."""
    settings, model, processor, chat, sft, _ = setup
    collate = SampleCollator(processor.tokenizer.pad_token_id)
    # rank 0: the 3 short answers, rank 1: the 3 long ones (more chunks)
    samples = [sft[i] for i in (6, 7, 8, 9, 10, 11)]
    samples = sorted(samples, key=lambda x: int((x.tokens.labels != IGNORE_INDEX).sum()))
    batch = collate(samples)
    n = torch.tensor(LMObjective().count(batch))
    want = _grads(model, LMObjective(0)(model, batch, n)[0])
    # each rank's micro-batch: half the samples, collated on their own
    torch.save({"batches": [collate(samples[:3]), collate(samples[3:])], "n": n},
               tmp_path / "batch.pt")
    model.save_pretrained(tmp_path / "model")
    _torchrun(tmp_path, *(["zero3"] if zero3 else []))
    got = torch.load(tmp_path / "grads.pt")
    assert json.loads((tmp_path / "done.json").read_text())["world_size"] == 2
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5, msg=key)
    if zero3:
        counts = [json.loads((tmp_path / f"calls{r}.json").read_text()) for r in (0, 1)]
        scored = [int(LMObjective().count(collate(half))) for half in
                  (samples[:3], samples[3:])]
        most = max(-(-k // CHUNK) for k in scored)
        assert -(-scored[0] // CHUNK) < most  # rank 0 alone would call it fewer times
        assert len(counts[0]) == len(counts[1]) == 1 + 2 * most  # forward + recompute
