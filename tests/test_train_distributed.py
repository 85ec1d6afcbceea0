"""The training engine across processes, through the real CLI and real `torchrun` (gloo):

- 2 processes at per-device batch B/2 take the same per-step losses as 1 process at B;
- an `sft` killed with SIGKILL after its first checkpoint, run again with the same
  command, resumes from it: same loss history and final weights as an uninterrupted run,
  one MLflow run, `resumed_from_step` in the manifest;
- only rank 0 writes (one MLflow stage run per launch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.settings import load_settings
from components.stages import run_stage
from tests.train_helpers import REPO, make_mix, overrides, write_params

pytestmark = pytest.mark.slow

SFT = {"epochs": 8, "global_batch_size": 4, "learning_rate": 3e-3}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A run dir whose align stage is done, and the params.yaml the subprocesses read."""
    root = tmp_path_factory.mktemp("dist")
    data, run = make_mix(root, n=32)
    over = overrides(data, align={"epochs": 1, "global_batch_size": 4}, sft=SFT,
                     train={"save_steps": 2, "save_total_limit": 2, "logging_steps": 1})
    params = write_params(root / "params.yaml", over)
    settings = load_settings(params_path=params)
    run_stage("align", settings, run, progress=False)
    return root, run, params


def _env(root: Path, params: Path, store: str) -> dict[str, str]:
    return {**os.environ, "AMALIA_PARAMS": str(params),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / store}", "PYTHONPATH": str(REPO)}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "amalia_vl", *args]


def _copy(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


def _sft(root, run, params, store, *extra, check=True):
    return subprocess.run(_cli("stage", "sft", "--run-dir", str(run), "--no-progress", *extra),
                          env=_env(root, params, store), cwd=root, capture_output=True,
                          text=True, timeout=600, check=check)


def _manifest(run: Path) -> dict:
    return json.loads((run / "sft" / "manifest.json").read_text())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "sft" / "model" / "model.safetensors"))


def _stage_runs(root: Path, store: str) -> int:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / store}")
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps],
                              filter_string="tags.`amalia.stage` = 'sft'")
    return len(runs)


@pytest.fixture(scope="module")
def reference(aligned):
    root, run, params = aligned
    ref = _copy(run, root / "ref")
    _sft(root, ref, params, "ref.db")
    return ref


def test_two_processes_take_the_same_steps_as_one(aligned):
    """The sampler lays the order out per reader (rank x DataLoader worker: each reads its
    own row groups), so the two launches compared have the same readers: 2 ranks, and 1
    rank with 2 workers (per-device batch 2, accumulation 2)."""
    root, run, params = aligned
    data = Path(load_settings(params_path=params).data_dir)
    one_params = write_params(root / "one-rank.yaml", overrides(
        data, align={"epochs": 1, "global_batch_size": 4},
        sft={**SFT, "per_device_batch_size": 2},
        train={"save_steps": 1000, "logging_steps": 1, "dataloader_workers": 2}))
    single = _copy(run, root / "single")
    _sft(root, single, one_params, "one.db")
    two = _copy(run, root / "two")
    proc = _sft(root, two, params, "two.db", "--nproc", "2")
    one, many = _manifest(single), _manifest(two)
    assert many["engine"]["world_size"] == 2 and many["engine"]["per_device_batch_size"] == 2
    assert one["engine"]["world_size"] == 1 and one["engine"]["gradient_accumulation_steps"] == 2
    assert many["engine"]["global_batch_size"] == one["engine"]["global_batch_size"] == 4
    assert len(one["loss_history"]) == len(many["loss_history"]) == 8 * 32 // 4
    for step, (a, b) in enumerate(zip(one["loss_history"], many["loss_history"],
                                      strict=True), 1):
        assert abs(a - b) < 1e-4, f"step {step}: 1 process {a}, 2 processes {b}"
    assert _stage_runs(root, "two.db") == 1  # rank 1 opened no MLflow run
    assert "sft done" in proc.stdout


def test_packed_rows_split_over_two_processes_take_the_same_steps_as_one(aligned):
    """Packing under torchrun: the ranks share the packed rows of each global batch and
    take the same steps as one process (rows counted as the global batch)."""
    root, run, _ = aligned
    # 6 samples per step at ~2.7 samples per 128-token row: 2 rows per step on 1 or 2
    # ranks; 1 rank reads with 2 DataLoader workers, so both launches have 2 readers
    # (the same order)
    sft = {**SFT, "epochs": 2, "global_batch_size": 6}
    train = {"save_steps": 1000, "logging_steps": 1, "packing": True}
    one_params = write_params(root / "packed-one.yaml", overrides(
        root / "data", align={"epochs": 1, "global_batch_size": 4}, sft=sft,
        train={**train, "dataloader_workers": 2}))
    params = write_params(root / "packed.yaml", overrides(
        root / "data", align={"epochs": 1, "global_batch_size": 4}, sft=sft, train=train))
    one, two = _copy(run, root / "packed-one"), _copy(run, root / "packed-two")
    _sft(root, one, one_params, "p1.db")
    _sft(root, two, params, "p2.db", "--nproc", "2")
    a, b = _manifest(one), _manifest(two)
    assert b["engine"]["world_size"] == 2 and b["engine"]["per_device_batch_size"] == 1
    assert a["engine"]["batch_unit"] == b["engine"]["batch_unit"] == "rows"
    assert a["engine"]["global_batch_size"] == b["engine"]["global_batch_size"] == 2
    rows = json.loads((one / "sft" / "metrics.json").read_text())["packing"]["packed_rows"]
    assert rows < 32 and len(a["loss_history"]) == 2 * rows // 2 == len(b["loss_history"])
    for step, (x, y) in enumerate(zip(a["loss_history"], b["loss_history"], strict=True), 1):
        assert abs(x - y) < 1e-4, f"step {step}: 1 process {x}, 2 processes {y}"


def _wait_for_seal(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sealed = sorted(folder.glob("checkpoint-*/amalia_checkpoint.json"))
        if sealed:
            return sealed[0].parent
        if proc.poll() is not None:
            raise AssertionError(f"sft ended (status {proc.returncode}) before a checkpoint: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.01)
    raise AssertionError("no checkpoint within the timeout")


def test_sigkill_after_a_checkpoint_then_the_same_command_resumes_exactly(aligned, reference):
    root, run, params = aligned
    crashed = _copy(run, root / "crashed")
    cmd = _cli("stage", "sft", "--run-dir", str(crashed), "--no-progress")
    env = _env(root, params, "crash.db")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = _wait_for_seal(crashed / "sft" / "checkpoints", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (crashed / "sft" / "manifest.json").exists()
    killed_at = int(first.name.split("-")[1])

    resumed = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True,
                             timeout=600, check=True)
    assert "sft done" in resumed.stdout
    got, want = _manifest(crashed), _manifest(reference)
    assert got["resumed_from_step"] is not None and got["resumed_from_step"] >= killed_at
    assert len(got["loss_history"]) == len(want["loss_history"])
    for step, (a, b) in enumerate(zip(want["loss_history"], got["loss_history"],
                                      strict=True), 1):
        assert abs(a - b) < 1e-6, f"step {step}: uninterrupted {a}, resumed {b}"
    final, expected = _weights(crashed), _weights(reference)
    assert final.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], atol=1e-6, rtol=0, msg=key)
    assert _stage_runs(root, "crash.db") == 1  # the MLflow run was resumed, not duplicated


def test_checkpoint_from_another_config_is_refused_and_kept(aligned):
    root, run, params = aligned
    other = _copy(run, root / "other")
    proc = subprocess.Popen(_cli("stage", "sft", "--run-dir", str(other), "--no-progress"),
                            env=_env(root, params, "other.db"), cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    first = _wait_for_seal(other / "sft" / "checkpoints", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    changed = write_params(root / "changed.yaml", overrides(
        Path(load_settings(params_path=params).data_dir), sft={**SFT, "learning_rate": 1e-3},
        train={"save_steps": 2, "save_total_limit": 2}))
    refused = _sft(root, other, changed, "other.db", check=False)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert "another configuration" in last and "--restart" in last
    assert (first / "amalia_checkpoint.json").exists()  # nothing of the checkpoints lost
    # truncate a checkpoint file: a clear error naming it, the checkpoint left as it was
    target = first / "optimizer.pt"
    size = target.stat().st_size
    with target.open("r+b") as fh:
        fh.truncate(size // 2)
    broken = _sft(root, other, params, "other.db", check=False)
    assert broken.returncode == 1
    line = broken.stderr.strip().splitlines()[-1]
    assert str(target) in line and "truncated" in line and "--restart" in line
    assert target.exists() and (first / "amalia_checkpoint.json").exists()
    restarted = _sft(root, other, params, "other.db", "--restart")
    assert _manifest(other)["resumed_from_step"] is None
    assert "sft done" in restarted.stdout


def test_retrain_flow_launches_training_stages_through_torchrun(tmp_path, prefect_server,
                                                                 monkeypatch):
    """`retrain --nproc 2`: the Prefect task starts the stage with torchrun (2 ranks), and
    the stage run nests under the flow's MLflow parent run."""
    import mlflow

    from flows.retrain import retrain_flow

    data, run = make_mix(tmp_path, n=8)
    params = write_params(tmp_path / "params.yaml", overrides(
        data, align={"epochs": 1, "global_batch_size": 4}))
    uri = f"sqlite:///{tmp_path / 'flow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMALIA_PARAMS", str(params))
    monkeypatch.chdir(tmp_path)
    summary = retrain_flow(run_dir=str(run), params_path=str(params), start="align",
                           stop="align", progress=False, nproc=2)
    manifest = json.loads((run / "align" / "manifest.json").read_text())
    engine = manifest["engine"]
    assert engine["world_size"] == 2 and engine["per_device_batch_size"] == 2
    assert summary["counts"]["align"]["steps"] == 2
    client = mlflow.MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    stage_runs = client.search_runs(exps, filter_string="tags.`amalia.stage` = 'align'")
    assert len(stage_runs) == 1
    assert stage_runs[0].data.tags["mlflow.parentRunId"] == summary["mlflow_parent_run_id"]
