"""The training engine's contracts and its one-line refusals of bad input, without the
slow multi-process runs (those are in test_train_distributed.py):

- batch plans, DeepSpeed configs (generated and the user's own), strategy and precision
  resolution on a CPU;
- `--nproc` larger than this node, or on a non-training stage: one stderr line from the CLI;
- a model folder whose processor and model disagree on image tokens: one error naming the
  folder, earlier outputs and checkpoints kept;
- checkpoint selection and verification (unsealed skipped, corrupt refused, nothing
  deleted), the MLflow run kept beside them and resumed;
- the torchrun command lines.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.accel import Runtime, available_cores
from components.errors import ConfigError
from components.model.build import ImageTokenMismatchError
from components.settings import EngineSettings, TrainSettings, load_settings
from components.stages import run_stage
from components.train import checkpoints
from components.train.checkpoints import CheckpointError
from components.train.distributed import Launch, needs_torchrun, torchrun_command
from components.train.engine import (
    BatchPlan,
    check_deepspeed_config,
    deepspeed_config,
    resolve_batch,
    resolve_precision,
    resolve_strategy,
    write_strategy_config,
)
from tests.train_helpers import REPO, make_mix, overrides, write_params

CPU = Runtime(device="cpu", dtype=torch.float32, attn_implementation="sdpa", world_size=1,
              deepspeed_available=False, num_threads=1)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------- batch plan


def test_resolve_batch_splits_the_global_batch_over_the_world():
    plan = resolve_batch(TrainSettings(global_batch_size=16), 2, "sft")
    assert plan == BatchPlan(world_size=2, per_device_batch_size=8,
                             gradient_accumulation_steps=1, global_batch_size=16)
    plan = resolve_batch(TrainSettings(global_batch_size=16, per_device_batch_size=2), 2, "sft")
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (2, 4)
    assert plan.per_device_batch_size * plan.gradient_accumulation_steps * 2 == 16


def test_resolve_batch_refuses_batches_that_do_not_fit():
    with pytest.raises(ConfigError) as info:
        resolve_batch(TrainSettings(global_batch_size=10, per_device_batch_size=4), 1, "sft")
    line = _one_line(info.value)
    assert "sft.global_batch_size=10" in line and "per_device_batch_size" in line
    with pytest.raises(ConfigError) as info:
        resolve_batch(TrainSettings(global_batch_size=3), 2, "dpo")
    line = _one_line(info.value)
    assert "dpo.global_batch_size=3" in line and "2 processes" in line


# ----------------------------------------------------------------------------- DeepSpeed


@pytest.mark.parametrize("zero", [2, 3])
def test_generated_deepspeed_config_is_explicit_and_leaves_the_optimizer_to_the_trainer(zero):
    train = TrainSettings(global_batch_size=16, per_device_batch_size=2, max_grad_norm=0.5)
    plan = resolve_batch(train, 2, "sft")
    config = deepspeed_config(zero, plan, "bf16", train)
    assert config["train_batch_size"] == 16 == (config["train_micro_batch_size_per_gpu"]
                                                * config["gradient_accumulation_steps"] * 2)
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 4
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == zero
    gather = config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save")
    assert gather is (True if zero == 3 else None)
    assert "optimizer" not in config and "scheduler" not in config
    check_deepspeed_config(config, plan, "generated")  # agrees with its own plan


def _plan() -> BatchPlan:
    return resolve_batch(TrainSettings(global_batch_size=8), 2, "sft")  # 4 x 1 x 2


def test_a_user_deepspeed_config_that_does_not_fit_the_world_size_is_one_line(tmp_path):
    path = tmp_path / "ds.json"
    with pytest.raises(ConfigError) as info:
        check_deepspeed_config({"train_batch_size": 16}, _plan(), str(path))
    line = _one_line(info.value)
    assert str(path) in line and "train_batch_size=16" in line
    assert "world size 2" in line and '"auto"' in line and "--nproc" in line
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        check_deepspeed_config({"train_micro_batch_size_per_gpu": 2}, _plan(), str(path))
    for odd in (None, "sixteen"):  # a ConfigError naming the file, not a ValueError
        with pytest.raises(ConfigError) as info:
            check_deepspeed_config({"gradient_accumulation_steps": odd}, _plan(), str(path))
        line = _one_line(info.value)
        assert str(path) in line and "gradient_accumulation_steps" in line and '"auto"' in line
    check_deepspeed_config({"train_batch_size": "auto", "train_micro_batch_size_per_gpu":
                            "auto", "gradient_accumulation_steps": "auto"}, _plan(), str(path))
    check_deepspeed_config({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                            "gradient_accumulation_steps": 1}, _plan(), str(path))


def test_a_user_deepspeed_config_must_run_what_the_manifest_records(tmp_path):
    path = str(tmp_path / "ds.json")
    with pytest.raises(ConfigError, match=r"zero_optimization.stage=3 but train.strategy=zero2"):
        check_deepspeed_config({"zero_optimization": {"stage": 3}}, _plan(), path, "zero2")
    with pytest.raises(ConfigError, match=r"bf16.enabled=True but train.precision resolves to "
                                          r"fp32"):
        check_deepspeed_config({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
                               _plan(), path, "zero2", "fp32")
    check_deepspeed_config({"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"},
                            "fp16": {"enabled": False}}, _plan(), path, "zero2", "bf16")


def _ds_settings(tmp_path: Path, user: Path | None):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    train = {"deepspeed_config": str(user), "strategy": "zero2"} if user else {}
    return load_settings("tiny", overrides=overrides(data, train=train,
                                                     sft={"global_batch_size": 8}))


def test_write_strategy_config_checks_the_users_file(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    bad = tmp_path / "bad_ds.json"
    bad.write_text(json.dumps({"train_batch_size": 16, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError) as info:
        write_strategy_config(_ds_settings(tmp_path, bad), "sft", out, _plan(), "bf16", "zero2")
    line = _one_line(info.value)
    assert str(bad) in line and "train_batch_size" in line and '"auto"' in line
    assert not (out / "deepspeed_config.json").exists()
    # on a CPU box zero2 falls back to ddp, but the file is still checked: it fails here,
    # not on the cluster
    with pytest.raises(ConfigError, match="train_batch_size=16 does not fit world size 2"):
        write_strategy_config(_ds_settings(tmp_path, bad), "sft", out, _plan(), "bf16", "ddp")

    broken = tmp_path / "broken_ds.json"
    broken.write_text('{"train_batch_size": ')
    with pytest.raises(ConfigError) as info:
        write_strategy_config(_ds_settings(tmp_path, broken), "sft", out, _plan(), "bf16",
                              "zero2")
    line = _one_line(info.value)
    assert str(broken) in line and "train.deepspeed_config" in line

    good = tmp_path / "good_ds.json"
    user = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2},
            "bf16": {"enabled": "auto"}}
    good.write_text(json.dumps(user))
    target = write_strategy_config(_ds_settings(tmp_path, good), "sft", out, _plan(), "bf16",
                                   "zero2")
    assert target == out / "deepspeed_config.json"
    assert json.loads(target.read_text()) == user


def test_write_strategy_config_generates_one_without_a_user_file(tmp_path):
    settings = _ds_settings(tmp_path, None)
    out = tmp_path / "sft"
    out.mkdir()
    target = write_strategy_config(settings, "sft", out, _plan(), "bf16", "zero3")
    written = json.loads(target.read_text())
    assert written == deepspeed_config(3, _plan(), "bf16", settings.sft)
    assert write_strategy_config(settings, "sft", out, _plan(), "fp32", "ddp") is None


# ----------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("wanted", ["zero2", "zero3", "fsdp"])
def test_sharded_strategies_fall_back_to_ddp_on_a_cpu(wanted):
    strategy, reason = resolve_strategy(EngineSettings(strategy=wanted), CPU)
    assert strategy == "ddp"
    assert reason and wanted in reason and "CUDA" in reason and "gloo" in reason


def test_ddp_is_kept_and_precision_resolves_for_a_cpu():
    assert resolve_strategy(EngineSettings(strategy="ddp"), CPU) == ("ddp", None)
    assert resolve_precision(EngineSettings(precision="auto"), CPU) == "fp32"
    assert resolve_precision(EngineSettings(precision="bf16"), CPU) == "bf16"
    assert resolve_precision(EngineSettings(precision="fp32"), CPU) == "fp32"
    with pytest.raises(ConfigError) as info:
        resolve_precision(EngineSettings(precision="fp16"), CPU)
    assert "train.precision" in _one_line(info.value)


# ----------------------------------------------------------------------------- stages


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """`(root, run, params.yaml)`: a mix and a finished align stage of the small model."""
    root = tmp_path_factory.mktemp("engine")
    data, run = make_mix(root, n=8)
    over = overrides(data, align={"epochs": 1, "global_batch_size": 4},
                     sft={"epochs": 1, "global_batch_size": 4})
    params = write_params(root / "params.yaml", over)
    run_stage("align", load_settings(params_path=params), run, progress=False)
    return root, run, params


def _cli(root: Path, params: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMALIA_PARAMS": str(params), "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'cli.db'}"}
    return subprocess.run([sys.executable, "-m", "amalia_vl", *args], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300, check=False)


def _relist_outputs(stage_dir: Path) -> None:
    """Rewrite a stage manifest's output list after a test edited one of its files
    (`read_manifest` refuses outputs that differ in size from what the manifest lists)."""
    from components.manifest import hash_tree, read_manifest, tree_digest, write_manifest_file

    manifest = json.loads((stage_dir / "manifest.json").read_text())
    manifest["outputs"] = hash_tree(stage_dir)
    manifest["outputs_digest"] = tree_digest(manifest["outputs"])
    write_manifest_file(stage_dir, manifest)
    read_manifest(stage_dir.parent, stage_dir.name)  # accepted again


def test_an_operator_pod_with_rank_set_still_launches_torchrun(monkeypatch):
    """The Kubeflow training operator sets RANK (the node's rank) in each pod; only
    torchrun's own variables mark a process that is already a worker."""
    for var in ("RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    two = Launch(nproc=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert needs_torchrun("sft", two, "ddp")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not needs_torchrun("sft", two, "ddp")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    assert not needs_torchrun("sft", two, "ddp")
    assert not needs_torchrun("mix", two, "ddp")


def test_nproc_beyond_this_node_or_on_a_non_training_stage_is_one_line(aligned):
    root, run, params = aligned
    too_many = _cli(root, params, "stage", "sft", "--run-dir", str(run), "--nproc", "99",
                    "--no-progress")
    assert too_many.returncode == 1, too_many.stderr
    lines = too_many.stderr.strip().splitlines()
    assert len(lines) == 1, too_many.stderr
    if torch.cuda.is_available():
        devices = f"{torch.cuda.device_count()} GPUs"
    else:
        devices = f"{available_cores()} CPU cores"
    assert "--nproc 99" in lines[0] and devices in lines[0], lines[0]
    assert "use --nproc" in lines[0]
    assert not (run / "sft").exists()  # refused before anything was written

    wrong_stage = _cli(root, params, "stage", "validate", "--run-dir", str(run), "--nproc",
                       "2", "--no-progress")
    assert wrong_stage.returncode == 1, wrong_stage.stderr
    lines = wrong_stage.stderr.strip().splitlines()
    assert len(lines) == 1, wrong_stage.stderr
    assert "--nproc applies to the training stages" in lines[0] and "validate" in lines[0]
    assert json.loads((run / "validate" / "manifest.json").read_text())["stage"] == "validate"


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_processor_and_model_that_disagree_on_image_tokens_name_the_folder(aligned, tmp_path):
    root, run, params = aligned
    run = Path(shutil.copytree(run, tmp_path / "run"))
    folder = run / "align" / "model"
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text())
    pins = config["image_processor"]["image_grid_pinpoints"]
    assert [32, 32] in pins
    config["image_processor"]["image_grid_pinpoints"] = [p for p in pins if p != [32, 32]]
    config_path.write_text(json.dumps(config, indent=2))
    _relist_outputs(run / "align")  # as if align itself had written this folder
    # an earlier sft attempt left a sealed checkpoint: the failure must not touch it
    ckpt = run / "sft" / "checkpoints" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    checkpoints.seal(ckpt, "digest", 2)
    before = {"align": _tree(run / "align"), "mix": _tree(run / "mix"),
              "checkpoints": _tree(run / "sft" / "checkpoints")}

    with pytest.raises(ImageTokenMismatchError) as info:
        run_stage("sft", load_settings(params_path=params), run, progress=False)
    line = _one_line(info.value)
    assert line.startswith(f"{folder}: "), line
    assert "image_grid_pinpoints" in line
    assert "amalia-vl stage align" in line  # how to fix it
    after = {"align": _tree(run / "align"), "mix": _tree(run / "mix"),
             "checkpoints": _tree(run / "sft" / "checkpoints")}
    assert after == before
    assert not (run / "sft" / "manifest.json").exists()


# ----------------------------------------------------------------------------- checkpoints


def _fake_checkpoint(folder: Path, step: int, digest: str | None = "cfg") -> Path:
    path = folder / f"checkpoint-{step}"
    (path / "sub").mkdir(parents=True)
    (path / "optimizer.pt").write_bytes(bytes(range(256)) * 4)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "sub" / "rng.pth").write_bytes(b"rng" * 10)
    if digest is not None:
        checkpoints.seal(path, digest, step)
    return path


def test_resume_point_takes_the_newest_sealed_and_skips_an_unsealed_one(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    assert checkpoints.resume_point(folder, "cfg") is None
    _fake_checkpoint(folder, 2)
    newest = _fake_checkpoint(folder, 10)  # numeric order, not text order ("10" < "2")
    assert checkpoints.resume_point(folder, "cfg") == checkpoints.ResumePoint(newest, 10)

    unsealed = _fake_checkpoint(folder, 12, digest=None)
    before = _tree(folder)
    with caplog.at_level(logging.WARNING, logger="components.train.checkpoints"):
        point = checkpoints.resume_point(folder, "cfg")
    assert point == checkpoints.ResumePoint(newest, 10)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(unsealed) in m and "incomplete" in m for m in warned), warned
    assert _tree(folder) == before  # skipped, not deleted


def test_a_changed_checkpoint_file_is_refused_naming_it_and_the_fallback(tmp_path):
    folder = tmp_path / "checkpoints"
    previous = _fake_checkpoint(folder, 2)
    newest = _fake_checkpoint(folder, 4)
    target = newest / "optimizer.pt"
    original = target.read_bytes()
    data = bytearray(original)
    data[100] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    before = _tree(folder)
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume_point(folder, "cfg")
    line = _one_line(info.value)
    assert str(target) in line and "content changed" in line
    assert info.value.hint and previous.name in info.value.hint and str(newest) in line
    assert "--restart" in line
    assert _tree(folder) == before

    target.write_bytes(original)
    assert checkpoints.resume_point(folder, "cfg") == checkpoints.ResumePoint(newest, 4)
    missing = newest / "sub" / "rng.pth"
    missing.unlink()
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume_point(folder, "cfg")
    assert str(missing) in str(info.value) and "missing" in str(info.value)
    assert previous.is_dir() and (previous / checkpoints.SEAL).exists()


def test_a_checkpoint_of_another_config_is_refused_with_restart(tmp_path):
    folder = tmp_path / "checkpoints"
    _fake_checkpoint(folder, 3, digest="other")
    before = _tree(folder)
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume_point(folder, "cfg")
    line = _one_line(info.value)
    assert "another configuration" in line and "--restart" in line and str(folder) in line
    assert _tree(folder) == before


def test_the_mlflow_run_id_is_offered_only_beside_a_sealed_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    assert checkpoints.mlflow_run_id(folder) is None
    checkpoints.remember_mlflow_run(folder, "abc123")
    assert checkpoints.mlflow_run_id(folder) is None  # nothing to resume: a new run
    _fake_checkpoint(folder, 1, digest=None)
    assert checkpoints.mlflow_run_id(folder) is None  # an unsealed one does not count
    _fake_checkpoint(folder, 2)
    assert checkpoints.mlflow_run_id(folder) == "abc123"
    (folder / checkpoints.MLFLOW_RUN).write_text("not json")
    assert checkpoints.mlflow_run_id(folder) is None


# ----------------------------------------------------------------------------- MLflow resume


def test_a_resumed_stage_continues_its_mlflow_run(tmp_path, mlflow_uri):
    import mlflow

    from components.tracking import stage_run

    data, run = make_mix(tmp_path, n=4)
    settings = load_settings("tiny", overrides=overrides(data))
    with stage_run(settings, "align", run) as first:
        first.log_metrics({"loss": 2.0}, step=1)
    with stage_run(settings, "align", run, resume_run_id=first.run_id) as again:
        again.log_metrics({"loss": 1.0}, step=2)
    assert again.run_id == first.run_id
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    history = client.get_metric_history(first.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.tags.get("amalia.resumed") == "true"

    # an id from another tracking store: a new run, not a crash
    with stage_run(settings, "align", run, resume_run_id="0" * 32) as fresh:
        fresh.log_metrics({"loss": 3.0}, step=1)
    assert fresh.run_id != first.run_id
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert "amalia.resumed" not in client.get_run(fresh.run_id).data.tags


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_command_for_one_node_is_standalone():
    cmd = torchrun_command(Launch(nproc=2), ["sft", "--run-dir", "r"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in cmd and "--standalone" in cmd
    assert not any(a.startswith(("--nnodes", "--rdzv")) for a in cmd)
    assert cmd[-5:] == ["-m", "components.train.worker", "sft", "--run-dir", "r"]


def test_torchrun_command_for_several_nodes_needs_a_rendezvous():
    with pytest.raises(ConfigError) as info:
        torchrun_command(Launch(nproc=4, nnodes=2), [])
    assert "--rdzv-endpoint" in _one_line(info.value)
    cmd = torchrun_command(Launch(nproc=4, nnodes=2, node_rank=1,
                                  rdzv_endpoint="node0:29400"), [])
    assert "--standalone" not in cmd
    for arg in ("--nproc-per-node=4", "--nnodes=2", "--rdzv-backend=c10d",
                "--rdzv-endpoint=node0:29400", "--node-rank=1"):
        assert arg in cmd, (arg, cmd)
    assert cmd[-2:] == ["-m", "components.train.worker"]


def test_a_config_error_inside_torchrun_workers_is_one_line(aligned):
    """Both ranks refuse a global batch of 3 over 2 processes: the user sees that reason
    once, not torchrun's ChildFailedError report."""
    root, run, params = aligned
    bad = write_params(root / "odd.yaml", overrides(
        Path(load_settings(params_path=params).data_dir),
        align={"epochs": 1, "global_batch_size": 4}, sft={"global_batch_size": 3}))
    proc = _cli(root, bad, "stage", "sft", "--run-dir", str(run), "--nproc", "2",
                "--no-progress")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines == [lines[-1]], proc.stderr
    assert "sft.global_batch_size=3 does not split over 2 processes" in lines[-1]
    assert "ChildFailedError" not in proc.stderr + proc.stdout


def test_the_checkpoint_digest_follows_what_changes_the_training(tmp_path):
    """A resume must refuse checkpoints whose data order differs: the DataLoader workers
    (with the ranks, the readers that lay out the order) are in the stage digest; how a
    step runs (logging, the timeout, the loss chunking) is not."""
    from components.stages import StageContext
    from components.train.stages import stage_digest

    data, run = make_mix(tmp_path, n=4)

    def digest(**train) -> str:
        settings = load_settings("tiny", overrides=overrides(data, train=train))
        return stage_digest(StageContext("align", settings, run))

    base = digest()
    assert digest(dataloader_workers=2) != base
    assert digest(packing=True) != base
    assert digest(logging_steps=7, ddp_timeout_s=99, loss_chunk_tokens=0,
                  packed_batch_tolerance=None) == base
