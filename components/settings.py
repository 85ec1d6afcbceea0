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
    """Record checks, image bounds, deduplication and the quarantine gate (issue #3)."""

    max_quarantine_ratio: float = Field(0.2, ge=0.0, le=1.0)
    min_image_side: int = Field(8, ge=1)
    max_image_side: int = Field(16384, ge=1, description="pixels; larger is image_too_large")
    # width x height, read from the header before any pixel is decoded: a larger image is
    # image_too_large without being loaded, so a decompression bomb costs no memory (8000 x
    # 8000 photos pass: the processor's tile budget resizes them)
    max_image_pixels: int = Field(100_000_000, ge=1)
    max_aspect_ratio: float = Field(20.0, ge=1.0)
    max_text_chars: int = Field(2000, ge=1)
    # Language: records declared pt* must read as Portuguese (py3langid, restricted to
    # `language_candidates` so that Galician does not win on short pt-PT sentences).
    language_check: bool = True
    language_min_chars: int = Field(24, ge=1, description="letters needed to judge a text")
    language_min_pt_prob: float = Field(
        0.2, ge=0.0, le=1.0,
        description="quarantine when P(pt) over the candidates is lower (short pt-PT "
                    "sentences can score 0.35 with Spanish first; Spanish scores ~0)")
    language_candidates: list[str] = ["pt", "en", "es", "fr", "it", "de", "ca", "nl", "ro"]
    # Near-duplicates of evaluation images (64-bit pHash, Hamming distance). The evaluation
    # set is every `split: test` image of the inputs plus `eval_images` (folders, files or
    # s3:// prefixes of benchmark images). null disables the check.
    near_dup_max_distance: int | None = Field(4, ge=0, le=64)
    eval_images: list[str] = []
    # Sources whose own train/test images are drawn pixel-distinct from shared templates
    # (the synthetic embedded data): among them only exact duplicates count, since their
    # perceptual hashes are close by design.
    exact_only_sources: list[str] = ["native", "seed_en"]
    # Kept records in these languages also go to `seed_en.jsonl`, the translate stage's queue,
    # and mix takes their translations instead of them.
    translate_languages: list[str] = ["en"]
    # Streaming and parallelism: records per worker task, worker processes (0 = in this
    # process; the pool starts only once a second chunk exists), start method.
    chunk_size: int = Field(256, ge=1)
    workers: int = Field(2, ge=0)
    # auto: fork in a single-threaded process (the CLI, DVC), else forkserver (a clean,
    # preloaded server: safe beside the threads of Prefect, MLflow or a test server)
    start_method: Literal["auto", "fork", "forkserver", "spawn"] = "auto"
    embed_images: bool = Field(True, description="kept image bytes go into validated/ shards")
    shard_rows: int = Field(50_000, ge=1)
    shard_bytes: int = Field(512 << 20, ge=1 << 20)
    gx_batch_rows: int = Field(20_000, ge=1, description="kept rows per GX validation batch "
                               "and kind (~1 KB of memory each)")
    # scale-out (flows/validate.py only; the stage itself is one process with `workers`):
    # contiguous shards of the input mapped over Prefect tasks on Prefect's thread pool, or on
    # a local Dask cluster of `dask_workers` processes (prefect-dask)
    shards: int = Field(1, ge=1)
    task_runner: Literal["thread", "dask"] = "thread"
    dask_workers: int = Field(2, ge=1)


class IngestSettings(_Section):
    """Inputs of `validate` beyond the embedded data (`amalia-vl stage validate --input`).

    Each input is `[FORMAT:]LOCATION[?key=value&...]`: LOCATION a local path, an `s3://` URI
    or `hf://<hub id or local path>`; FORMAT one of `jsonl`, `llava`, `hf`, `parquet`,
    `arrow`, `images` (auto-detected when left out); keys `source`, `language`, `split`,
    `task_family`, `image_root`, `box_format` (`xyxy` | `xywh` | `xyxy_norm`) fill what the
    rows lack. Empty = the embedded `data_dir/native` and `data_dir/seed_en`.
    """

    inputs: list[str] = []
    hf_split: str = "train"
    s3_endpoint_url: str | None = None  # else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL


class TranslateSettings(_Section):
    """EN -> pt-PT translation (components/translation): backend, cache, quality filter."""

    backend: Literal["memory", "hf_seq2seq", "hf_llm"] = "memory"
    memory_path: str = "seed_en/translation_memory.jsonl"  # relative to data_dir
    model_id: str | None = None
    source_lang: str = "en"
    target_lang: str = "pt-PT"
    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.5
    # backends
    prompt_template: str | None = Field(
        None, description="hf_llm prompt with {text} (and optional {source_name}); "
                          "null = the built-in pt-PT prompt")
    batch_records: int = Field(256, ge=1, description="records per batch (cache commit unit)")
    batch_size: int = Field(16, ge=1, description="texts per generate() call")
    max_new_tokens: int = Field(256, ge=1)
    max_source_tokens: int = Field(512, ge=8, description="seq2seq input truncation")
    protect_structure: bool = True  # mask <image>, numbers, option letters, code, boxes
    decimal_comma: bool = True  # restore protected 12.40 as 12,40
    # cache (relative to the working directory; null disables it)
    cache_dir: str | None = ".cache/translation"
    seed_cache_from_memory: bool = True  # model backends reuse the memory's pairs
    # quality filter
    copy_min_words: int = Field(2, ge=1)
    language_check: bool = True
    langid_min_chars: int = Field(20, ge=1)
    langid_min_prob: float = Field(0.05, ge=0.0, le=1.0)
    variety_check: bool = True
    variety_detector: str = "cues"
    normalise_br: bool = False
    max_quarantine_ratio: float | None = Field(None, ge=0.0, le=1.0,
                                               description="null = validate's")
    # scale-out (flows/translate.py only; the stage itself is single-process)
    shards: int = Field(1, ge=1)
    task_runner: Literal["thread", "dask"] = "thread"  # as validate.task_runner
    dask_workers: int = Field(2, ge=1)


class MixSettings(_Section):
    """Per training stage, a sampling weight per source and per task family.

    `align` / `sft` / `dpo` map a source to a weight: the exact source name, else its family
    (`seed` for `seed_*`), else `"*"`. `task_weights[stage]` multiplies by a weight per task
    family (unlisted families: 1.0). `kinds[stage]` says which record kinds feed each stage.
    """

    align: dict[str, float] = Field(default_factory=lambda: {"native": 1.0, "seed": 1.0})
    sft: dict[str, float] = Field(default_factory=lambda: {"native": 1.0, "seed": 1.0})
    dpo: dict[str, float] = Field(default_factory=lambda: {"native": 1.0, "seed": 1.0})
    task_weights: dict[str, dict[str, float]] = Field(default_factory=dict)
    kinds: dict[str, list[str]] = Field(default_factory=lambda: {
        "align": ["caption"],
        "sft": ["qa", "multiple_choice", "conversation", "grounding"],
        "dpo": ["preference"],
    })
    eval_sources: list[str] = ["native"]
    shard_rows: int = Field(50_000, ge=1)


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
    # pretrained: the LM's vocabulary before `<image>` is added (the planner's logits and
    # embeddings; load_pretrained_parts checks it). build_tiny: reserved embedding rows.
    vocab_size: int | None = Field(None, ge=1, description="pretrained: the LM's vocabulary "
                                   "size (checked at load); build_tiny: embedding rows to "
                                   "reserve beyond the tokenizer's (a pretrained-sized "
                                   "vocabulary for benchmarks); null = the tokenizer's")
    tie_word_embeddings: bool = Field(False, description="lm_head shares the embedding")


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
    vision_feature_layer: int = Field(-1, description="vision tower layer fed to the "
                                      "connector (LLaVA-NeXT: -2, the penultimate)")
    attn_implementation: str = Field(
        "auto", description="language-model attention for training: auto (flash_attention_2 "
        "on a bf16 GPU with flash-attn, else sdpa), sdpa, eager, flash_attention_2, "
        "flash_attention_3, or any name transformers' AttentionInterface knows")

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
    """One training stage (align, sft or dpo): schedule, batch and trainable parts.

    `global_batch_size` is what the recipe means by "batch": samples (DPO: pairs) per
    optimizer step over all processes. It resolves to `per_device_batch_size` x gradient
    accumulation x world size (`components.train.batching.resolve_batch`); null
    `per_device_batch_size` puts the whole global batch on each device's share (no
    accumulation). Under `train.packing` it keeps its meaning: the plan turns it into
    packed rows per step (measured samples per row) and `per_device_batch_size` must be
    null (micro-batches are bounded by `train.micro_batch_tokens`). `learning_rate` is the
    peak rate of the connector; each trainable part trains at
    `learning_rate x lr_multipliers[part]` (the table beside `freeze.PARTS`).
    """

    epochs: int = Field(1, ge=0)
    global_batch_size: int = Field(8, ge=1, description="samples (dpo: pairs) per optimizer "
                                   "step, all processes together")
    per_device_batch_size: int | None = Field(None, ge=1, description="micro-batch per "
                                              "process; null = global / world size")
    learning_rate: float = Field(1e-3, gt=0)
    lr_multipliers: dict[TrainablePart, float] = Field(
        default_factory=lambda: {"connector": 1.0, "language_model": 1.0, "vision_tower": 0.1},
        description="per-part factor on learning_rate (LLaVA-NeXT trains the tower ~10x lower)")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="linear warm-up share")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor / peak")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 = no clipping")
    trainable: list[TrainablePart] = ["connector"]
    beta: float = Field(0.1, gt=0, description="DPO temperature (dpo stage only)")
    rpo_alpha: float = Field(0.0, ge=0, description="dpo only: weight of the chosen-answer NLL "
                             "added to the DPO loss (RPO); 0 = pure DPO")
    precompute_ref_log_probs: bool = Field(
        False, description="dpo only: score the reference once before training (the policy "
        "at step 0) instead of keeping a frozen copy in memory")


class EngineSettings(_Section):
    """How every training stage runs (`train:` in params.yaml): the transformers `Trainer`
    with a distributed strategy, precision, checkpoints, budgets and logging.

    - `precision`: `auto` (bf16 on a bf16 GPU, else fp32), `fp32`, `bf16` (autocast with
      fp32 master weights and optimizer state: never pure-bf16 AdamW), `fp16` (GPU only,
      loss scaling).
    - `strategy`: `ddp` (torch DDP; gloo on CPU, NCCL on GPU), `zero2` / `zero3` (DeepSpeed
      ZeRO, config generated into the stage folder), `fsdp` (torch FSDP full shard).
      DeepSpeed and FSDP need CUDA: on CPU they fall back to DDP, and the log says so.
    - `deepspeed_config`: a DeepSpeed JSON of your own instead of the generated one
      (checked against the resolved batch sizes).
    - `save_steps` / `save_total_limit`: checkpoints in `<run>/<stage>/checkpoints/`; a
      re-run of the stage resumes from the newest one (`--restart` discards them).
    - `max_tiles` / `model.max_length`: per-sample budgets; images are scaled down to fit,
      and a sample that still cannot fit is skipped (`skipped.jsonl`), never a crash;
      more than `max_skip_ratio` skipped fails the stage.
    - `packing`: rows of several whole samples (first-fit decreasing over the length
      index), isolated by a block-diagonal mask (sdpa / eager) or flash-attn varlen
      (`cu_seqlens`). The stages' `global_batch_size` still means samples (pairs) per
      step: the plan turns it into packed rows per step from the measured samples per
      row, micro-batches bounded by `micro_batch_tokens` (`components.train.batching`).
      Refused for an attention implementation that cannot isolate samples
      (`model.attn_implementation`).
    """

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    strategy: Literal["ddp", "zero2", "zero3", "fsdp"] = "ddp"
    deepspeed_config: str | None = None
    gradient_checkpointing: bool = False
    save_steps: int = Field(200, ge=1, description="optimizer steps between checkpoints")
    save_total_limit: int = Field(2, ge=1)
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ after a stage "
                                   "finishes (they hold optimizer state: large)")
    logging_steps: int = Field(10, ge=1, description="optimizer steps between MLflow metrics")
    dataloader_workers: int = Field(0, ge=0, description="processes decoding and tiling "
                                    "images (0 = in the training process)")
    max_tiles: int | None = Field(None, ge=1, description="anyres tiles per sample, all its "
                                  "images together; null = no limit")
    max_skip_ratio: float = Field(0.05, ge=0.0, le=1.0, description="fail the stage when a "
                                  "larger share of samples cannot fit the budgets")
    system_prompt: str | None = Field(None, description="system turn added to every sample "
                                      "(and to generation prompts)")
    ddp_timeout_s: int = Field(1800, ge=1, description="seconds a rank may wait for the "
                               "others at a collective (gloo and NCCL) before the launch "
                               "fails; must exceed what one rank does alone (checkpoint "
                               "save, planning, evaluation on rank 0)")
    packing: bool = Field(False, description="several samples per row up to model.max_length, "
                          "each attending only to itself (components/train/packing.py); "
                          "global_batch_size still counts samples (pairs); the plan turns "
                          "it into rows (components/train/batching.py)")
    packed_batch_tolerance: float | None = Field(
        0.25, ge=0, description="packing: refuse a plan whose samples (pairs) per step miss "
        "the stage's global_batch_size by more than this share (whole packed rows per GPU "
        "quantise the batch); null = never refuse")
    micro_batch_tokens: int | None = Field(
        None, ge=1, description="packing only: tokens per micro-batch per device (whole packed "
        "rows of model.max_length: rows = max(1, this // max_length)); null = one packed row")
    loss_chunk_tokens: int = Field(4096, ge=0, description="the LM loss and DPO log-probs "
                                   "project hidden states onto the vocabulary this many "
                                   "positions at a time, each chunk recomputed in backward "
                                   "(components/train/loss.py): never the whole tokens x "
                                   "vocabulary logits; 0 = the plain, unchunked loss")


class PlanStageSettings(_Section):
    """What `amalia-vl plan` assumes of one training stage's data and cluster (a run's
    measured length index replaces `tokens_per_sample` / `samples_per_row` when present)."""

    samples: int = Field(1000, ge=1, description="samples (dpo: pairs) per epoch")
    tokens_per_sample: float = Field(128.0, gt=0, description="mean LM tokens per sample, "
                                     "image tokens included (dpo: chosen + rejected)")
    tiles_per_sample: float = Field(1.0, ge=0, description="mean anyres tiles per sample "
                                    "(dpo: of chosen + rejected)")
    gpus: int = Field(1, ge=1, description="GPUs (processes) the stage runs on")
    gpu: str | None = Field(None, description="GPU type (components/plan/gpus.py keys, e.g. "
                            "H100-SXM); null = this machine (CPU: host RAM, no MFU)")
    mfu: float = Field(0.35, gt=0, le=1, description="model FLOPs utilisation assumed for "
                       "hours")


class PlanSettings(_Section):
    """Pre-flight planning (`amalia-vl plan`, components/plan): dataset sizes, cluster,
    MFU and price per stage, and the constants of the memory model."""

    align: PlanStageSettings = PlanStageSettings()
    sft: PlanStageSettings = PlanStageSettings()
    dpo: PlanStageSettings = PlanStageSettings()
    price_per_gpu_hour: float = Field(2.5, ge=0, description="USD per GPU-hour")
    overhead_gib: float = Field(3.0, ge=0, description="per GPU: CUDA context, NCCL buffers, "
                                "allocator fragmentation (0 on CPU)")
    pack_fill: float = Field(0.95, gt=0, le=1, description="packed rows' mean fill, when no "
                             "length index says samples per row")
    index_seconds_per_sample: float = Field(0.003, gt=0, description="length-index cost per "
                                            "sample per core (bench/length_index.py)")
    index_cores: int = Field(16, ge=1, description="cores of the node building the index")
    preflight: bool = Field(True, description="run the plan before every training stage and "
                            "at retrain start; a recipe that cannot fit fails in seconds")


class EvaluateSettings(_Section):
    """The evaluation suite (issue #5): which task YAMLs run, where their data is, budgets.

    `tasks` names tasks or groups of `components/evaltasks/tasks/` (and of `task_dirs`);
    default: the five embedded held-out families. `datasets` overrides a task's dataset
    location (hub id, local parquet/JSON file or folder, `s3://` URI). A task whose dataset
    cannot be reached is reported as skipped, with the reason, not an error.
    """

    max_new_tokens: int = Field(8, ge=1, description="`ask`, and tasks that set none")
    batch_size: int = Field(32, ge=1)
    tasks: list[str] = ["count", "colour", "position", "chart", "document"]
    task_dirs: list[str] = []
    datasets: dict[str, str] = {}
    limit: int | None = Field(None, ge=1, description="samples per task (smoke runs)")
    max_new_tokens_cap: int | None = Field(None, ge=1, description="caps every task's budget")
    champion_alias: str | None = Field("champion", description="null: no champion comparison")
    dialect_detector: str = "cues"
    keep_cache: bool = Field(False, description="keep decoded images and S3 downloads "
                                                "(evaluate/_cache/) after the stage")


class GateSettings(_Section):
    """When `amalia-vl promote` may move `champion` to the challenger (issue #10).

    Judged by a paired bootstrap over the per-sample scores both versions logged at
    registration, matched by (task, id): items are resampled with replacement within each
    task, `resamples` times, seeded by `seed`. Differences are in units of each task's
    scale (1 = the best possible score), averaged over tasks like `mean_score`. Promote
    only when the lower end of the `confidence` interval of the mean difference (challenger
    - champion) is above `margin`, and, for every gated task, the lower end of its own
    interval is at least `-max_task_drop`.
    """

    tasks: list[str] = Field([], description="gated tasks; empty: every task both versions "
                             "were evaluated on")
    margin: float = Field(0.0, ge=0.0, description="the mean improvement's CI must clear it")
    max_task_drop: float = Field(0.05, ge=0.0, le=1.0, description="no task's CI may reach "
                                 "below -max_task_drop")
    resamples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = 0


class RegisterSettings(_Section):
    model_name: str = "amalia-vl"
    alias: str = "challenger"
    champion_alias: str = "champion"
    gate: GateSettings = GateSettings()


class TrackingSettings(_Section):
    experiment: str = "amalia-vl"


class OrchestrationSettings(_Section):
    """Where the retrain flow runs its stages (`orchestration:` in params.yaml).

    - `training_deployment`: a Prefect deployment name, `{stage}` filled in (e.g.
      `amalia-vl-stage/{stage}-gpu`): align, sft and dpo then run as flow runs of that
      deployment, on its work pool (the GPU pool), instead of in the flow's process; null =
      every stage in the flow's process (the default, and what runs locally).
    - `run_store`: `s3://bucket/prefix` through which stage outputs travel between the flow
      and those workers (content-addressed, `components.run_store`); required with a
      `training_deployment` (no shared disk is assumed).
    - `s3_endpoint_url`: for MinIO / a moto server (else AWS_ENDPOINT_URL_S3).
    - `stage_timeout_s`: how long the flow waits for one dispatched stage.
    """

    training_deployment: str | None = None
    run_store: str | None = None
    s3_endpoint_url: str | None = None
    stage_timeout_s: int = Field(7 * 24 * 3600, ge=60)

    def model_post_init(self, _ctx: Any) -> None:
        if self.training_deployment and not self.run_store:
            raise ValueError("orchestration.training_deployment needs orchestration.run_store "
                             "(s3://bucket/prefix): stage outputs travel through it")
        if self.run_store and not self.run_store.startswith("s3://"):
            raise ValueError(f"orchestration.run_store must be an s3:// URI, not "
                             f"{self.run_store!r}")


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
    ingest: IngestSettings = IngestSettings()
    translate: TranslateSettings = TranslateSettings()
    mix: MixSettings = MixSettings()
    model: ModelSettings = ModelSettings()
    train_: EngineSettings = Field(EngineSettings(), alias="train")
    align: TrainSettings = TrainSettings(trainable=["connector"])
    sft: TrainSettings = TrainSettings(trainable=["connector", "language_model"])
    dpo: TrainSettings = TrainSettings(trainable=["connector", "language_model"])
    evaluate: EvaluateSettings = EvaluateSettings()
    register_: RegisterSettings = Field(RegisterSettings(), alias="register")
    tracking: TrackingSettings = TrackingSettings()
    synthetic: SyntheticSettings = SyntheticSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    plan: PlanSettings = PlanSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def stage_train(self, stage: str) -> TrainSettings:
        """Training settings of `align`, `sft` or `dpo`."""
        return getattr(self, stage)

    @property
    def engine(self) -> EngineSettings:
        """The `train:` section: how every training stage runs."""
        return self.train_

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


TOP_LEVEL_KEYS = ("profile", "base", "profiles")


class _Located:
    """Line numbers of the keys of a parsed YAML document (1-based), by key path."""

    def __init__(self, node: yaml.Node | None):
        self.root = node

    def line(self, path: tuple[Any, ...]) -> int | None:
        node, line = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        node, line = value, key.start_mark.line + 1
                        break
                else:
                    return None
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                    and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return None
        return line


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def _dotted(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts)


def _suggest(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_params(path: Path) -> tuple[dict[str, Any], _Located]:
    """The params file as a mapping, and where its keys are. A YAML syntax error, a
    duplicate key or a document that is not a mapping is a one-line `ConfigError` naming
    the file and line."""
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        started = (f" ({context} started at line {start.line + 1})"
                   if context and start and mark and start.line != mark.line else "")
        raise ConfigError(f"{where}: YAML syntax error: {problem}{started}") from None
    located = _Located(node)
    _refuse_duplicate_keys(path, node, ())
    if raw is None:
        return {}, located
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, "
                          f"not a {type(raw).__name__}")
    return raw, located


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, at: tuple[str, ...]) -> None:
    """YAML keeps the last of two equal keys silently; here that is an error."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None:
                line = key.start_mark.line + 1
                if name in seen:
                    raise ConfigError(f"{path}:{line}: duplicate key '{_dotted((*at, name))}' "
                                      f"(first at line {seen[name]})")
                seen[name] = line
            _refuse_duplicate_keys(path, value, (*at, str(name)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(path, item, (*at, str(i)))


def _field_names(model: type[BaseModel]) -> dict[str, Any]:
    """The keys params.yaml may use for `model`'s fields (aliases, and names where
    `populate_by_name`), each to its annotation."""
    out: dict[str, Any] = {}
    by_name = model.model_config.get("populate_by_name", False)
    for name, info in model.model_fields.items():
        if info.alias:
            out[info.alias] = info.annotation
        if by_name or not info.alias:
            out[name] = info.annotation
    return out


def _unknown_keys(section: Any, model: type[BaseModel],
                  at: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    """The first key of `section` that `model` has no field for: (its path, a did-you-mean
    suggestion or ''). Free-form mappings (`mix.align`, `evaluate.datasets`) are not
    descended into."""
    if not isinstance(section, dict):
        return None
    fields = _field_names(model)
    for key, value in section.items():
        if str(key) not in fields:
            return (*at, str(key)), _suggest(str(key), list(fields))
        sub = fields[str(key)]
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found = _unknown_keys(value, sub, (*at, str(key)))
            if found:
                return found
    return None


def _check_structure(path: Path, raw: dict[str, Any], located: _Located) -> None:
    """Refuse unknown top-level keys, non-mapping sections and unknown setting keys in
    `base` and in every profile (not just the chosen one: a typo in a profile nobody runs
    today must not wait for the day someone does)."""
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{_where(path, located.line((key,)))}: unknown top-level key "
                              f"'{key}'{_suggest(str(key), list(TOP_LEVEL_KEYS))} (the file "
                              f"holds {', '.join(TOP_LEVEL_KEYS)})")
    sections: list[tuple[tuple[str, ...], Any]] = [(("base",), raw.get("base"))]
    profiles = raw.get("profiles")
    if profiles is not None and not isinstance(profiles, dict):
        raise ConfigError(f"{_where(path, located.line(('profiles',)))}: 'profiles' must map "
                          f"profile names to settings, not be a {type(profiles).__name__}")
    sections += [(("profiles", str(name)), body) for name, body in (profiles or {}).items()]
    for at, body in sections:
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{_where(path, located.line(at))}: '{_dotted(at)}' must be a "
                              f"mapping of settings, not a {type(body).__name__}")
        found = _unknown_keys(body or {}, Settings, at)
        if found:
            key_path, hint = found
            raise ConfigError(f"{_where(path, located.line(key_path))}: unknown key "
                              f"'{_dotted(key_path)}'{hint}")


def _value_error(path: Path, located: _Located, chosen: str, raw: dict[str, Any],
                 exc: ValidationError) -> ConfigError:
    """One line for the first validation error: file and line of the value (the chosen
    profile's, else base's), the key, pydantic's reason and the offending value."""
    from components.redact import is_secret_name, redact

    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    where = _dotted(loc) or "(top level)"
    line = None
    if loc:
        profile_body = (raw.get("profiles") or {}).get(chosen) or {}
        node_path = ("profiles", chosen, *loc) if _has_path(profile_body, loc) else \
            ("base", *loc)
        line = located.line(node_path)
    value = first.get("input")
    shown = ""
    if isinstance(value, str | int | float | bool) and loc and first["type"] != "missing":
        text = "***" if is_secret_name(str(loc[-1])) else redact(repr(value))
        shown = f" (got {text[:60]})" if len(text) <= 60 else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{_where(path, line)}: invalid value for '{where}' (profile {chosen}): "
                       f"{msg}{shown}{more}")


def _has_path(body: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(body, dict) and part in body:
            body = body[part]
        elif isinstance(body, list) and isinstance(part, int) and 0 <= part < len(body):
            body = body[part]
        else:
            return False
    return True


def load_settings(
    profile: str | None = None,
    params_path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read `params.yaml`, pick the profile and validate.

    Raises `MissingInputError` if the file is missing and a one-line `ConfigError` naming
    the file (and line) on a YAML syntax error, a duplicate or unknown key (in `base` or any
    profile, with a did-you-mean), an unknown profile or an invalid value (naming the key).
    """
    path = Path(params_path) if params_path else default_params_path()
    if not path.exists():
        raise MissingInputError(f"config file {path} not found", "run from the repository root")
    raw, located = _parse_params(path)
    _check_structure(path, raw, located)
    chosen = profile or os.environ.get("AMALIA_PROFILE") or raw.get("profile", "tiny")
    profiles = raw.get("profiles") or {}
    if not isinstance(chosen, str) or chosen not in profiles:
        raise ConfigError(
            f"unknown profile '{chosen}' in {path}{_suggest(str(chosen), list(profiles))}",
            f"choose one of: {', '.join(profiles)}"
        )
    merged = _deep_merge(raw.get("base") or {}, profiles[chosen] or {})
    merged = _deep_merge(merged, overrides or {})
    merged["profile"] = chosen
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise _value_error(path, located, chosen, raw, exc) from None
