"""Assemble, save and load the amalia-vl model (LlavaNext: SigLIP tower + MLP + Llama).

Two ways in, chosen by `settings.model.init`:

- `build_tiny_model`: random weights at the sizes of `settings.model` and a BPE tokenizer
  trained on the run's texts. Runs anywhere, downloads nothing; the CPU profiles use it.
- `load_pretrained_parts`: the published recipe: a SigLIP vision tower and a Llama-family
  LM loaded by id (`from_pretrained`, so a hub id or a local folder), joined by a fresh
  connector. On an offline box a hub id fails with a `MissingInputError` naming the id.

Either way the processor tiles images "anyres" (LlavaNext): a base tile of side
`vision.image_size` plus the best `image_grid_pinpoints` grid. SigLIP has no CLS token, so
`vision_feature_select_strategy="full"` and `num_additional_image_tokens=0`;
`check_image_token_agreement` proves processor and model count the same image tokens
before any training time is spent.

Vocabulary: the embedding and `lm_head` rows are padded to a multiple of 64 (tensor-core
tiles); the tokenizer and processor keep their real size, padded rows are never a label
and generation suppresses them. `model.max_length` above the LM's
`max_position_embeddings` is refused, and for `pretrained` the shapes params.yaml states
(`model.vision` / `model.text`, what `components.plan` plans with) must be the loaded
checkpoint's: each a one-line `ConfigError` naming the setting.

`save_model`/`load_model` use plain `save_pretrained` folders reloaded through
`AutoModelForImageTextToText` + `AutoProcessor`: that folder is the model artefact every
later stage, the registry and `ask` consume.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedTokenizerBase,
    SiglipVisionConfig,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from components.accel import Runtime, detect_runtime, inference_autocast
from components.errors import AmaliaError, ConfigError, MissingInputError
from components.model.tokenizer import CHAT_TEMPLATE, IMAGE, PAD, train_tokenizer
from components.plan.shapes import VOCAB_MULTIPLE, padded_vocab
from components.settings import Settings

log = logging.getLogger(__name__)

# SigLIP normalises pixels to [-1, 1]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
# connector name in params.yaml -> activation between LlavaNext's two projector layers
CONNECTOR_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}
# image sizes (width, height) always probed by the agreement check: tiny, thin, huge, odd
PROBE_SIZES: tuple[tuple[int, int], ...] = (
    (1, 1), (17, 300), (300, 17), (3000, 20), (20, 3000), (640, 480), (480, 640),
    (33, 33), (64, 64), (96, 48), (48, 96), (100, 37), (1023, 769), (4000, 3000),
)


class ImageTokenMismatchError(AmaliaError):
    """Processor and model would disagree on the number of image tokens of some image."""


def make_processor(
    tokenizer: PreTrainedTokenizerBase, settings: Settings, patch_size: int | None = None
) -> LlavaNextProcessor:
    """The anyres processor for `settings.model` (tile side = `vision.image_size`)."""
    m = settings.model
    side = m.vision.image_size
    image_processor = LlavaNextImageProcessorPil(
        size={"height": side, "width": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in m.image_grid_pinpoints],
        do_center_crop=False,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size or m.vision.patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
    )


def _llava_config(settings: Settings, vision_config, text_config, image_token_id: int):
    m = settings.model
    return LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_grid_pinpoints=[list(p) for p in m.image_grid_pinpoints],
        vision_feature_select_strategy="full",
        vision_feature_layer=m.vision_feature_layer,
        projector_hidden_act=CONNECTOR_ACT[m.connector],
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )


def build_tiny_model(
    settings: Settings, texts: Iterable[str], runtime: Runtime | None = None
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """A randomly initialised LlavaNext at the sizes of `settings.model`, seeded by
    `settings.seed`, with a tokenizer trained on `texts` (all texts of the run's mix)."""
    m = settings.model
    rt = runtime or detect_runtime()
    tokenizer = train_tokenizer(texts, m.tokenizer_vocab_size)
    tokenizer.model_max_length = m.max_length
    v, t = m.vision, m.text
    vision_config = SiglipVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        vision_use_head=False,  # LlavaNext reads patch features; the pooling head is unused
    )
    check_max_length(settings, t.max_position_embeddings, "model.text.max_position_embeddings")
    text_config = LlamaConfig(
        # rows past the tokenizer (padding to 64; `model.text.vocab_size` reserves a
        # pretrained-sized vocabulary, e.g. 128k for the GPU bench): never a label
        vocab_size=padded_vocab(max(len(tokenizer), t.vocab_size or 0)),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = _llava_config(settings, vision_config, text_config, tokenizer.image_token_id)
    config.pad_token_id = tokenizer.pad_token_id
    config._attn_implementation = rt.attn_implementation
    torch.manual_seed(settings.seed)
    model = LlavaNextForConditionalGeneration(config)
    _set_generation_defaults(model, tokenizer)
    processor = make_processor(tokenizer, settings)
    return model.to(device=rt.device, dtype=rt.dtype), processor


def check_max_length(settings: Settings, max_positions: int, where: str) -> None:
    """`model.max_length` must not exceed the LM's `max_position_embeddings`."""
    if settings.model.max_length > max_positions:
        raise ConfigError(
            f"model.max_length={settings.model.max_length} exceeds the language model's "
            f"max_position_embeddings={max_positions} ({where})",
            f"lower model.max_length to <= {max_positions}")


def check_stated_shapes(settings: Settings, vision_config, text_config) -> None:
    """The shapes params.yaml states (`model.vision` / `model.text`, which the planner
    uses) must be the loaded checkpoint's: one `ConfigError` naming the first setting
    that differs."""
    m = settings.model
    pairs = [(f"model.vision.{k}", getattr(m.vision, k), getattr(vision_config, k, None))
             for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads")]
    pairs += [(f"model.text.{k}", getattr(m.text, k), getattr(text_config, k, None))
              for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads",
                        "max_position_embeddings")]
    if m.text.vocab_size is not None:
        pairs.append(("model.text.vocab_size", m.text.vocab_size, text_config.vocab_size))
    for name, stated, real in pairs:
        if real is not None and stated != real:
            raise ConfigError(
                f"{name}={stated} in params.yaml but the checkpoint has {real} "
                f"({m.vision_model_id if 'vision' in name else m.language_model_id})",
                f"set {name}: {real} (the planner's memory and FLOPs use it)")


def _set_generation_defaults(model, tokenizer) -> None:
    gc = model.generation_config
    # the padded vocabulary rows are no token: generation must never pick one
    rows = model.get_output_embeddings().weight.shape[0] \
        if model.get_output_embeddings() is not None else len(tokenizer)
    gc.suppress_tokens = list(range(len(tokenizer), rows)) or None
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.do_sample = False


def _from_pretrained(loader, model_id: str, what: str, **kwargs):
    """`loader.from_pretrained(model_id)`, turning offline/missing failures into one line."""
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise MissingInputError(
            f"cannot load the {what} '{model_id}': {str(exc).splitlines()[0]}",
            "use a local save_pretrained folder, or pre-download it into the HF cache on a "
            "networked box (this one is offline)",
        ) from None


def load_pretrained_parts(
    settings: Settings, runtime: Runtime | None = None
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """LlavaNext from a pretrained SigLIP tower (`model.vision_model_id`) and a Llama-family
    LM (`model.language_model_id`), each a hub id or a local `save_pretrained` folder.

    The connector and `image_newline` are freshly initialised (stage `align` trains them).
    The LM's tokenizer gains `<image>` (and `<pad>` if it has none), embeddings resized.
    """
    m = settings.model
    if not (m.vision_model_id and m.language_model_id):
        raise ConfigError("model.init=pretrained needs vision_model_id and language_model_id")
    rt = runtime or detect_runtime()

    vision_config = _from_pretrained(AutoConfig, m.vision_model_id, "vision model config")
    vision_config = getattr(vision_config, "vision_config", vision_config)  # full SigLIP
    if (vision_config.image_size, vision_config.patch_size) != (
        m.vision.image_size, m.vision.patch_size
    ):
        raise ConfigError(
            f"{m.vision_model_id} uses {vision_config.image_size}px tiles of "
            f"{vision_config.patch_size}px patches but params.yaml says model.vision "
            f"image_size={m.vision.image_size}, patch_size={m.vision.patch_size}",
            "make params.yaml match the checkpoint",
        )
    text_config = _from_pretrained(AutoConfig, m.language_model_id, "language model config")
    text_config = getattr(text_config, "text_config", text_config)
    check_stated_shapes(settings, vision_config, text_config)
    check_max_length(settings, text_config.max_position_embeddings,
                     f"{m.language_model_id} config")
    vision = _from_pretrained(
        AutoModel, m.vision_model_id, "vision tower", config=vision_config, dtype=rt.dtype
    )
    lm = _from_pretrained(
        AutoModelForCausalLM, m.language_model_id, "language model", dtype=rt.dtype,
        attn_implementation=rt.attn_implementation,
    )
    tokenizer = _from_pretrained(AutoTokenizer, m.language_model_id, "tokenizer")
    if getattr(tokenizer, "image_token", None) is None:
        # a named special token (`tokenizer.image_token`) can only be declared at load time
        tokenizer = _from_pretrained(AutoTokenizer, m.language_model_id, "tokenizer",
                                     extra_special_tokens={"image_token": IMAGE})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = m.max_length

    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    config = _llava_config(settings, vision.config, lm.config, image_token_id)
    config.pad_token_id = tokenizer.pad_token_id
    config._attn_implementation = rt.attn_implementation
    torch.manual_seed(settings.seed)
    with torch.device("meta"):  # the towers are replaced below: don't allocate them twice
        model = LlavaNextForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    model.model.multi_modal_projector.to_empty(device="cpu")
    model.model.image_newline = torch.nn.Parameter(
        torch.randn(lm.config.hidden_size) / lm.config.hidden_size**0.5
    )
    model.model.multi_modal_projector.apply(model._init_weights)
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer) or rows % VOCAB_MULTIPLE:
        # rows past the tokenizer are never a label (ids come from the tokenizer); a
        # multiple of 64 keeps the embedding and lm_head matmuls on tensor-core tiles
        model.resize_token_embeddings(max(rows, len(tokenizer)),
                                      pad_to_multiple_of=VOCAB_MULTIPLE)
    model.config.text_config.vocab_size = model.get_input_embeddings().num_embeddings
    _set_generation_defaults(model, tokenizer)
    processor = make_processor(tokenizer, settings, patch_size=vision_config.patch_size)
    return model.to(device=rt.device, dtype=rt.dtype), processor


CHAT_FORMAT_FILE = "chat_format.json"


def save_chat_format(processor, directory: Path, system_prompt: str | None) -> None:
    """Record the system prompt the model is trained with beside its processor (read back
    by `load_model` into `processor.system_prompt`); nothing is written without one."""
    processor.system_prompt = system_prompt
    path = Path(directory) / CHAT_FORMAT_FILE
    if system_prompt:
        path.write_text(json.dumps({"system_prompt": system_prompt}, ensure_ascii=False))
    elif path.exists():
        path.unlink()


def save_model(model, processor, directory: Path) -> Path:
    """`save_pretrained` model + processor into `directory` (created), with the system
    prompt the processor carries (`save_chat_format`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    save_chat_format(processor, directory, getattr(processor, "system_prompt", None))
    return directory


def load_model(directory: Path | str, runtime: Runtime | None = None,
               dtype: torch.dtype | None = None):
    """`(model, processor)` from a `save_model` folder, in eval mode on the runtime device,
    in `dtype` (default: the runtime's; training passes float32 for its master weights)."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise MissingInputError(f"no saved model in {directory} (config.json missing)")
    rt = runtime or detect_runtime()
    model = AutoModelForImageTextToText.from_pretrained(
        directory, dtype=dtype or rt.dtype, attn_implementation=rt.attn_implementation
    )
    processor = AutoProcessor.from_pretrained(directory)
    chat_format = directory / CHAT_FORMAT_FILE
    processor.system_prompt = json.loads(chat_format.read_text()).get("system_prompt") \
        if chat_format.exists() else None
    model.to(rt.device).eval()
    return model, processor


def set_text_attention(model, implementation: str) -> str:
    """Switch the language model's attention to `implementation` (`model.attn_implementation`;
    "auto" keeps what the runtime chose: flash_attention_2 on a bf16 GPU with flash-attn,
    else sdpa) and return the one it runs. One transformers cannot run here (flash-attn
    not installed, an unknown name) is a `ConfigError` naming the setting."""
    if implementation != "auto":
        try:
            model.set_attn_implementation({"text_config": implementation})
        except (ImportError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model.attn_implementation={implementation!r} cannot run "
                              f"here: {first}", "use auto, sdpa or eager on this machine "
                              "(flash_attention_2 needs a CUDA GPU with flash-attn)") from None
    text = getattr(model.config, "text_config", model.config)
    return str(text._attn_implementation)


def _processor_tokens(processor, width: int, height: int) -> tuple[int, int]:
    """(`<image>` tokens, tiles) the processor emits for one blank `width`x`height` image."""
    image = Image.new("RGB", (width, height), (127, 127, 127))
    batch = processor(images=image, text=processor.image_token, return_tensors="pt")
    n_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    return n_tokens, int(batch["pixel_values"].shape[1])


def check_image_token_agreement(
    processor, model, image_sizes: Iterable[tuple[int, int]] = PROBE_SIZES
) -> int:
    """Raise `ImageTokenMismatchError` unless, for every `(width, height)` in `image_sizes`,
    the processor's `<image>` token count equals the number of features the model packs.

    The model side runs the model's own `pack_image_features` on zero features of the
    shapes its vision tower produces (checked once with a real forward), so thousands of
    sizes cost milliseconds. Returns the number of sizes checked.
    """
    cfg = model.config
    vc = cfg.vision_config
    ip = processor.image_processor
    problems = []
    pins = [list(p) for p in ip.image_grid_pinpoints]
    if pins != [list(p) for p in cfg.image_grid_pinpoints]:
        problems.append(f"image_grid_pinpoints {pins} vs model {cfg.image_grid_pinpoints}")
    if processor.patch_size != vc.patch_size:
        problems.append(f"patch_size {processor.patch_size} vs model {vc.patch_size}")
    side = (ip.size.get("height"), ip.size.get("width")) if isinstance(ip.size, dict) else (
        ip.size.height, ip.size.width)
    if side != (vc.image_size, vc.image_size):
        problems.append(f"tile size {side} vs model {vc.image_size}")
    if processor.vision_feature_select_strategy != cfg.vision_feature_select_strategy:
        problems.append(f"vision_feature_select_strategy {processor.vision_feature_select_strategy}"
                        f" vs model {cfg.vision_feature_select_strategy}")
    if processor.image_token_id != cfg.image_token_id:
        problems.append(f"image token id {processor.image_token_id} vs model {cfg.image_token_id}")
    if problems:
        raise ImageTokenMismatchError(
            "processor and model disagree: " + "; ".join(problems),
            "rebuild the processor from the same settings as the model",
        )

    inner = model.model
    device = next(model.parameters()).device
    per_side = vc.image_size // vc.patch_size
    # one real forward through the vision tower: its patch count is what we assume below
    with torch.no_grad(), inference_autocast(model):
        tile = torch.zeros(1, 3, vc.image_size, vc.image_size, device=device,
                           dtype=next(inner.vision_tower.parameters()).dtype)
        hidden = inner.vision_tower(tile, output_hidden_states=True).hidden_states
    per_tile = hidden[cfg.vision_feature_layer].shape[1]
    if cfg.vision_feature_select_strategy == "default":
        per_tile -= 1
    if per_tile != per_side * per_side:
        raise ImageTokenMismatchError(
            f"the vision tower yields {per_tile} features per tile, not the {per_side}x{per_side} "
            "patch grid LlavaNext packs (a CLS token with strategy 'full'?)",
            "use vision_feature_select_strategy='default' only for towers with a CLS token",
        )
    n = 0
    for width, height in image_sizes:
        n_tokens, n_tiles = _processor_tokens(processor, width, height)
        model_tiles = image_size_to_num_patches(
            (height, width), cfg.image_grid_pinpoints, vc.image_size
        )
        if model_tiles != n_tiles:
            raise ImageTokenMismatchError(
                f"image {width}x{height}: the processor cuts {n_tiles} tiles, the model "
                f"expects {model_tiles}", "check image_grid_pinpoints and the tile size",
            )
        feats = [torch.zeros(n_tiles, per_tile, 1, device=device)]
        with torch.no_grad():
            _, lens = inner.pack_image_features(
                feats, torch.tensor([[height, width]], device=device),
                cfg.vision_feature_select_strategy, image_newline=torch.zeros(1, device=device),
            )
        n_feats = int(lens[0])
        if n_feats != n_tokens:
            raise ImageTokenMismatchError(
                f"image {width}x{height}: the processor emits {n_tokens} image tokens but the "
                f"model produces {n_feats} features ({n_tiles} tiles of {per_tile} patches); "
                "training would fail with 'Image features and image tokens do not match'",
                "check image_grid_pinpoints, patch_size, vision_feature_select_strategy and "
                "num_additional_image_tokens",
            )
        n += 1
    return n
