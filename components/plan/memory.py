"""Memory per GPU of one training micro-batch, by part, in GiB.

Parts (`MemoryPlan.parts_gib`):

- `weights`, `gradients`, `optimizer` (model states), as `strategy` holds them on each of
  `world` processes; P = all parameters, T = trainable ones (`<stage>.trainable`: frozen
  parts have no gradients and no optimizer state), N = world size:
  - ddp: fp32 weights 4P (the Trainer autocasts over fp32 master weights; bf16 autocast
    also caches 2T bf16 copies of the trainable weights), fp32 gradients 4T (+4T DDP
    reducer buckets when N > 1), AdamW 8T;
  - zero2: bf16 weights 2P replicated, bf16 + fp32 gradient partitions 6T/N, fp32
    master + AdamW 12T/N (all trainable: DeepSpeed's
    `estimate_zero2_model_states_mem_needs`, no offload: 2P + 18P/N);
  - zero3: bf16 weight shards 2P/N + the live gathered layer 4 x largest layer, fp32
    gradient partitions 4T/N (`grad_accum_dtype` fp32), master + AdamW 12T/N; all
    trainable this is DeepSpeed's `estimate_zero3_model_states_mem_needs` (no offload):
    4 x largest + 18P/N;
  - fsdp: fp32 shards 4P/N + two gathered layers (current + prefetch), 4T/N, 8T/N.
- `activations`: what autograd keeps for the LM's backward over the micro-batch's tokens
  (per token per decoder layer, below); with gradient checkpointing only each layer's
  input plus one layer's full set during its recompute. Both are reported
  (`activations_gib`), the configured one counts in the peak.
- `logits`: tokens x vocabulary in the compute dtype + the fp32 upcast + log-softmax +
  its fp32 gradient (14 bytes per logit in bf16, 12 in fp32); chunked (D's
  `train.loss_chunk_tokens` > 0) only `loss_chunk_tokens` rows are live at once.
- `vision`: the tower's activations at the most tiles a micro-batch can hold (only where
  a gradient passes through the tower: none in align).
- `overhead`: a fixed allowance (`plan.overhead_gib`: CUDA context, NCCL buffers,
  allocator fragmentation; 0 on CPU).

Saved activations per token per LM decoder layer (HF Llama, flash/sdpa kernels that keep
no s x s scores; `eager` adds heads x s per token): two norm inputs and their fp32
intermediates (4 x hidden at the residual dtype: fp32 under autocast over fp32 weights,
bf16 under DeepSpeed), q/k/v (hidden + 2 kv), the attention output, the SwiGLU gate, up
and activation (3 x intermediate); a layer whose weights train also keeps its matmul
inputs (2 x hidden + intermediate). SigLIP per patch per layer: two LayerNorm inputs,
q/k/v/out, fc1 out and the GELU output. Peak = sum of the parts: model states, the
forward's activations and the loss's logits are all live when backward starts; the
gradients replace them during backward (`MemoryPlan.peak_gib`: states + overhead + the
larger of the two; checked against a measured CPU step by bench/plan_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.plan.flops import backward_mode
from components.plan.shapes import ModelShapes

GIB = float(1 << 30)


@dataclass(frozen=True)
class MemoryPlan:
    parts_gib: dict[str, float]
    activations_gib: dict[str, float] = field(default_factory=dict)  # checkpointing on/off
    micro_batch_tokens: int = 0
    micro_batch_tiles: int = 0

    @property
    def peak_gib(self) -> float:
        """Weights, optimizer state and overhead are live throughout a (steady-state) step;
        the backward frees the forward's activations, logits and tower activations as it
        creates the gradients (freed again after the optimizer step), so the larger of the
        two sets counts, not their sum."""
        p = self.parts_gib
        forward = p["activations"] + p["logits"] + p["vision"]
        return p["weights"] + p["optimizer"] + p["overhead"] + max(forward, p["gradients"])

    def largest_part(self) -> str:
        """The part to shrink first (of those the peak counts)."""
        p = dict(self.parts_gib)
        forward = p["activations"] + p["logits"] + p["vision"]
        p.pop("gradients" if forward >= p["gradients"] else "activations")
        if forward < self.parts_gib["gradients"]:
            p.pop("logits"), p.pop("vision")
        return max(p, key=lambda k: p[k])


def model_states_bytes(shapes: ModelShapes, trainable: list[str] | tuple[str, ...],
                       strategy: str, world: int, precision: str) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer state (see the module docstring)."""
    parts = shapes.part_params()
    p_all = float(sum(parts.values()))
    p_t = float(sum(n for k, n in parts.items() if k in trainable))
    n = max(world, 1)
    largest = float(shapes.largest_layer_params)
    if strategy == "zero3":
        return {"weights": 2 * p_all / n + 4 * largest, "gradients": 4 * p_t / n,
                "optimizer": 12 * p_t / n}
    if strategy == "zero2":
        return {"weights": 2 * p_all, "gradients": 6 * p_t / n,
                "optimizer": 12 * p_t / n}
    if strategy == "fsdp":
        return {"weights": 4 * p_all / n + 2 * 4 * largest, "gradients": 4 * p_t / n,
                "optimizer": 8 * p_t / n}
    cache = 2 * p_t if precision in ("bf16", "fp16") else 0.0
    return {"weights": 4 * p_all + cache, "gradients": 4 * p_t * (2 if n > 1 else 1),
            "optimizer": 8 * p_t}


def lm_layer_bytes_per_token(shapes: ModelShapes, trains: bool, act: int, resid: int,
                             eager_len: float = 0.0) -> float:
    t = shapes.text
    h, i = t.hidden, t.intermediate
    kept = act * (h + 2 * t.kv_dim + h + 3 * i) + resid * 4 * h
    if trains:
        kept += act * (2 * h + i)
    if eager_len:
        kept += act * t.heads * eager_len
    return float(kept)


def vision_layer_bytes_per_patch(shapes: ModelShapes, act: int, resid: int) -> float:
    v = shapes.vision
    return float(act * (5 * v.hidden + 2 * v.intermediate) + resid * 2 * v.hidden)


def logits_bytes(tokens: int, vocab: int, act: int, chunk: int) -> float:
    """Live logits bytes for `tokens` rows (or `chunk` rows when chunk > 0)."""
    rows = min(tokens, chunk) if chunk > 0 else tokens
    per = act + 4 + 4 + 4 if act < 4 else 4 + 4 + 4
    return float(rows) * vocab * per


def plan_memory(shapes: ModelShapes, *, trainable: list[str] | tuple[str, ...],
                strategy: str, world: int, precision: str, micro_batch_tokens: int,
                micro_batch_tiles: int, checkpointing: bool, loss_chunk_tokens: int,
                overhead_gib: float, attn_implementation: str = "sdpa",
                sequence_tokens: int | None = None) -> MemoryPlan:
    """The memory of one micro-batch of `micro_batch_tokens` LM tokens and
    `micro_batch_tiles` image tiles per GPU (see the module docstring)."""
    act = 4 if precision == "fp32" else 2
    # the residual stream stays fp32 under autocast over fp32 weights (ddp, fsdp)
    resid = 4 if precision == "fp32" or strategy in ("ddp", "fsdp") else 2
    mode = backward_mode(trainable)
    states = model_states_bytes(shapes, trainable, strategy, world, precision)
    tokens = micro_batch_tokens
    t = shapes.text
    eager = float(sequence_tokens or tokens) if attn_implementation == "eager" else 0.0
    lm_grad = mode["language_model"] != "none"
    per_layer = lm_layer_bytes_per_token(shapes, mode["language_model"] == "train", act,
                                         resid, eager) if lm_grad else 0.0
    full = tokens * per_layer * t.layers
    ckpt = tokens * (resid * t.hidden * t.layers + per_layer) if lm_grad else 0.0
    # the final norm's output feeds lm_head: kept whenever a gradient passes the LM
    final = tokens * act * t.hidden if lm_grad else 0.0
    activations = {"checkpointing": (ckpt + final) / GIB, "none": (full + final) / GIB}
    logits = logits_bytes(tokens, t.vocab, act, loss_chunk_tokens) if lm_grad else \
        float(tokens) * t.vocab * act  # no backward: the forward's logits only
    patches = micro_batch_tiles * shapes.vision.patches_per_tile
    v_layer = vision_layer_bytes_per_patch(shapes, act, resid)
    if mode["vision_tower"] == "none":
        vision = 0.0
    elif checkpointing:
        vision = patches * (resid * shapes.vision.hidden * shapes.vision.layers + v_layer)
    else:
        vision = patches * v_layer * shapes.vision.layers
    parts = {k: b / GIB for k, b in states.items()}
    parts["activations"] = activations["checkpointing" if checkpointing else "none"]
    parts["logits"] = logits / GIB
    parts["vision"] = vision / GIB
    parts["overhead"] = overhead_gib
    return MemoryPlan(parts, activations, tokens, micro_batch_tiles)
