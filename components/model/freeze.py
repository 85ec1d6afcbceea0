"""Which parameters train in which stage: one table, no if/else per stage.

`PARTS` maps each trainable part to the parameter-name prefixes it owns in
`LlavaNextForConditionalGeneration` (transformers 5 names):

- `connector`: the MLP projector and `image_newline` (the learned row separator of the
  anyres grid, which lives in LM space and is new with the connector);
- `language_model`: the Llama decoder and `lm_head`;
- `vision_tower`: the SigLIP encoder.

Per-stage contract (the `trainable` lists of params.yaml; `set_trainable` enforces them):

- align: connector only: the towers stay as built/pretrained; the projector learns to map
  image features into the LM's embedding space from captions.
- sft: connector + language_model (+ vision_tower when listed): visual instruction tuning.
- dpo: connector + language_model, against a frozen copy of the sft model.

Learning rates sit beside this table: `parameter_groups` gives each trainable part its own
AdamW group at `learning_rate x lr_multipliers[part]` (params.yaml `<stage>.lr_multipliers`;
LLaVA-NeXT-style recipes train the vision tower ~10x lower than the connector and LLM).
Norms and biases get no weight decay.

Every parameter must belong to exactly one part: a parameter the table does not know
raises, so a transformers rename cannot silently freeze or unfreeze anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from components.errors import ConfigError

PARTS: dict[str, tuple[str, ...]] = {
    "connector": ("model.multi_modal_projector.", "model.image_newline"),
    "language_model": ("model.language_model.", "lm_head."),
    "vision_tower": ("model.vision_tower.",),
}


def part_of(name: str) -> str:
    """The part owning parameter `name`; raises `ConfigError` if no or several parts do."""
    owners = [part for part, prefixes in PARTS.items() if name.startswith(prefixes)]
    if len(owners) != 1:
        raise ConfigError(
            f"parameter '{name}' belongs to {owners or 'no part'} in the freezing table",
            "update components/model/freeze.py:PARTS for this model class",
        )
    return owners[0]


def count_by_part(model: nn.Module, trainable_only: bool = True) -> dict[str, int]:
    """Number of (trainable) parameters per part; every part is listed, 0 if none."""
    counts = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        if param.requires_grad or not trainable_only:
            counts[part_of(name)] += param.numel()
    return counts


_TOWER_LAYER = re.compile(r"^model\.vision_tower\.(?:vision_model\.)?encoder\.layers\.(\d+)\.")
_TOWER_UNREAD = re.compile(r"^model\.vision_tower\.(?:vision_model\.)?(?:post_layernorm|head)\.")


def unread_parameters(model: nn.Module) -> set[str]:
    """Vision-tower parameters LlavaNext never reads, so they can never get a gradient:
    `post_layernorm` and the pooling head (features are `hidden_states[layer]`, taken
    before them) and the encoder layers after `vision_feature_layer` (-2: the last one).
    DDP and ZeRO fail on trainable parameters without gradients; these stay frozen."""
    cfg = model.config
    layers = cfg.vision_config.num_hidden_layers
    feature = cfg.vision_feature_layer
    picks = feature if isinstance(feature, list | tuple) else [feature]
    last_used = max(p % (layers + 1) for p in picks)  # hidden_states[k]: output of layer k-1
    out = set()
    for name, _ in model.named_parameters():
        layer = _TOWER_LAYER.match(name)
        if _TOWER_UNREAD.match(name) or (layer and int(layer.group(1)) >= last_used):
            out.add(name)
    return out


def set_trainable(model: nn.Module, parts: Iterable[str]) -> dict[str, int]:
    """Make exactly the parameters of `parts` trainable (less `unread_parameters`);
    returns trainable counts per part."""
    wanted = set(parts)
    unknown = wanted - set(PARTS)
    if unknown:
        raise ConfigError(f"unknown trainable part(s) {sorted(unknown)}",
                          f"parts are: {', '.join(PARTS)}")
    unread = unread_parameters(model)
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) in wanted and name not in unread)
    return count_by_part(model)


def parameter_groups(model: nn.Module, parts: Iterable[str], learning_rate: float,
                     multipliers: dict[str, float], weight_decay: float = 0.0) -> list[dict]:
    """AdamW parameter groups: one per (trainable part, decayed or not), each with its
    `lr` and a `part` name (for logging); parts not in `parts` or frozen are left out."""
    wanted = set(parts)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        part = part_of(name)
        if part not in wanted or not param.requires_grad:
            continue
        decay = param.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((part, decay), []).append(param)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": learning_rate * multipliers.get(part, 1.0),
                    "weight_decay": weight_decay if decay else 0.0, "part": part})
    if not out:
        raise ConfigError(f"nothing to train: no parameter of {sorted(wanted)} requires grad",
                          "check the stage's `trainable` list in params.yaml")
    return out
