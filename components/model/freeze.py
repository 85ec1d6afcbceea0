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

Every parameter must belong to exactly one part: a parameter the table does not know
raises, so a transformers rename cannot silently freeze or unfreeze anything.
"""

from __future__ import annotations

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


def set_trainable(model: nn.Module, parts: Iterable[str]) -> dict[str, int]:
    """Make exactly the parameters of `parts` trainable; returns trainable counts per part."""
    wanted = set(parts)
    unknown = wanted - set(PARTS)
    if unknown:
        raise ConfigError(f"unknown trainable part(s) {sorted(unknown)}",
                          f"parts are: {', '.join(PARTS)}")
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) in wanted)
    return count_by_part(model)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
