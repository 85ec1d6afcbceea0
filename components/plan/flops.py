"""FLOPs of one training sample, counting what is computed.

Per part (vision tower -> connector -> language model, the order gradients flow back in):

- forward: 2N per token (N = the part's matmul weights, `shapes.*_matmul`), frozen or not;
- backward: 4N where the part's weights train (input + weight gradients); 2N (input
  gradient only) where the part is frozen but a trainable part sits upstream, so the
  gradient must pass through it (align: the LM is frozen but the connector trains); 0
  where nothing upstream trains (align's vision tower);
- attention: 4 x s^2 x hidden per layer forward per sequence of s tokens (QK^T and AV over
  the full square, as `torch.utils.flop_counter` and PaLM's MFU count it; a causal flash
  kernel skips the masked half, so the hardware does less); packed rows attend per
  segment, so the term is per sample; backward 2x forward wherever a gradient passes;
- gradient checkpointing: one more forward of every checkpointed layer that runs backward;
  that recompute is hardware FLOPs, not model FLOPs: MFU excludes it.

The vision tower runs on every tile (`patches_per_tile` tokens each) and the connector on
every patch feature; the LM on the sample's tokens, image tokens included. DPO: a pair is
two sequences through the policy plus two reference forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.plan.shapes import ModelShapes

ORDER = ("vision_tower", "connector", "language_model")


@dataclass(frozen=True)
class Flops:
    """FLOPs of one sample: `model` (forward + backward, MFU's numerator) and `recompute`
    (gradient checkpointing's extra forward)."""

    forward: float
    backward: float
    recompute: float

    @property
    def model(self) -> float:
        return self.forward + self.backward

    @property
    def hardware(self) -> float:
        return self.model + self.recompute


def backward_mode(trainable: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Per part: `train` (weight + input gradients), `through` (input gradient only) or
    `none` (no backward)."""
    out: dict[str, str] = {}
    upstream_trains = False
    for part in ORDER:
        if part in trainable:
            out[part] = "train"
        else:
            out[part] = "through" if upstream_trains else "none"
        upstream_trains = upstream_trains or part in trainable
    return out


_BACKWARD = {"train": 2.0, "through": 1.0, "none": 0.0}  # x the forward matmul FLOPs


def sample_flops(shapes: ModelShapes, tokens: float, tiles: float,
                 trainable: list[str] | tuple[str, ...], checkpointing: bool = False,
                 segments: list[float] | None = None) -> Flops:
    """FLOPs of one sequence of `tokens` LM tokens with `tiles` image tiles (`segments`:
    the lengths its attention is split into, default one of `tokens`)."""
    v, t = shapes.vision, shapes.text
    p = v.patches_per_tile
    seg = segments if segments is not None else [tokens]
    mode = backward_mode(trainable)
    # matmul (2N per token) and attention (4 s^2 h per layer) forward, per part
    mm = {
        "vision_tower": tiles * p * 2.0 * v.matmul,
        "connector": tiles * p * 2.0 * shapes.connector_matmul,
        "language_model": tokens * 2.0 * t.matmul,
    }
    attn = {
        "vision_tower": tiles * v.layers * 4.0 * p * p * v.hidden,
        "connector": 0.0,
        "language_model": t.layers * 4.0 * t.hidden * sum(s * s for s in seg),
    }
    forward = sum(mm.values()) + sum(attn.values())
    backward = sum(_BACKWARD[mode[k]] * mm[k] + (2.0 * attn[k] if mode[k] != "none" else 0.0)
                   for k in ORDER)
    recompute = 0.0
    if checkpointing:  # the decoder / encoder layers (not the lm_head) run forward again
        head = tokens * 2.0 * t.head_matmul
        layers = {"vision_tower": mm["vision_tower"] + attn["vision_tower"],
                  "language_model": mm["language_model"] - head + attn["language_model"]}
        recompute = sum(f for k, f in layers.items() if mode[k] != "none")
    return Flops(forward, backward, recompute)


def pair_flops(shapes: ModelShapes, tokens: float, tiles: float,
               trainable: list[str] | tuple[str, ...], checkpointing: bool = False) -> Flops:
    """One DPO pair of `tokens` (chosen + rejected) and `tiles` (both): two policy
    sequences, each with half, plus the reference's two forwards (model FLOPs: computed,
    whether precomputed once or scored beside the policy)."""
    one = sample_flops(shapes, tokens / 2, tiles / 2, trainable, checkpointing)
    ref = sample_flops(shapes, tokens / 2, tiles / 2, [], False)
    return Flops(2 * one.forward + 2 * ref.forward, 2 * one.backward, 2 * one.recompute)


def trainable_parts(model) -> list[str]:
    """The parts of a live model with any parameter that requires a gradient."""
    from components.model.freeze import part_of

    return sorted({part_of(n) for n, p in model.named_parameters() if p.requires_grad})


def model_flops_per_token(model, seq_len: float, tiles_per_token: float = 0.0) -> float:
    """Model FLOPs (MFU's numerator) per LM token of a live LlavaNext training at samples of
    `seq_len` tokens, the parts' trainability read off `requires_grad`."""
    shapes = ModelShapes.from_model(model)
    seq_len = max(float(seq_len), 1.0)
    f = sample_flops(shapes, seq_len, tiles_per_token * seq_len, trainable_parts(model))
    return f.model / seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, devices: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over `devices` x peak."""
    return tokens_per_s * flops_per_token / (peak_flops * devices)
