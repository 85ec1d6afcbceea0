"""Distributed correctness at scale, on 2 real torchrun (gloo) processes:

- the configured `train.ddp_timeout_s` is the one in force: a rank that arrives late at
  the rendezvous past it fails the launch with one line naming the setting; a rank late
  by less than it does not;
- a checkpoint is sealed by both ranks, each hashing only its share of the pieces
  (`hashed_by`), and the seal matches the files;
- a checkpoint file changed in place at the same size, in rank 1's share, is caught at
  resume with the same one-line verdict on both ranks (no rank resumes, none hangs);
  restored, the same launch resumes from it;
- a resume at another world size is refused before training with one line naming the
  folder, both world sizes and the fix, and every checkpoint file is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from components.errors import AmaliaError
from components.train import checkpoints
from components.train.checkpoints import CheckpointError
from components.train.distributed import collective_timeout_error, forward_worker_stderr
from tests.train_helpers import REPO, make_mix, overrides, write_params

ALIGN = {"epochs": 2, "global_batch_size": 4}  # 16 captions: 4 steps an epoch, 8 in all
TRAIN = {"save_steps": 4, "save_total_limit": 2, "logging_steps": 1, "keep_checkpoints": True}


def _env(root: Path, params: Path) -> dict[str, str]:
    return {**os.environ, "AMALIA_PARAMS": str(params), "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}


def _stage(root: Path, run: Path, params: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "amalia_vl", "stage", "align", "--run-dir", str(run),
         "--no-progress", *extra], env=_env(root, params), cwd=root, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _rank(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> psutil.Process:
    """Worker `rank` of the launch, found as soon as torchrun has started it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if "components.train.worker" in " ".join(child.cmdline()) and \
                        child.environ().get("RANK") == str(rank):
                    return child
            except psutil.Error:
                continue
        if launcher.poll() is not None:
            raise AssertionError(f"the launch ended first: {launcher.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"rank {rank} never started")


def _late_rank_1(launcher: subprocess.Popen, seconds: float,
                 until_rank_0_ends: bool = False) -> tuple[str, str]:
    """Stop rank 1 as soon as it exists (before it reaches the rendezvous) for `seconds`
    (or until rank 0 has ended, at most `seconds`: a busy machine cannot make rank 0 too
    slow to notice), then let it go on; the launch's (stdout, stderr)."""
    worker = _rank(launcher, 1)
    worker.send_signal(signal.SIGSTOP)
    if until_rank_0_ends:
        try:
            _rank(launcher, 0).wait(timeout=seconds)
        except psutil.TimeoutExpired:
            pass
    else:
        time.sleep(seconds)
    worker.send_signal(signal.SIGCONT)
    return launcher.communicate(timeout=600)


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    make_mix(root, n=16)
    return root


def _params(root: Path, name: str, timeout_s: int) -> Path:
    return write_params(root / name, overrides(root / "data", align=ALIGN,
                                               train={**TRAIN, "ddp_timeout_s": timeout_s}))


@pytest.mark.slow
def test_a_rank_later_than_ddp_timeout_fails_the_launch_with_one_line(root):
    run = shutil.copytree(root / "run", root / "late")
    params = _params(root, "short.yaml", timeout_s=2)
    started = time.monotonic()
    # rank 1 sleeps until rank 0 has given up at the rendezvous, past a 2 s timeout
    # (without the timeout in force, rank 0 waits 90 s for it and the stage trains to the end)
    launcher = _stage(root, run, params, "--nproc", "2")
    _, err = _late_rank_1(launcher, seconds=90, until_rank_0_ends=True)
    assert launcher.returncode == 1, f"the late rank was waited for past the timeout: {err}"
    last = err.strip().splitlines()[-1]
    assert "train.ddp_timeout_s=2 s" in last and "raise train.ddp_timeout_s" in last, err
    assert "Traceback" not in err, err
    assert not (run / "align" / "manifest.json").exists()
    assert time.monotonic() - started < 80  # rank 0 gave up after 2 s, not after 90


@pytest.fixture(scope="module")
def trained(root):
    """align on 2 processes, rank 1 late by 4 s (within its 60 s timeout), checkpoints kept."""
    run = root / "run"
    params = _params(root, "params.yaml", timeout_s=60)
    launcher = _stage(root, run, params, "--nproc", "2")
    out, err = _late_rank_1(launcher, seconds=4)
    assert launcher.returncode == 0, err
    assert "align done" in out
    return run, params


@pytest.mark.slow
def test_a_rank_late_within_the_timeout_trains_and_both_ranks_seal_a_share(trained):
    run, _ = trained
    manifest = json.loads((run / "align" / "manifest.json").read_text())
    assert manifest["engine"]["world_size"] == 2
    found = checkpoints.checkpoints(run / "align" / "checkpoints")
    assert [step for step, _ in found] == [4, 8]
    for _, path in found:
        record = json.loads((path / checkpoints.SEAL).read_text())
        assert record["world_size"] == 2 and record["strategy"] == "ddp"
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*")
                 if p.is_file() and p.name != checkpoints.SEAL}
        assert set(record["files"]) == set(files)
        want = {f"{rel}#{i}" for rel, meta in record["files"].items()
                for i in range(len(meta["pieces"]))}
        by_rank = record["hashed_by"]
        assert set(by_rank) == {"0", "1"} and all(by_rank.values()), by_rank
        hashed = [name for names in by_rank.values() for name in names]
        assert len(hashed) == len(set(hashed)) and set(hashed) == want  # each piece once
        sizes = [p.stat().st_size for p in files.values()]  # balanced by bytes
        assert max(record["hashed_bytes"].values()) <= sum(sizes) // 2 + max(sizes)
        for rel, file in files.items():  # the seal is right: every file's own sha256
            assert record["files"][rel] == {
                "bytes": file.stat().st_size,
                "pieces": [hashlib.sha256(file.read_bytes()).hexdigest()]}


@pytest.mark.slow
def test_a_resume_at_another_world_size_is_refused_and_keeps_every_file(root, trained):
    run, params = trained
    folder = run / "align" / "checkpoints"
    before = _tree(folder)
    proc = _stage(root, run, params)  # one process: world size 1
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert str(folder / "checkpoint-8") in last, last
    assert "saved by 2 processes" in last and "this launch has 1" in last, last
    assert "--nproc 2" in last and "--restart" in last, last
    assert _tree(folder) == before


@pytest.mark.slow
def test_a_same_size_corruption_in_rank_1s_share_is_one_verdict_on_both_ranks(root, trained):
    run, params = trained
    newest = run / "align" / "checkpoints" / "checkpoint-8"
    record = json.loads((newest / checkpoints.SEAL).read_text())
    # the largest file that rank 1 hashes (and therefore verifies): rank 0 never reads it
    mine = [name.rsplit("#", 1)[0] for name in record["hashed_by"]["1"]]
    target = newest / max(mine, key=lambda rel: record["files"][rel]["bytes"])
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    before = _tree(run / "align" / "checkpoints")
    # torchrun straight (as a PyTorchJob runs it): each rank prints its own verdict
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "components.train.worker", "align", "--run-dir", str(run), "--no-progress",
         "--params", str(params)], env={**_env(root, params), "OMP_NUM_THREADS": "1"},
        cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    verdicts = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(verdicts) == 2 and verdicts[0] == verdicts[1], proc.stderr
    assert str(target) in verdicts[0] and "content changed" in verdicts[0], verdicts
    assert "checkpoint-4" in verdicts[0] and "--restart" in verdicts[0], verdicts
    assert _tree(run / "align" / "checkpoints") == before
    # put the byte back: the same launch now resumes from the verified checkpoint
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    out, err = _stage(root, run, params, "--nproc", "2").communicate(timeout=600)
    assert "align done" in out, err
    assert json.loads((run / "align" / "manifest.json").read_text())["resumed_from_step"] == 8


# ----------------------------------------------------------------------------- one process


def test_pieces_split_a_large_file_and_every_rank_gets_a_fair_share():
    piece = 1000
    work = checkpoints.pieces({"optimizer.pt": 10 * piece + 7, "rng.pth": 10, "empty": 0},
                              piece)
    assert [p.length for p in work if p.rel == "optimizer.pt"] == [piece] * 10 + [7]
    assert [(p.rel, p.length) for p in work if p.rel != "optimizer.pt"] == [
        ("empty", 0), ("rng.pth", 10)]
    for world_size in (1, 2, 3, 8, 16):
        shares = checkpoints.assign(work, world_size)
        names = [p.name for share in shares for p in share]
        assert sorted(names) == sorted(p.name for p in work)  # every piece, once
        total = sum(p.length for p in work)
        assert max(sum(p.length for p in share) for share in shares) <= \
            total / world_size + piece  # ~ total / W per rank: flat in W per shard
        assert shares == checkpoints.assign(list(reversed(work)), world_size)  # same split


def test_a_same_size_change_in_any_piece_of_a_large_file_is_caught(tmp_path):
    folder = tmp_path / "checkpoints"
    path = folder / "checkpoint-3"
    path.mkdir(parents=True)
    blob = bytes(range(256)) * 40  # 10,240 bytes: 11 pieces of 1,000
    (path / "optimizer.pt").write_bytes(blob)
    checkpoints.seal(path, "cfg", 3, piece_bytes=1000)
    record = json.loads((path / checkpoints.SEAL).read_text())
    assert record["world_size"] == 1 and len(record["files"]["optimizer.pt"]["pieces"]) == 11
    assert checkpoints.resume_point(folder, "cfg") == checkpoints.ResumePoint(path, 3)
    changed = bytearray(blob)
    changed[-5] ^= 0xFF  # in the last piece, same size
    (path / "optimizer.pt").write_bytes(bytes(changed))
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume_point(folder, "cfg")
    assert "content changed" in str(info.value) and "\n" not in str(info.value)


def test_world_size_and_strategy_are_the_checkpoints_identity(tmp_path):
    folder = tmp_path / "checkpoints"
    path = folder / "checkpoint-2"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    checkpoints.seal(path, "cfg", 2, world_size=8, strategy="zero3")
    with pytest.raises(CheckpointError) as info:
        checkpoints.resume_point(folder, "cfg", world_size=16, strategy="zero3")
    line = str(info.value)
    assert str(path) in line and "saved by 8 processes" in line and "has 16" in line
    assert "--nproc 8" in line and "--restart" in line
    with pytest.raises(CheckpointError, match="train.strategy zero3"):
        checkpoints.resume_point(folder, "cfg", world_size=8, strategy="ddp")
    assert checkpoints.resume_point(folder, "cfg", world_size=8, strategy="zero3") == \
        checkpoints.ResumePoint(path, 2)
    record = json.loads((path / checkpoints.SEAL).read_text())
    del record["format"], record["world_size"]  # sealed before world size was recorded
    (path / checkpoints.SEAL).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="earlier amalia-vl.*--restart"):
        checkpoints.resume_point(folder, "cfg", world_size=8, strategy="zero3")
    assert path.is_dir() and (path / "trainer_state.json").exists()


@pytest.mark.parametrize("message", [
    "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
    "2000ms for recv operation to complete",
    "wait timeout after 2000ms, keys: /default_pg/0//cpu//0/1",
    "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, "
    "OpType=ALLREDUCE) ran for 600012 milliseconds before timing out.",
])
def test_a_distributed_timeout_becomes_one_line_naming_the_setting(message):
    error = collective_timeout_error(RuntimeError(message), 120)
    assert isinstance(error, AmaliaError)
    line = str(error)
    assert "\n" not in line and "train.ddp_timeout_s=120 s" in line
    assert "raise train.ddp_timeout_s" in line
    assert collective_timeout_error(RuntimeError("Connection closed by peer"), 120) is None
    assert collective_timeout_error(ValueError(message), 120) is None


def test_the_launcher_reports_an_nccl_watchdog_timeout_it_only_saw_on_stderr():
    import io

    watchdog = ("[rank0]:[E1207 12:00:00.000 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog "
                "caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=BARRIER) "
                "ran for 1800083 milliseconds before timing out.\n")
    sink = io.StringIO()
    seen = forward_worker_stderr(io.StringIO("loading\n" + watchdog + "more\n"), sink)
    assert seen == watchdog and "loading" in sink.getvalue()
    assert forward_worker_stderr(io.StringIO("fine\n"), io.StringIO()) is None
