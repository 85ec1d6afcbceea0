"""The pre-flight planner (components/plan, `amalia-vl plan`) and the model checks it
relies on (issue #18, part A): JSON shape, refusals naming stage/part/setting, ZeRO
arithmetic against DeepSpeed's own estimators, frozen parts without optimizer state,
chunked logits, FLOPs against torch's FlopCounterMode, exact GPU peaks, max_length and
the vocabulary padded to 64, and the pre-flight at retrain start before validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from amalia_vl.cli import app
from components.errors import ConfigError
from components.plan import gpus
from components.plan.flops import sample_flops
from components.plan.memory import model_states_bytes, plan_memory
from components.plan.preflight import plan_stage, planned_target
from components.plan.shapes import ModelShapes, TextShape, VisionShape
from components.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
STAGE_KEYS = {"peak_gib", "parts_gib", "tokens_per_step", "samples_per_step", "rows_per_step",
              "steps_per_epoch", "hours", "gpu_hours", "cost", "fits"}
PARTS = {"weights", "gradients", "optimizer", "activations", "logits", "vision", "overhead"}


def _params_with(tmp_path: Path, profile: str, patch: dict) -> Path:
    """A copy of params.yaml whose `profile` section has `patch` deep-merged in."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    body = raw["profiles"].setdefault(profile, {}) or {}
    raw["profiles"][profile] = body

    def merge(into: dict, over: dict) -> None:
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    merge(body, patch)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _json(output: str) -> dict:
    return json.loads(output[output.index("{"):])


# ----------------------------------------------------------------------------- CLI


def test_plan_json_has_the_agreed_shape():
    result = CliRunner().invoke(app, ["plan", "--profile", "paper", "--json"])
    assert result.exit_code == 0, result.output
    out = _json(result.stdout)
    assert set(out) == {"gpus", "gpu", "stages"}
    assert set(out["stages"]) == {"align", "sft", "dpo"}
    for stage in out["stages"].values():
        assert set(stage) == STAGE_KEYS
        assert set(stage["parts_gib"]) == PARTS
        parts = stage["parts_gib"]
        # states + overhead + the larger of the forward's tensors and the gradients
        live = max(parts["activations"] + parts["logits"] + parts["vision"],
                   parts["gradients"])
        assert stage["peak_gib"] == pytest.approx(
            parts["weights"] + parts["optimizer"] + parts["overhead"] + live, abs=0.01)
        assert stage["fits"] is True and stage["hours"] > 0
    # packing: rows per step come from samples per row, samples keep the recipe's meaning
    assert out["stages"]["align"]["rows_per_step"] < out["stages"]["align"]["samples_per_step"]


def test_flags_override_the_cluster():
    result = CliRunner().invoke(app, ["plan", "--profile", "paper", "--json", "--gpus", "16",
                                      "--gpu", "H100-PCIe"])
    assert result.exit_code == 0, result.output
    out = _json(result.stdout)
    assert (out["gpus"], out["gpu"]) == (16, "H100-PCIe")
    base = _json(CliRunner().invoke(app, ["plan", "--profile", "paper", "--json", "--gpus",
                                          "16", "--gpu", "H100-SXM"]).stdout)
    # same FLOPs at the PCIe card's lower peak: hours scale by 989/756
    ratio = out["stages"]["sft"]["hours"] / base["stages"]["sft"]["hours"]
    assert ratio == pytest.approx(989 / 756, rel=1e-3)


def test_a_recipe_that_cannot_fit_exits_1_naming_stage_part_and_setting(tmp_path):
    # the paper recipe without gradient checkpointing: the LM keeps every layer's
    # activations of a 16k-token row (~80 GiB), more than an H100 holds
    params = _params_with(tmp_path, "paper", {"train": {"gradient_checkpointing": False}})
    result = CliRunner().invoke(app, ["plan", "--profile", "paper"],
                                env={"AMALIA_PARAMS": str(params), "COLUMNS": "200"})
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert "align cannot fit" in line and "largest part activations" in line
    assert "train.gradient_checkpointing" in line
    assert "Traceback" not in result.output


def test_a_timeout_below_the_index_time_is_refused(tmp_path):
    params = _params_with(tmp_path, "paper", {"train": {"ddp_timeout_s": 600}})
    result = CliRunner().invoke(app, ["plan", "--profile", "paper"],
                                env={"AMALIA_PARAMS": str(params), "COLUMNS": "200"})
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    # 5M sft samples x 3 ms / 16 cores = 938 s > 600 s
    assert "sft: train.ddp_timeout_s=600 is below the projected length-index time" in line


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("world", [1, 8, 128])
def test_zero_states_agree_with_deepspeed_estimators(world):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shapes = ModelShapes.from_settings(load_settings("paper"))
    total = sum(shapes.part_params().values())
    everything = ["vision_tower", "connector", "language_model"]
    z3 = model_states_bytes(shapes, everything, "zero3", world, "bf16")
    _, gpu3, _ = estimate_zero3_model_states_mem_needs(
        total, shapes.largest_layer_params, num_gpus_per_node=world, cpu_offload=False,
        cpu_offload_params=False)
    assert sum(z3.values()) == pytest.approx(gpu3, rel=1e-6)
    z2 = model_states_bytes(shapes, everything, "zero2", world, "bf16")
    _, gpu2 = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=world,
                                                    cpu_offload=False)
    assert sum(z2.values()) == pytest.approx(gpu2, rel=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3", "fsdp"])
def test_frozen_parts_have_no_gradients_or_optimizer_state(strategy):
    shapes = ModelShapes.from_settings(load_settings("paper"))
    align = model_states_bytes(shapes, ["connector"], strategy, 8, "bf16")
    sft = model_states_bytes(shapes, ["connector", "language_model"], strategy, 8, "bf16")
    per_param = {"ddp": 8, "zero2": 12 / 8, "zero3": 12 / 8, "fsdp": 8 / 8}[strategy]
    assert align["optimizer"] == pytest.approx(per_param * shapes.connector_params)
    assert sft["optimizer"] == pytest.approx(
        per_param * (shapes.connector_params + shapes.text.params))
    assert align["weights"] == sft["weights"] or strategy == "ddp"  # autocast cache of T


def test_chunked_logits_hold_one_chunk_only():
    shapes = ModelShapes.from_settings(load_settings("paper"))
    common = dict(trainable=["connector", "language_model"], strategy="zero3", world=8,
                  precision="bf16", micro_batch_tokens=16384, micro_batch_tiles=10,
                  checkpointing=True, overhead_gib=3.0)
    plain = plan_memory(shapes, loss_chunk_tokens=0, **common).parts_gib["logits"]
    chunked = plan_memory(shapes, loss_chunk_tokens=4096, **common).parts_gib["logits"]
    # bf16 logits + fp32 upcast + log-softmax + fp32 gradient: 14 bytes per logit
    assert plain == pytest.approx(16384 * shapes.text.vocab * 14 / 2**30)
    assert chunked == pytest.approx(plain * 4096 / 16384)
    huge = plan_memory(shapes, loss_chunk_tokens=1 << 20, **common).parts_gib["logits"]
    assert huge == pytest.approx(plain)


def test_checkpointing_is_reported_both_ways_and_counts_as_configured():
    settings = load_settings("paper")
    plan = plan_stage(settings, "sft", planned_target(settings, "sft"))
    acts = plan.memory.activations_gib
    assert acts["none"] > 5 * acts["checkpointing"]
    assert plan.memory.parts_gib["activations"] == acts["checkpointing"]


# ----------------------------------------------------------------------------- FLOPs


def _tiny_model_and_batch():
    """A tiny LlavaNext, its processor and a one-sample batch with a 5-tile image."""
    from components.model.build import build_tiny_model

    settings = load_settings("tiny")
    texts = ["uma imagem com um gato vermelho e três quadrados azuis no canto"] * 4
    model, processor = build_tiny_model(settings, texts)
    image = Image.new("RGB", (96, 96), (10, 200, 30))
    batch = processor(images=image, text=processor.image_token + " um gato vermelho no canto",
                      return_tensors="pt")
    return model, processor, batch


@pytest.mark.parametrize("trainable", [["connector"],
                                       ["connector", "language_model", "vision_tower"],
                                       ["connector", "language_model"]])
def test_flops_match_flop_counter_mode(trainable):
    from torch.utils.flop_counter import FlopCounterMode

    from components.model.freeze import set_trainable

    model, _, batch = _tiny_model_and_batch()
    set_trainable(model, trainable)
    model.train()
    # eager attention is matmuls FlopCounterMode sees (CPU sdpa kernels are not counted)
    model.set_attn_implementation("eager")
    tokens = batch["input_ids"].shape[1]
    tiles = batch["pixel_values"].shape[1]
    with FlopCounterMode(display=False) as counter:
        out = model(**batch, labels=batch["input_ids"])
        out.loss.backward()
    measured = counter.get_total_flops()
    predicted = sample_flops(ModelShapes.from_model(model), tokens, tiles, trainable).model
    # forward agrees exactly; backward within ~1.3% (the first layers' input gradients,
    # pixels and embeddings, are not computed but counted): 5% tolerance
    assert predicted == pytest.approx(measured, rel=0.05), (predicted, measured)


def test_engine_mfu_counts_the_tower_from_the_datasets_tiles():
    """The engine's FLOPs per token take the tiles per token of the training data (the
    length index's `tiles` over its tokens), so MFU counts the vision tower's work."""
    from types import SimpleNamespace

    import numpy as np

    from components.train.engine import flops_per_token, tiles_per_token

    model, _, batch = _tiny_model_and_batch()
    base = SimpleNamespace(tiles=np.array([5, 1, 0]), lengths=np.array([60, 30, 10]))
    packed = SimpleNamespace(base=base, lengths=np.array([50, 30, 20]))
    assert tiles_per_token(base) == pytest.approx(6 / 100)
    assert tiles_per_token(packed) == pytest.approx(6 / 100)
    assert tiles_per_token(SimpleNamespace(lengths=np.array([3]))) == 0.0
    tokens = batch["input_ids"].shape[1]
    tiles = batch["pixel_values"].shape[1]
    with_tower = flops_per_token(model, tokens, tiles / tokens)
    expected = sample_flops(ModelShapes.from_model(model), tokens, tiles,
                            ["connector", "language_model", "vision_tower"]).model / tokens
    assert with_tower == pytest.approx(expected)
    assert with_tower > flops_per_token(model, tokens, 0.0)


def test_frozen_parts_still_cost_forward_and_pass_through_backward():
    shapes = ModelShapes(VisionShape(64, 128, 2, 2, 32, 8),
                         TextShape(128, 256, 2, 4, 2, 640, 512))
    align = sample_flops(shapes, 100, 2, ["connector"])
    sft = sample_flops(shapes, 100, 2, ["connector", "language_model"])
    frozen_all = sample_flops(shapes, 100, 2, [])
    assert align.forward == sft.forward == frozen_all.forward
    assert frozen_all.backward == 0
    lm = 100 * 2.0 * shapes.text.matmul
    # the LM passes the gradient through (2N) in align, trains (4N) in sft
    assert sft.backward - align.backward == pytest.approx(lm)
    ckpt = sample_flops(shapes, 100, 2, ["connector"], checkpointing=True)
    assert ckpt.model == align.model and ckpt.recompute > 0


# ----------------------------------------------------------------------------- GPUs


def test_gpu_peaks_are_looked_up_by_exact_name():
    assert gpus.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpus.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpus.peak_flops("NVIDIA H100 NVL") == 835e12
    assert gpus.peak_flops("NVIDIA H100 Future Edition") is None  # no substring guess
    assert gpus.by_key("h100-pcie").memory_gib < gpus.by_key("H100-NVL").memory_gib


def test_engine_mfu_uses_the_pcie_peak_on_a_pcie_card(monkeypatch):
    from components.accel import Runtime
    from components.train import engine

    # only the GPU is faked: torch reports a PCIe H100
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 PCIe")
    runtime = Runtime(device="cuda", dtype=torch.bfloat16, attn_implementation="sdpa",
                      world_size=1, deepspeed_available=False, num_threads=1)
    assert engine.peak_flops(runtime) == 756e12


# ----------------------------------------------------------------------------- model checks


def test_max_length_above_max_positions_is_refused(tmp_path):
    from components.model.build import build_tiny_model

    settings = load_settings("tiny", overrides={"model": {"max_length": 1024}})
    with pytest.raises(ConfigError, match=r"model\.max_length=1024 exceeds .*"
                                          r"max_position_embeddings=512"):
        build_tiny_model(settings, ["um texto"])
    params = _params_with(tmp_path, "tiny", {"model": {"max_length": 1024}})
    result = CliRunner().invoke(app, ["plan", "--profile", "tiny"],
                                env={"AMALIA_PARAMS": str(params), "COLUMNS": "200"})
    assert result.exit_code == 1 and "model.max_length=1024" in result.output


def test_vocabulary_is_padded_to_64_and_the_model_reloads_and_generates(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from components.model.build import save_model

    model, processor, batch = _tiny_model_and_batch()
    rows = model.get_input_embeddings().num_embeddings
    assert rows % 64 == 0
    assert model.lm_head.weight.shape[0] == rows
    save_model(model, processor, tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    real = len(AutoProcessor.from_pretrained(tmp_path).tokenizer)
    assert real == len(processor.tokenizer) < rows  # the tokenizer keeps its real size
    # labels are token ids: never a padded row
    assert int(batch["input_ids"].max()) < real
    # generation never picks a padded row, even where a padded row would win the argmax
    with torch.no_grad():
        reloaded.lm_head.weight[real:] = 50.0
        out = reloaded.generate(**batch, max_new_tokens=4, do_sample=False)
    assert int(out.max()) < real


def _pretrained_parts(tmp_path: Path, vocab_words: list[str]) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from components.model.tokenizer import train_tokenizer

    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=48, intermediate_size=96,
                                                  num_hidden_layers=2, num_attention_heads=2,
                                                  image_size=48, patch_size=8))
    vdir, ldir = tmp_path / "vision", tmp_path / "lm"
    vision.save_pretrained(vdir)
    tok = train_tokenizer(vocab_words, 300)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=512))
    lm.save_pretrained(ldir)
    tok.save_pretrained(ldir)
    return vdir, ldir


def test_pretrained_assembly_pads_the_vocabulary_and_checks_stated_shapes(tmp_path):
    from components.model.build import load_pretrained_parts

    vdir, ldir = _pretrained_parts(tmp_path, ["uma frase de teste com palavras"] * 3)
    base = {"model": {"init": "pretrained", "vision_model_id": str(vdir),
                      "language_model_id": str(ldir)}}
    model, processor = load_pretrained_parts(load_settings("tiny", overrides=base))
    rows = model.get_input_embeddings().num_embeddings
    assert rows % 64 == 0 and rows >= len(processor.tokenizer)
    wrong = {"model": {**base["model"], "text": {"hidden_size": 128}}}
    with pytest.raises(ConfigError, match=r"model\.text\.hidden_size=128 in params\.yaml but "
                                          r"the checkpoint has 96"):
        load_pretrained_parts(load_settings("tiny", overrides=wrong))


# ----------------------------------------------------------------------------- pre-flight


# a recipe the pre-flight refuses in milliseconds, and that without it would fail only
# after the data stages / the stage folder (never an out-of-memory: safe to mutate)
BAD_BATCH = {"train": {"packing": True}, "align": {"per_device_batch_size": 2}}


def test_retrain_preflight_fails_before_validate_runs(tmp_path):
    params = _params_with(tmp_path, "tiny", BAD_BATCH)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["retrain", "--profile", "tiny", "--run-dir", str(run_dir),
                                      "--no-progress"],
                                env={"AMALIA_PARAMS": str(params), "COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split())
    assert "align.per_device_batch_size=2 is set" in line
    assert "set align.per_device_batch_size: null" in line
    assert not (run_dir / "validate").exists()


def test_stage_preflight_refuses_before_the_stage_folder_is_touched(tmp_path):
    from components.plan.preflight import preflight_stage

    settings = load_settings("tiny", overrides={"model": {"text": {
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 48,
        "num_attention_heads": 64, "num_key_value_heads": 8}}})
    with pytest.raises(ConfigError, match="sft cannot fit"):
        preflight_stage(settings, "sft", tmp_path, world=1)
    assert preflight_stage(load_settings("tiny"), "sft", tmp_path, world=1).fits


def test_a_runs_length_index_replaces_the_assumed_lengths(tmp_path):
    import numpy as np

    from components.train.length_index import COLUMNS, LengthIndex, save

    # the assumed cluster's whole rows miss the recipe by -25% at 4 samples per row: this
    # test is about the lengths, not the batch tolerance
    settings = load_settings("paper", overrides={"train": {"packed_batch_tolerance": None}})
    target = planned_target(settings, "sft")
    assumed = plan_stage(settings, "sft", target, tmp_path)
    assert assumed.index_seconds > 0  # no index yet: its build time is projected
    n = 3000
    entries = np.zeros((n, len(COLUMNS)), np.int32)
    entries[:, 3] = entries[:, 4] = 4000  # tokens per sample (padded / packed)
    entries[:, 5] = 5  # tiles
    entries[:, 6] = 1  # one image each; a skipped record (-1) must not count
    entries[0, 6], entries[0, 3] = -1, 16000
    save(LengthIndex(entries, np.zeros((n - 1, 2), np.int32),
                     [{"id": "x", "reason": "too_long", "detail": ""}], key="k"),
         tmp_path / "length_index" / "sft" / "k.npz")
    measured = plan_stage(settings, "sft", target, tmp_path)
    assert measured.index_seconds is None and measured.samples == n - 1
    assert measured.tokens_per_sample == 4000
    # 4 samples of 4,000 tokens fill a 16,384-token row
    assert measured.sched.samples_per_row == pytest.approx(4.0, rel=1e-3)
    assert measured.sched.tokens_per_step == pytest.approx(
        measured.sched.samples_per_step * 4000)


def test_run_stage_refuses_before_the_stage_folder_and_its_checkpoints_are_touched(tmp_path):
    from components.manifest import write_manifest
    from components.stages import run_stage

    run = tmp_path / "run"
    (run / "mix").mkdir(parents=True)
    write_manifest(run / "mix", "mix", inputs={}, counts={}, metrics={}, config_digest="x",
                   started="2026-01-01T00:00:00+00:00")
    checkpoint = run / "align" / "checkpoints" / "checkpoint-5" / "model.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"earlier training")
    other = run / "align" / "metrics.json"
    other.write_text("{}")
    bad = load_settings("tiny", overrides=BAD_BATCH)
    with pytest.raises(ConfigError, match="align.per_device_batch_size=2 is set"):
        run_stage("align", bad, run, progress=False, restart=True)
    # refused before `_clear`: even --restart lost nothing
    assert checkpoint.read_bytes() == b"earlier training" and other.exists()
