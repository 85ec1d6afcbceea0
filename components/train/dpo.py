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

Batches hold 2B rows: the B chosen first, then the B rejected (`dataset.SampleCollator`),
or packed rows of whole pairs, chosen then rejected, as segments (`train.packing`:
`components.train.packing`; the log-probs are then summed per segment), so policy and
reference each need one forward per batch. `sequence_logps` gathers the
label tokens' log-probabilities without materialising a full log-softmax
(`selective_log_softmax`, as TRL does: logsumexp row by row), the memory that matters at
16k tokens x a 128k vocabulary.

`DPOObjective` is the Trainer objective (`components.train.engine.Objective`): per pair
loss summed and divided by the pairs of the whole global batch, and per-step statistics
(rewards/chosen, rewards/rejected, margins, accuracy, logps/chosen, logps/rejected, the
TRL names). The reference is either a frozen copy (`make_reference`) scored on every batch
or, with `dpo.precompute_ref_log_probs`, scored once before training
(`precompute_reference`) and read from the batch's `sample_index`: the policy at step 0
*is* the reference, so no second model is held in memory.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from components.accel import inference_autocast
from components.train.data import IGNORE_INDEX, model_inputs, to_device


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`log_softmax(logits)[..., index]` without the full (B, T, V) log-softmax tensor:
    one row of the batch at a time, `gather - logsumexp` (TRL's memory saving)."""
    out = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row_logits = row_logits.float()
        picked = torch.gather(row_logits, -1, row_index.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(out)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(label_t | tokens < t) where label_t != -100; shape (B,).

    `logits[:, t]` predicts token t+1, so logits and labels are shifted by one.
    """
    return token_logps(logits, labels).sum(-1)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Number of scored tokens per row (labels != -100 after the one-token shift)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


def pair_count(batch: dict[str, torch.Tensor]) -> int:
    """Preference pairs in a batch: its `sample_index` entries (packed or padded), else
    half its rows (a padded batch built without the collator)."""
    if "sample_index" in batch:
        return int(batch["sample_index"].shape[0])
    return int(batch["input_ids"].shape[0]) // 2


def chosen_lengths(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scored tokens of each pair's chosen answer, padded or packed batch alike."""
    if "segment_ids" not in batch:
        return answer_lengths(batch["labels"])[: pair_count(batch)]
    scored = (batch["labels"][:, 1:] != IGNORE_INDEX).long()
    return packed_sums(scored, batch)[0::2]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean sigmoid-DPO loss, per-pair reward margins beta*(Δchosen - Δrejected))."""
    margins = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margins).mean(), margins


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) log p(label_{t+1} | tokens <= t), 0 where the label is -100."""
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logps = selective_log_softmax(logits[:, :-1], labels.masked_fill(~mask, 0))
    return logps * mask


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) answer log-probs of a preference batch: 2B padded rows (the B
    chosen, then the B rejected), or packed rows whose `segment_ids` number the segments
    chosen, rejected, chosen, ... (`components.train.packing`)."""
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
    logits = model(**inputs).logits
    if "segment_ids" not in batch:
        logps = sequence_logps(logits, batch["labels"])
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]
    sums = packed_sums(token_logps(logits, batch["labels"]), batch)
    return sums[0::2], sums[1::2]


def packed_sums(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-segment sums of per-position `values` (B, T-1) aligned with labels[:, 1:]: two
    segments (chosen, rejected) per pair of `sample_index`."""
    from components.train.packing import segment_sums

    return segment_sums(values, batch["segment_ids"][:, 1:], 2 * pair_count(batch))


def make_reference(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A frozen deep copy of `model`: eval mode, no parameter requires grad, in `dtype`
    when given (bf16 training keeps a bf16 reference: it is never updated, so half the
    memory and the fast kernels cost nothing)."""
    ref = copy.deepcopy(model)
    if dtype is not None:
        ref.to(dtype)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def chosen_nll(policy_chosen: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of the chosen answer's per-token negative log-likelihood."""
    return (-policy_chosen / chosen_lengths.clamp(min=1)).mean()


class DPOObjective:
    """The Trainer objective of the dpo stage (see the module docstring). `count` is the
    pairs of a micro-batch; the loss is the sum of per-pair losses over `num_items` (all
    pairs of the global batch)."""

    def __init__(self, beta: float, nll_weight: float = 0.0, reference: nn.Module | None = None,
                 ref_logps: torch.Tensor | None = None):
        if reference is None and ref_logps is None:
            raise ValueError("DPO needs a reference model or precomputed reference log-probs")
        self.beta = beta
        self.nll_weight = nll_weight
        self.reference = reference
        self.ref_logps = ref_logps  # (N, 2): chosen, rejected per sample index

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return pair_count(batch)

    def reference_logps(self, batch: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_logps is not None:
            ref = self.ref_logps.to(batch["input_ids"].device)[batch["sample_index"]]
            return ref[:, 0], ref[:, 1]
        if next(self.reference.parameters()).device != batch["input_ids"].device:
            self.reference.to(batch["input_ids"].device)
        with torch.no_grad(), inference_autocast(self.reference):
            return pair_logps(self.reference, batch)

    def mean_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(mean over the micro-batch's pairs of sigmoid DPO + `nll_weight` x the chosen
        answer's per-token NLL, statistics as sums over its pairs)."""
        ref_c, ref_r = self.reference_logps(batch)
        pol_c, pol_r = pair_logps(model, batch)
        loss, margins = dpo_loss(pol_c, pol_r, ref_c, ref_r, self.beta)
        if self.nll_weight:
            loss = loss + self.nll_weight * chosen_nll(pol_c, chosen_lengths(batch))
        stats = {
            "_n": torch.tensor(float(pol_c.shape[0])),
            "rewards/chosen": (self.beta * (pol_c - ref_c)).detach().sum(),
            "rewards/rejected": (self.beta * (pol_r - ref_r)).detach().sum(),
            "rewards/margins": margins.detach().sum(),
            "rewards/accuracies": (margins.detach() > 0).float().sum(),
            "logps/chosen": pol_c.detach().sum(),
            "logps/rejected": pol_r.detach().sum(),
        }
        return loss, stats

    def __call__(self, model, batch, num_items):
        """The micro-batch's share of the global-batch loss: its pairs' summed loss over
        `num_items`, the pairs of the whole global batch."""
        loss, stats = self.mean_loss(model, batch)
        return loss * self.count(batch) / num_items, stats


@torch.no_grad()
def precompute_reference(model: nn.Module, dataset, collate, batch_size: int) -> torch.Tensor:
    """(N, 2) reference log-probs (chosen, rejected) of every sample of `dataset`, scored
    with `model` as it is now. Under torchrun each rank scores every world-size-th batch
    and the ranks sum their tables (all-reduce), so the work is split, not repeated."""
    import torch.distributed as dist

    from components.train.distributed import world

    ws = world()
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    table = torch.zeros(len(dataset), 2, dtype=torch.float64)
    starts = list(range(0, len(dataset), batch_size))
    # every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively)
    rounds = -(-len(starts) // ws.world_size)
    for k in range(rounds):
        position = k * ws.world_size + ws.rank
        start = starts[position] if position < len(starts) else starts[0] if starts else None
        if start is None:
            break
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = to_device(collate(samples), param.device)
        with inference_autocast(model):
            chosen, rejected = pair_logps(model, batch)
        if position >= len(starts):
            continue  # a filler forward: its scores belong to another rank
        table[batch["sample_index"].cpu(), 0] = chosen.double().cpu()
        table[batch["sample_index"].cpu(), 1] = rejected.double().cpu()
    if ws.distributed and dist.is_initialized():
        device = param.device if param.device.type == "cuda" else torch.device("cpu")
        table = table.to(device)
        dist.all_reduce(table)
        table = table.cpu()
    model.train(was_training)
    return table.float()


def preference_scores(policy: torch.Tensor, reference: torch.Tensor, beta: float
                      ) -> dict[str, float]:
    """Over the pairs of (N, 2) log-prob tables (chosen, rejected), as `precompute_reference`
    scores them:

    - `margin`: mean beta*((logp_c - ref_c) - (logp_r - ref_r)) (0 when model == reference);
    - `reward_accuracy`: share of pairs with a positive margin (DPO's implicit reward);
    - `pref_accuracy`: share of pairs where the policy itself gives the chosen answer a
      higher log-probability than the rejected one (meaningful before training too);
    - `pairs`: how many pairs were scored.
    """
    if not len(policy):
        return {"margin": 0.0, "reward_accuracy": 0.0, "pref_accuracy": 0.0, "pairs": 0}
    _, margins = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    return {"margin": float(margins.mean()),
            "reward_accuracy": float((margins > 0).float().mean()),
            "pref_accuracy": float((policy[:, 0] > policy[:, 1]).float().mean()),
            "pairs": int(len(policy))}
