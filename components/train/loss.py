"""Chunked LM loss and token log-probs: never the whole tokens x vocabulary logits.

At paper scale a 16k-token row over a 128k vocabulary has ~4 GiB of bf16 logits, twice
that as the fp32 upcast of the loss, and as much again for their gradient. Here the model
runs its forward as usual but projects only one position onto the vocabulary
(`final_hidden`); the final hidden states are then projected by the model's own `lm_head`
`chunk_tokens` positions at a time, and each chunk is recomputed in backward
(non-reentrant `torch.utils.checkpoint`), so at most one chunk's logits (with their fp32
copy and gradient) are alive at any moment, in forward or backward.

Contracts:

- **Same numbers as the plain loss**: `lm_loss` is the model's own next-token
  cross-entropy (`ForCausalLMLoss`: logits upcast to fp32, position t predicts label
  t+1, -100 ignored, summed and divided by `num_items_in_batch`, else the mean);
  `token_logps` is `components.train.dpo.token_logps` of the full logits. Only positions
  whose next label is scored are projected, in row-major order, so padding, prompt and
  image positions cost no vocabulary projection at all.
- **The forward context of the training step**: the lm_head chunks run in the autocast
  state the model's forward ran in (accelerate autocasts the forward, not the Trainer's
  `compute_loss`), captured when the forward reaches `lm_head`; under DeepSpeed (bf16
  module, autocast off) they run in bf16 like the forward.
- **Distributed**: the (DDP / DeepSpeed / FSDP) wrapped model's forward is still called, so
  the reducers and ZeRO-3 hooks see a normal forward; `lm_head` is called as a module (its
  ZeRO-3 hooks gather its weight for each chunk). Its weight's gradient is accumulated by
  autograd once per backward (non-reentrant checkpointing), so DDP's reducer sees it ready
  once. Under ZeRO-3 each lm_head call is a collective all-gather, so every rank makes
  as many calls as the rank with the most scored positions (`balanced_chunks`: one MAX
  all-reduce per call, empty chunks for the others); checked here with 2 gloo
  processes and the ZeRO-3 marker on the weight, not on a GPU.
- `chunk_tokens <= 0` means the plain path (full logits), for comparison and tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from components.train.data import IGNORE_INDEX


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@dataclass
class FinalHidden:
    """What `final_hidden` returns: the hidden states `lm_head` would project (B, T, H),
    the `lm_head` module, and the autocast state of the forward that produced them."""

    hidden: torch.Tensor
    head: nn.Module
    autocast: tuple[str, bool, torch.dtype]

    def context(self) -> contextlib.AbstractContextManager:
        device, enabled, dtype = self.autocast
        return torch.autocast(device, dtype=dtype, enabled=enabled)


def final_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> FinalHidden:
    """Call `model` (wrapped or not) on `inputs` so that its `lm_head` projects a single
    position, and return the full hidden states it was given (see `FinalHidden`).

    A forward pre-hook on `lm_head` keeps its input and hands it only the last position:
    whatever slicing the model does first, the hidden states kept are exactly what its
    own logits would have been computed from."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(unwrap(model)).__name__} has no lm_head "
                        "(get_output_embeddings): use the plain loss (loss_chunk_tokens: 0)")
    kept: dict[str, object] = {}

    def keep(module, args):
        hidden = args[0]
        if "hidden" not in kept:  # the first call is the model's own forward
            device = hidden.device.type
            kept["hidden"] = hidden
            kept["autocast"] = (device, torch.is_autocast_enabled(device),
                                torch.get_autocast_dtype(device))
            return (hidden[..., -1:, :], *args[1:])
        return None

    handle = head.register_forward_pre_hook(keep)
    try:
        model(**inputs)
    finally:
        handle.remove()
    if "hidden" not in kept:
        raise RuntimeError(f"{type(unwrap(model)).__name__}.forward never called its lm_head")
    return FinalHidden(kept["hidden"], head, kept["autocast"])  # type: ignore[arg-type]


def scored_positions(hidden: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat indices into the (B*(T-1)) shifted positions, their hidden states (N, H),
    their targets (N,)) for the positions t whose label t+1 is scored (!= -100)."""
    targets = labels[:, 1:].reshape(-1)
    index = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    return index, flat.index_select(0, index), targets.index_select(0, index)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _chunk_nll(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor,
               autocast: tuple[str, bool, torch.dtype]) -> torch.Tensor:
    device, enabled, dtype = autocast
    with torch.autocast(device, dtype=dtype, enabled=enabled):
        logits = head(hidden)
    return F.cross_entropy(logits.float(), target, reduction="sum")


def _chunk_logps(head: nn.Module, hidden: torch.Tensor, target: torch.Tensor,
                 autocast: tuple[str, bool, torch.dtype]) -> torch.Tensor:
    device, enabled, dtype = autocast
    with torch.autocast(device, dtype=dtype, enabled=enabled):
        logits = head(hidden)
    logits = logits.float()
    picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def zero3_partitioned(head: nn.Module) -> bool:
    """Whether `head`'s weight is partitioned by DeepSpeed ZeRO-3 (each call all-gathers
    it: a collective)."""
    return hasattr(getattr(head, "weight", None), "ds_id")


def balanced_chunks(n_chunks: int, head: nn.Module) -> int:
    """How many lm_head calls this rank makes: its own chunk count, except under ZeRO-3,
    where every call all-gathers the partitioned weight, so every rank must make as many
    calls as the rank with the most scored positions (the others add empty chunks) or
    the collectives pair up wrongly and hang."""
    import torch.distributed as dist

    if not zero3_partitioned(head) or not dist.is_initialized() or dist.get_world_size() < 2:
        return n_chunks
    count = torch.tensor([n_chunks], dtype=torch.long, device=head.weight.device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count)


def _per_chunk(fn, out: FinalHidden, hidden: torch.Tensor, target: torch.Tensor,
               chunk_tokens: int) -> list[torch.Tensor]:
    """`fn(head, hidden[chunk], target[chunk], autocast)` for each chunk (plus empty ones
    to `balanced_chunks`), recomputed in backward when a gradient is needed (only one
    chunk's logits alive at a time)."""
    results = []
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in out.head.parameters()))
    parts = list(_chunks(hidden.shape[0], chunk_tokens))
    end = hidden.shape[0]
    parts += [slice(end, end)] * (balanced_chunks(len(parts), out.head) - len(parts))
    for part in parts:
        if grad:
            results.append(checkpoint(fn, out.head, hidden[part], target[part], out.autocast,
                                      use_reentrant=False))
        else:
            results.append(fn(out.head, hidden[part], target[part], out.autocast))
    return results


def lm_loss(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
            num_items_in_batch: torch.Tensor | int | None, chunk_tokens: int) -> torch.Tensor:
    """The model's next-token cross-entropy on `labels`, summed over scored tokens and
    divided by `num_items_in_batch` (else their mean), over chunks of `chunk_tokens`
    positions (see the module docstring). `inputs` must not hold `labels`."""
    out = final_hidden(model, inputs)
    _, hidden, target = scored_positions(out.hidden, labels.to(out.hidden.device))
    parts = _per_chunk(_chunk_nll, out, hidden, target, chunk_tokens)
    if hidden.shape[0]:
        total = torch.stack(parts).sum()
    else:  # nothing scored: a zero that still reaches every parameter's graph
        total = out.hidden.sum() * 0.0 + sum(parts, torch.zeros((), device=out.hidden.device))
    if num_items_in_batch is None:
        return total / max(hidden.shape[0], 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def token_logps(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                chunk_tokens: int) -> torch.Tensor:
    """(B, T-1) fp32 log p(label_{t+1} | tokens <= t), 0 where the label is -100: the
    same as `dpo.token_logps(model(**inputs).logits, labels)`, over chunks."""
    out = final_hidden(model, inputs)
    labels = labels.to(out.hidden.device)
    index, hidden, target = scored_positions(out.hidden, labels)
    b, t = labels.shape
    flat = torch.zeros(b * (t - 1), dtype=torch.float32, device=out.hidden.device)
    parts = _per_chunk(_chunk_logps, out, hidden, target, chunk_tokens)
    if hidden.shape[0]:
        flat = flat.index_put((index,), torch.cat(parts))
    else:
        flat = flat + out.hidden.sum() * 0.0 + sum(p.sum() for p in parts)
    return flat.view(b, t - 1)
