"""The architecture numbers of a stage's model, from settings (no weights, no torch).

`ModelShapes.from_settings(settings)`: for `model.init: build_tiny` the configs that
`components.model.build.build_tiny_model` builds (vocabulary = `model.tokenizer_vocab_size`);
for `pretrained` the shapes stated in params.yaml `model.vision` / `model.text`
(`load_pretrained_parts` checks them against the loaded configs). Either way the
vocabulary is the tokenizer's plus the tokens the assembly adds (`<image>`), padded to a
multiple of `VOCAB_MULTIPLE` as `build.py` resizes it. `ModelShapes.from_model(model)`
reads the same numbers off a live `LlavaNextForConditionalGeneration`.

Parameter counts per part follow `components.model.freeze.PARTS` (connector = projector +
`image_newline`; language_model = decoder + `lm_head`; vision_tower = SigLIP encoder,
without the pooling head LlavaNext never calls). `*_matmul` counts are the weights that
take part in a matrix product per token (embedding lookups and norms excluded): the N of
the 2N/4N FLOP rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VOCAB_MULTIPLE = 64
# tokens `build.py` adds to a pretrained LM's tokenizer: `<image>` (a pad token, when the
# LM has none, lands in the same multiple-of-64 padding)
ADDED_TOKENS = 1


def padded_vocab(size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """`size` rounded up to a multiple of `multiple` (tensor-core friendly rows)."""
    return -(-size // multiple) * multiple


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    image_size: int
    patch: int

    @property
    def patches_per_tile(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def layer_matmul(self) -> int:
        return 4 * self.hidden**2 + 2 * self.hidden * self.intermediate

    @property
    def matmul(self) -> int:
        # + the patch embedding (a convolution: one matmul per patch)
        return self.layers * self.layer_matmul + 3 * self.patch**2 * self.hidden

    @property
    def params(self) -> int:
        h, i = self.hidden, self.intermediate
        per_layer = self.layer_matmul + 4 * h + i + h + 4 * h  # biases + two LayerNorms
        embed = 3 * self.patch**2 * h + h + self.patches_per_tile * h
        return self.layers * per_layer + embed + 2 * h  # + post LayerNorm


@dataclass(frozen=True)
class TextShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int  # padded rows of the embedding and lm_head
    max_position_embeddings: int
    tie_word_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def layer_matmul(self) -> int:
        h = self.hidden
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * self.intermediate

    @property
    def layer_params(self) -> int:
        return self.layer_matmul + 2 * self.hidden  # + two RMSNorms

    @property
    def head_matmul(self) -> int:
        return self.vocab * self.hidden

    @property
    def matmul(self) -> int:
        return self.layers * self.layer_matmul + self.head_matmul

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden
        head = 0 if self.tie_word_embeddings else self.head_matmul
        return embed + self.layers * self.layer_params + self.hidden + head


@dataclass(frozen=True)
class ModelShapes:
    vision: VisionShape
    text: TextShape
    connector: str = "mlp2x_gelu"

    @property
    def connector_matmul(self) -> int:
        v, t = self.vision.hidden, self.text.hidden
        return v * t + (t * t if self.connector == "mlp2x_gelu" else 0)

    @property
    def connector_params(self) -> int:
        t = self.text.hidden
        biases = 2 * t if self.connector == "mlp2x_gelu" else t
        return self.connector_matmul + biases + t  # + image_newline

    def part_params(self) -> dict[str, int]:
        """Parameters per trainable part (`freeze.PARTS` names)."""
        return {"vision_tower": self.vision.params, "connector": self.connector_params,
                "language_model": self.text.params}

    @property
    def largest_layer_params(self) -> int:
        """The largest module ZeRO-3 / FSDP gathers whole: a decoder layer, the embedding
        or the lm_head (DeepSpeed's `largest_layer_params`)."""
        return max(self.text.layer_params, self.text.vocab * self.text.hidden,
                   self.vision.layer_matmul)

    def visual_tokens(self, grid: tuple[int, int]) -> int:
        """LM tokens of one image cut into a `grid` (rows, cols) of tiles at the pinpoint's
        own aspect: the base tile + the grid's features with a newline per row
        (LlavaNext `pack_image_features`, strategy "full")."""
        side = self.vision.image_size // self.vision.patch
        rows, cols = grid[0] * side, grid[1] * side
        return self.vision.patches_per_tile + rows * (cols + 1)

    @classmethod
    def from_settings(cls, settings: Any) -> ModelShapes:
        m = settings.model
        v, t = m.vision, m.text
        if m.init == "build_tiny":
            vocab = max(m.tokenizer_vocab_size, m.text.vocab_size or 0)
        else:
            vocab = (t.vocab_size or m.tokenizer_vocab_size) + ADDED_TOKENS
        vision = VisionShape(v.hidden_size, v.intermediate_size, v.num_hidden_layers,
                             v.num_attention_heads, v.image_size, v.patch_size)
        text = TextShape(t.hidden_size, t.intermediate_size, t.num_hidden_layers,
                         t.num_attention_heads, t.num_key_value_heads, padded_vocab(vocab),
                         t.max_position_embeddings, bool(getattr(t, "tie_word_embeddings",
                                                                 False)))
        return cls(vision, text, m.connector)

    @classmethod
    def from_model(cls, model: Any) -> ModelShapes:
        cfg = model.config
        vc, tc = cfg.vision_config, cfg.text_config
        vision = VisionShape(vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers,
                             vc.num_attention_heads, vc.image_size, vc.patch_size)
        kv = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
        text = TextShape(tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers,
                         tc.num_attention_heads, kv, model.get_input_embeddings().num_embeddings,
                         tc.max_position_embeddings,
                         bool(getattr(cfg, "tie_word_embeddings", False)))
        act = getattr(cfg, "projector_hidden_act", "gelu")
        return cls(vision, text, "linear" if act == "linear" else "mlp2x_gelu")


def max_grid(settings: Any) -> tuple[int, int]:
    """The pinpoint grid (rows, cols) with the most visual tokens whose tiles (grid + the
    base tile) fit `train.max_tiles` (null = any pinpoint)."""
    side = settings.model.vision.image_size
    cap = settings.engine.max_tiles
    shapes = ModelShapes.from_settings(settings)
    grids = [(h // side, w // side) for h, w in settings.model.image_grid_pinpoints]
    fitting = [g for g in grids if cap is None or g[0] * g[1] + 1 <= cap] or [(1, 1)]
    return max(fitting, key=shapes.visual_tokens)


def max_tiles_per_image(settings: Any) -> int:
    """Tiles of the largest image a sample may carry (grid + base tile)."""
    rows, cols = max_grid(settings)
    return rows * cols + 1
