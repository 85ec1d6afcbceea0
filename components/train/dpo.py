"""Direct Preference Optimisation, written out by hand (sigmoid DPO, Rafailov et al. 2023).

For a prompt x with a chosen answer y_c and a rejected answer y_r:

    loss = -log sigmoid( beta * ((log pi(y_c|x) - log ref(y_c|x))
                                - (log pi(y_r|x) - log ref(y_r|x))) )

`log pi(y|x)` is the summed log-probability of the answer tokens only (labels != -100:
the answer and its end token, never the prompt or the image). The reference is a frozen
deep copy of the policy taken before DPO starts (eval mode, no grad).

With `nll_weight` > 0 the loss adds `nll_weight * NLL(y_c|x)` (the chosen answer's mean
per-token negative log-likelihood; "RPO", Pang et al. 2024; TRL's `rpo_alpha`). Pure DPO
only fixes the *difference* of log-ratios, and on short closed answers it lowers the
chosen answer's likelihood too, end token included: measured here, the tiny model then
stops ending its answers ("à esquerdaQuatro...") and held-out exact match falls by up to
half. The NLL term anchors the chosen answer while the DPO term separates the pair.

Batches come from `data.collate_preference`: 2B rows, the B chosen first, then the B
rejected, so policy and reference each need one forward per batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from components.train.data import IGNORE_INDEX
from components.train.loop import to_device


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(label_t | tokens < t) where label_t != -100; shape (B,).

    `logits[:, t]` predicts token t+1, so logits and labels are shifted by one.
    """
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, 0)
    logps = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of scored tokens per row (labels != -100 after the one-token shift)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean sigmoid-DPO loss, per-pair reward margins beta*(Δchosen - Δrejected))."""
    margins = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margins).mean(), margins


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) answer log-probs of a `collate_preference` batch."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    logps = sequence_logps(logits, batch["labels"])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def make_reference(model: nn.Module) -> nn.Module:
    """A frozen deep copy of `model`: eval mode, no parameter requires grad."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def chosen_nll(policy_chosen: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of the chosen answer's per-token negative log-likelihood."""
    return (-policy_chosen / chosen_lengths.clamp(min=1)).mean()


class DPOLoss:
    """`loss_fn(model, batch)` for `train_loop`: sigmoid DPO against `reference`, plus
    `nll_weight` times the chosen answers' NLL (0 = pure DPO)."""

    def __init__(self, reference: nn.Module, beta: float, nll_weight: float = 0.0):
        self.reference = reference
        self.beta = beta
        self.nll_weight = nll_weight

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            ref_c, ref_r = pair_logps(self.reference, batch)
        pol_c, pol_r = pair_logps(model, batch)
        loss, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, self.beta)
        if self.nll_weight:
            lengths = answer_lengths(batch["labels"])[: pol_c.shape[0]]
            loss = loss + self.nll_weight * chosen_nll(pol_c, lengths)
        return loss


@torch.no_grad()
def preference_margin(model: nn.Module, reference: nn.Module,
                      batches: Iterable[dict[str, torch.Tensor]], beta: float
                      ) -> dict[str, float]:
    """Over all pairs of `batches`:

    - `margin`: mean beta*((logp_c - ref_c) - (logp_r - ref_r)) (0 when model == reference);
    - `reward_accuracy`: share of pairs with a positive margin (DPO's implicit reward);
    - `pref_accuracy`: share of pairs where the model itself gives the chosen answer a
      higher log-probability than the rejected one (meaningful before training too);
    - `pairs`: how many pairs were scored.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    margins, prefers = [], []
    for batch in batches:
        batch = to_device(batch, param.device, param.dtype)
        pol_c, pol_r = pair_logps(model, batch)
        ref_c, ref_r = pair_logps(reference, batch)
        _, m = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
        margins.append(m.float().cpu())
        prefers.append((pol_c > pol_r).float().cpu())
    model.train(was_training)
    if not margins:
        return {"margin": 0.0, "reward_accuracy": 0.0, "pref_accuracy": 0.0, "pairs": 0}
    m = torch.cat(margins)
    return {
        "margin": float(m.mean()),
        "reward_accuracy": float((m > 0).float().mean()),
        "pref_accuracy": float(torch.cat(prefers).mean()),
        "pairs": int(m.numel()),
    }
