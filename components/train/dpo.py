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
(`selective_log_softmax`, as TRL does: logsumexp row by row); with
`train.loss_chunk_tokens` > 0 `pair_logps` never materialises the full logits either
(`components.train.loss.token_logps`: the vocabulary projection over chunks of
positions, recomputed in backward), the memory that matters at 16k tokens x a 128k
vocabulary.

`DPOObjective` is the Trainer objective (`components.train.engine.Objective`): per pair
loss summed and divided by the pairs of the whole global batch, and per-step statistics
(rewards/chosen, rewards/rejected, margins, accuracy, logps/chosen, logps/rejected, the
TRL names). The reference is either a frozen copy (`frozen_reference`: in the policy's
dtype and autocast) scored on every batch or, with `dpo.precompute_ref_log_probs`, scored
once when training begins and read from
the batch's `sample_index`: the policy at step 0 *is* the reference, so no second model
is held in memory.

The precomputed reference is scored by `ReferenceScorer` (a Trainer callback) after the
Trainer has prepared the model, by that model, in the training step's forward context
and batch layout: under DeepSpeed the bf16 module with autocast off, under DDP/bf16
accelerate's autocast forward, packed rows with the training attention. Scored before
the Trainer (fp32, no autocast) it was another model, and step-0 margins were not 0.
The table is stored with the config digest in the stage's `checkpoints/` and reused
on resume (the restored weights are no longer the step-0 policy); the eval pairs'
before/after tables are scored the same way.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from components.accel import inference_autocast
from components.train.data import IGNORE_INDEX, model_inputs


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


def pair_logps(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) answer log-probs of a preference batch: 2B padded rows (the B
    chosen, then the B rejected), or packed rows whose `segment_ids` number the segments
    chosen, rejected, chosen, ... (`components.train.packing`). With `chunk_tokens` > 0
    the vocabulary projection runs over chunks of that many positions
    (`components.train.loss.token_logps`), else on the model's full logits."""
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
    if chunk_tokens > 0:
        from components.train.loss import token_logps as chunked_token_logps

        per_token = chunked_token_logps(model, inputs, batch["labels"], chunk_tokens)
    else:
        per_token = token_logps(model(**inputs).logits, batch["labels"])
    if "segment_ids" not in batch:
        logps = per_token.sum(-1)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]
    sums = packed_sums(per_token, batch)
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


def frozen_reference(model: nn.Module, precision: str, strategy: str
                     ) -> tuple[nn.Module, Callable[[], contextlib.AbstractContextManager]]:
    """(frozen copy of `model`, the context its forwards run in) so that the copy computes
    what the policy computes at step 0 (`dpo.precompute_ref_log_probs: false`):

    - under DeepSpeed with bf16/fp16 the engine casts the policy to half and turns
      autocast off: a half copy, run bare;
    - otherwise (DDP, FSDP) the policy keeps fp32 weights and accelerate autocasts its
      forward: an fp32 copy (twice a half copy's memory: the price of exactness; a bf16
      copy without autocast moved the first step's rewards by 1.8e-3 here) under the same
      autocast.
    Taken before the Trainer loads a checkpoint, so a resume still copies the step-0
    (previous stage's) weights."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if half is not None and strategy.startswith("zero"):
        return make_reference(model, half), contextlib.nullcontext
    reference = make_reference(model)
    if half is None:
        return reference, contextlib.nullcontext
    device = next(model.parameters()).device.type

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device, dtype=half)

    return reference, autocast


def chosen_nll(policy_chosen: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of the chosen answer's per-token negative log-likelihood."""
    return (-policy_chosen / chosen_lengths.clamp(min=1)).mean()


class DPOObjective:
    """The Trainer objective of the dpo stage (see the module docstring). `count` is the
    pairs of a micro-batch; the loss is the sum of per-pair losses over `num_items` (all
    pairs of the global batch)."""

    def __init__(self, beta: float, nll_weight: float = 0.0, reference: nn.Module | None = None,
                 ref_logps: torch.Tensor | None = None, *, chunk_tokens: int = 0,
                 precomputed: bool = False,
                 reference_context: Callable[[], contextlib.AbstractContextManager] | None
                 = None):
        if reference is None and ref_logps is None and not precomputed:
            raise ValueError("DPO needs a reference model or precomputed reference log-probs")
        self.beta = beta
        self.nll_weight = nll_weight
        self.reference = reference
        # the forward context of the frozen copy (`frozen_reference`); None: the old
        # inference autocast
        self.reference_context = reference_context
        self.chunk_tokens = chunk_tokens
        # (N, 2): chosen, rejected per sample index; with `precomputed` and None here,
        # `ReferenceScorer` fills it in when training begins
        self.ref_logps = ref_logps

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return pair_count(batch)

    def reference_logps(self, batch: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_logps is not None:
            ref = self.ref_logps.to(batch["input_ids"].device)[batch["sample_index"]]
            return ref[:, 0], ref[:, 1]
        if self.reference is None:
            raise RuntimeError("dpo: the precomputed reference was not scored before the "
                               "first step (ReferenceScorer callback missing)")
        if next(self.reference.parameters()).device != batch["input_ids"].device:
            self.reference.to(batch["input_ids"].device)
        context = self.reference_context() if self.reference_context is not None \
            else inference_autocast(self.reference)
        with torch.no_grad(), context:
            return pair_logps(self.reference, batch, self.chunk_tokens)

    def mean_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(mean over the micro-batch's pairs of sigmoid DPO + `nll_weight` x the chosen
        answer's per-token NLL, statistics as sums over its pairs)."""
        ref_c, ref_r = self.reference_logps(batch)
        pol_c, pol_r = pair_logps(model, batch, self.chunk_tokens)
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


REFERENCE_FILE = "dpo_reference.pt"  # ReferenceScorer's tables, in the stage's checkpoints/


def pair_total(dataset) -> int:
    """Preference pairs of `dataset`: a `PackedDataset`'s base pairs, else its length."""
    return len(getattr(dataset, "base", dataset))


@torch.no_grad()
def precompute_reference(model: nn.Module, dataset, collate, batch_size: int,
                         chunk_tokens: int = 0, context=inference_autocast) -> torch.Tensor:
    """(N, 2) reference log-probs (chosen, rejected) of every pair of `dataset` (padded
    pairs, or a `PackedDataset`'s rows: N is then its base's pairs), scored with `model`
    as it is now, in batches of `batch_size` items of `dataset` made by `collate`, each
    forward inside `context(model)` (default `inference_autocast`: scoring outside the
    Trainer; `ReferenceScorer` passes the training step's own context). Under torchrun
    each rank scores every world-size-th batch and the ranks sum their tables
    (all-reduce), so the work is split, not repeated."""
    import torch.distributed as dist

    from components.train.distributed import world

    ws = world()
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    table = torch.zeros(pair_total(dataset), 2, dtype=torch.float64)
    starts = list(range(0, len(dataset), batch_size))
    # every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively)
    rounds = -(-len(starts) // ws.world_size)
    for k in range(rounds):
        position = k * ws.world_size + ws.rank
        start = starts[position] if position < len(starts) else starts[0] if starts else None
        if start is None:
            break
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        # packed varlen batches carry ints too (max_length_q): move the tensors only
        batch = {k: v.to(param.device) if torch.is_tensor(v) else v
                 for k, v in collate(items).items()}
        with context(model):
            chosen, rejected = pair_logps(model, batch, chunk_tokens)
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


def _training_context(model: nn.Module):
    """The forward context of the Trainer's step: none of our own. transformers 5's
    `compute_loss_context_manager` is empty (it leaves autocast to accelerate, which
    wraps the prepared model's forward in it; under DeepSpeed the module itself is bf16
    and autocast is off), so the prepared model scored bare runs as it trains."""
    return contextlib.nullcontext()


class ReferenceScorer(TrainerCallback):
    """The DPO reference as the step-0 policy, scored when training begins by the model
    the Trainer prepared (DeepSpeed's bf16 module, accelerate's autocast forward, the
    training attention) on the training batches' layout (packed rows when packing), in
    the step's own forward context; plus the eval pairs' table the before/after margins
    compare against.

    - `objective.ref_logps` is filled from the train table when `train_set` is given
      (`dpo.precompute_ref_log_probs`); the eval pairs are always scored.
    - The tables are stored in `store` (in the stage's `checkpoints/`, which a re-run
      keeps) with the config digest. A run resumed from a checkpoint reuses them: the
      restored weights are no longer the step-0 policy. A resume that finds no stored
      tables (or another digest) stops with an `AmaliaError` instead of scoring the
      trained weights.
    - At the end of training the eval pairs are scored again in the same context
      (`eval_after`)."""

    def __init__(self, objective: DPOObjective | None, train_set, eval_set, collate,
                 store: Path, config_digest: str, chunk_tokens: int = 0):
        self.objective = objective
        self.train_set, self.eval_set = train_set, eval_set
        self.collate = collate  # the training collator: train and eval in its layout
        self.store, self.config_digest = Path(store), config_digest
        self.chunk_tokens = chunk_tokens
        self.eval_before: torch.Tensor | None = None
        self.eval_after: torch.Tensor | None = None
        self.reused = False

    def _score(self, model, dataset, args) -> torch.Tensor:
        """`dataset` scored in micro-batches of the training step's size and layout."""
        return precompute_reference(model, dataset, self.collate,
                                    args.per_device_train_batch_size, self.chunk_tokens,
                                    context=_training_context)

    def _load(self) -> dict | None:
        if not self.store.is_file():
            return None
        stored = torch.load(self.store, map_location="cpu", weights_only=True)
        fits = (stored.get("config_digest") == self.config_digest
                and stored.get("eval_pairs") == pair_total(self.eval_set)
                and stored.get("train_pairs") == (pair_total(self.train_set)
                                                  if self.train_set is not None else None))
        return stored if fits else None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from components.errors import AmaliaError
        from components.train.distributed import world

        stored = self._load()
        if stored is None and state.global_step > 0:
            raise AmaliaError(
                f"dpo: resuming at step {state.global_step} but the step-0 reference "
                f"log-probs are not in {self.store} (or were made with another config): "
                "scoring the restored weights would give a wrong reference",
                f"re-run with --restart (discards {self.store.parent}) to train DPO from "
                "step 0 again")
        if stored is None:
            stored = {
                "config_digest": self.config_digest,
                "eval_pairs": pair_total(self.eval_set),
                "eval": self._score(model, self.eval_set, args),
                "train_pairs": None, "train": None,
            }
            if self.train_set is not None:
                stored["train_pairs"] = pair_total(self.train_set)
                stored["train"] = self._score(model, self.train_set, args)
            if world().is_main:
                self.store.parent.mkdir(parents=True, exist_ok=True)
                partial = self.store.with_suffix(".partial")
                torch.save(stored, partial)
                os.replace(partial, self.store)  # never a half-written table
        else:
            self.reused = True
        self.eval_before = stored["eval"]
        if self.objective is not None and stored["train"] is not None:
            self.objective.ref_logps = stored["train"]

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.eval_after = self._score(model, self.eval_set, args)


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
