"""Typed settings loaded from `params.yaml`, the single config source.

`params.yaml` holds `base` defaults and named `profiles` deep-merged over them; `profile`
selects one (overridden by `--profile` or the `AMALIA_PROFILE` environment variable).
`load_settings()` returns a validated, frozen `Settings`; `Settings.digest()` is the
config hash written into every stage manifest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.errors import ConfigError, MissingInputError

TrainablePart = Literal["connector", "language_model", "vision_tower"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidateSettings(_Section):
    max_quarantine_ratio: float = Field(0.2, ge=0.0, le=1.0)
    min_image_side: int = Field(8, ge=1)
    max_aspect_ratio: float = Field(20.0, ge=1.0)
    max_text_chars: int = Field(2000, ge=1)


class TranslateSettings(_Section):
    backend: Literal["memory", "hf_seq2seq", "hf_llm"] = "memory"
    memory_path: str = "seed_en/translation_memory.jsonl"  # relative to data_dir
    model_id: str | None = None
    source_lang: str = "en"
    target_lang: str = "pt-PT"
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.5


class MixSettings(_Section):
    """Per training stage, a sampling weight per source family (`native`, `seed`)."""

    align: dict[str, float] = Field(default_factory=lambda: {"native": 1.0, "seed": 1.0})
    sft: dict[str, float] = Field(default_factory=lambda: {"native": 1.0, "seed": 1.0})
    dpo: dict[str, float] = Field(default_factory=lambda: {"native": 1.0, "seed": 1.0})


class VisionTowerSettings(_Section):
    hidden_size: int = 48
    intermediate_size: int = 96
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    image_size: int = Field(32, description="tile side in pixels")
    patch_size: int = 8


class TextModelSettings(_Section):
    hidden_size: int = 96
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512


class ModelSettings(_Section):
    init: Literal["build_tiny", "pretrained"] = "build_tiny"
    vision_model_id: str | None = None
    language_model_id: str | None = None
    tokenizer_vocab_size: int = 600
    vision: VisionTowerSettings = VisionTowerSettings()
    text: TextModelSettings = TextModelSettings()
    image_grid_pinpoints: list[tuple[int, int]] = [(32, 32), (32, 64), (64, 32), (64, 64)]
    connector: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    max_length: int = Field(256, ge=16, description="max tokens per sample, image tokens included")

    @field_validator("image_grid_pinpoints")
    @classmethod
    def _pinpoints_are_tile_multiples(cls, v, info):
        vision = info.data.get("vision")
        side = vision.image_size if vision else None
        for h, w in v:
            if side and (h % side or w % side):
                raise ValueError(f"pinpoint {h}x{w} is not a multiple of the tile side {side}")
        return v

    def model_post_init(self, _ctx: Any) -> None:
        if self.init == "pretrained" and not (self.vision_model_id and self.language_model_id):
            raise ValueError("model.init=pretrained needs vision_model_id and language_model_id")


class TrainSettings(_Section):
    epochs: int = Field(1, ge=0)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    trainable: list[TrainablePart] = ["connector"]
    beta: float = Field(0.1, gt=0, description="DPO temperature (dpo stage only)")


class EvaluateSettings(_Section):
    max_new_tokens: int = 8
    batch_size: int = 32


class RegisterSettings(_Section):
    model_name: str = "amalia-vl"
    alias: str = "challenger"


class TrackingSettings(_Section):
    experiment: str = "amalia-vl"


class SyntheticSettings(_Section):
    train_per_task: int = 240
    test_per_task: int = 40
    seed_en_per_kind: int = 40


class Settings(_Section):
    profile: str
    seed: int = 1234
    data_dir: Path = Path("data")
    runs_dir: Path = Path("runs")
    validate_: ValidateSettings = Field(ValidateSettings(), alias="validate")
    translate: TranslateSettings = TranslateSettings()
    mix: MixSettings = MixSettings()
    model: ModelSettings = ModelSettings()
    align: TrainSettings = TrainSettings(trainable=["connector"])
    sft: TrainSettings = TrainSettings(trainable=["connector", "language_model"])
    dpo: TrainSettings = TrainSettings(trainable=["connector", "language_model"])
    evaluate: EvaluateSettings = EvaluateSettings()
    register_: RegisterSettings = Field(RegisterSettings(), alias="register")
    tracking: TrackingSettings = TrackingSettings()
    synthetic: SyntheticSettings = SyntheticSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def train(self, stage: str) -> TrainSettings:
        """Training settings of `align`, `sft` or `dpo`."""
        return getattr(self, stage)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """Stable sha256 of the effective config (recorded in manifests)."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_params_path() -> Path:
    """`params.yaml` in the working directory, else beside the installed source tree."""
    env = os.environ.get("AMALIA_PARAMS")
    if env:
        return Path(env)
    local = Path("params.yaml")
    if local.exists():
        return local
    return Path(__file__).resolve().parent.parent / "params.yaml"


def load_settings(
    profile: str | None = None,
    params_path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read `params.yaml`, pick the profile and validate.

    Raises `MissingInputError` if the file is missing and `ConfigError` (naming the field)
    on an unknown profile or an invalid value.
    """
    path = Path(params_path) if params_path else default_params_path()
    if not path.exists():
        raise MissingInputError(f"config file {path} not found", "run from the repository root")
    raw = yaml.safe_load(path.read_text()) or {}
    chosen = profile or os.environ.get("AMALIA_PROFILE") or raw.get("profile", "tiny")
    profiles = raw.get("profiles", {})
    if chosen not in profiles:
        raise ConfigError(
            f"unknown profile '{chosen}' in {path}", f"choose one of: {', '.join(profiles)}"
        )
    merged = _deep_merge(raw.get("base", {}), profiles[chosen] or {})
    merged = _deep_merge(merged, overrides or {})
    merged["profile"] = chosen
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"invalid config in {path} (profile {chosen}): {where}: {first['msg']}"
        ) from None
