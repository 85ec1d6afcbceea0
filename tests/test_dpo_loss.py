"""The hand-written DPO objective against a reference computation on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from components.train.data import IGNORE_INDEX
from components.train.dpo import (
    DPOObjective,
    answer_lengths,
    chosen_nll,
    dpo_loss,
    make_reference,
    pair_logps,
    preference_scores,
    sequence_logps,
)


def _reference_sequence_logps(logits, labels):
    """Plain loops: sum_t log softmax(logits[b, t])[labels[b, t+1]] where label != -100."""
    out = []
    for b in range(logits.shape[0]):
        total = 0.0
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            row = [float(x) for x in logits[b, t]]
            log_z = math.log(sum(math.exp(x) for x in row))
            total += row[target] - log_z
        out.append(total)
    return out


def test_sequence_logps_counts_answer_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5)
    labels = torch.tensor([
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 2, 4, 1],
        [IGNORE_INDEX, IGNORE_INDEX, 3, 0, IGNORE_INDEX, IGNORE_INDEX],  # right padding
        [IGNORE_INDEX] * 6,  # nothing to score
    ])
    got = sequence_logps(logits, labels)
    want = _reference_sequence_logps(logits, labels)
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert float(got[2]) == 0.0


def test_dpo_loss_matches_the_formula():
    pc = torch.tensor([-1.0, -4.0, -2.5, -0.3])
    pr = torch.tensor([-3.0, -1.0, -2.5, -7.0])
    rc = torch.tensor([-2.0, -3.0, -2.0, -1.0])
    rr = torch.tensor([-2.0, -2.0, -3.0, -5.0])
    beta = 0.1
    loss, margins = dpo_loss(pc, pr, rc, rr, beta)
    want_m, want_l = [], []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True):
        m = beta * ((a - c) - (b - d))
        want_m.append(m)
        want_l.append(-math.log(1.0 / (1.0 + math.exp(-m))))
    torch.testing.assert_close(margins, torch.tensor(want_m))
    assert float(loss) == pytest.approx(sum(want_l) / len(want_l), rel=1e-6)


def test_dpo_loss_is_log2_at_the_reference_and_pushes_chosen_up():
    pc = torch.tensor([-2.0, -1.0], requires_grad=True)
    pr = torch.tensor([-1.5, -3.0], requires_grad=True)
    loss, margins = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.5)
    assert float(loss.detach()) == pytest.approx(math.log(2))
    assert torch.all(margins == 0)
    loss.backward()
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)  # descent raises chosen


class _TinyLM(nn.Module):
    """Just enough of a causal LM for pair_logps: input_ids -> logits."""

    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, input_ids, **_):
        return type("Out", (), {"logits": self.out(self.emb(input_ids))})()


def _pref_batch():
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 0], [1, 2, 6, 4], [1, 2, 3, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 5,
                                                               IGNORE_INDEX],
                           [IGNORE_INDEX, IGNORE_INDEX, 6, 4], [IGNORE_INDEX, IGNORE_INDEX, 3,
                                                               IGNORE_INDEX]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}


def _margin(policy, ref, batch) -> dict[str, float]:
    """`preference_scores` on the (chosen, rejected) log-prob tables of `batch`."""
    with torch.no_grad():
        tables = [torch.stack(pair_logps(m, batch), dim=1) for m in (policy, ref)]
    return preference_scores(*tables, beta=0.1)


def test_objective_share_of_the_global_batch_sums_to_the_mean_loss():
    torch.manual_seed(3)
    policy = _TinyLM()
    objective = DPOObjective(beta=0.1, nll_weight=0.5, reference=make_reference(policy))
    batch = _pref_batch()
    with torch.no_grad():
        mean, stats = objective.mean_loss(policy, batch)
        # the batch is 1 of 4 equal micro-batches of a global batch of 8 pairs
        share, _ = objective(policy, batch, torch.tensor(8))
    assert objective.count(batch) == 2 and float(stats["_n"]) == 2
    assert float(share) == pytest.approx(float(mean) * 2 / 8, rel=1e-6)


def test_reference_is_a_frozen_copy_and_margin_rises_under_training():
    torch.manual_seed(1)
    policy = _TinyLM()
    ref = make_reference(policy)
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    batch = _pref_batch()
    ref_before = pair_logps(ref, batch)
    before = _margin(policy, ref, batch)
    assert before["margin"] == pytest.approx(0.0, abs=1e-6)
    assert before["pairs"] == 2
    objective = DPOObjective(beta=0.1, reference=ref)

    def loss_fn(model, batch):
        return objective.mean_loss(model, batch)[0]

    opt = torch.optim.SGD(policy.parameters(), lr=1.0)
    first = float(loss_fn(policy, batch).detach())
    assert first == pytest.approx(math.log(2), abs=1e-5)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(policy, batch).backward()
        opt.step()
    after = _margin(policy, ref, batch)
    assert after["margin"] > 0.05
    assert after["reward_accuracy"] == 1.0 and after["pref_accuracy"] == 1.0
    assert float(loss_fn(policy, batch).detach()) < first
    for old, new in zip(ref_before, pair_logps(ref, batch), strict=True):
        torch.testing.assert_close(old, new)  # the reference did not move


def test_nll_term_adds_the_chosen_answers_per_token_nll():
    torch.manual_seed(2)
    policy = _TinyLM()
    ref = make_reference(policy)
    batch = _pref_batch()
    with torch.no_grad():
        pure = float(DPOObjective(0.1, reference=ref).mean_loss(policy, batch)[0])
        mixed = float(DPOObjective(0.1, nll_weight=0.5, reference=ref)
                      .mean_loss(policy, batch)[0])
        logits = policy(batch["input_ids"]).logits
    # reference: chosen rows are the first half; per-token NLL over their scored tokens
    chosen = _reference_sequence_logps(logits[:2], batch["labels"][:2])
    lengths = answer_lengths(batch["labels"][:2]).tolist()
    assert lengths == [2, 1]
    nll = sum(-lp / n for lp, n in zip(chosen, lengths, strict=True)) / 2
    assert mixed == pytest.approx(pure + 0.5 * nll, rel=1e-5)
    assert float(chosen_nll(torch.tensor(chosen), torch.tensor(lengths))) == pytest.approx(nll)
