"""Disk full and out of memory in a stage: one clear line, and the run directory resumable.

Disk full is real where the test may mount: the run directory lives on a small tmpfs whose
free space a filler file has eaten, and `amalia-vl stage mix` runs in a subprocess (the
real CLI). Where mounting is not permitted, and always as a second check, `ENOSPC` is
raised at the write boundary of the stage instead. Out of memory is raised at the same
boundary (`MemoryError`, torch's `OutOfMemoryError`, the CPU allocator's message): a test
cannot make a 24 GB machine run out of memory on purpose without taking its neighbours
down with it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data.synthetic import generate
from components.errors import AmaliaError, MissingInputError, ResourceError
from components.manifest import read_manifest
from components.settings import load_settings
from components.stages import run_stage

REPO = Path(__file__).resolve().parents[2]
SMALL = {"train_per_task": 8, "test_per_task": 4, "seed_en_per_kind": 10}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(params.yaml, data dir, a run dir with validate + translate done)."""
    root = tmp_path_factory.mktemp("resources")
    data = root / "data"
    generate(data, load_settings("ci", overrides={"synthetic": SMALL}))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["ci"] = {**raw["profiles"]["ci"], "data_dir": str(data),
                             "synthetic": SMALL,
                             "translate": {**raw["profiles"]["ci"].get("translate", {}),
                                           "cache_dir": str(root / "tm")}}
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw, allow_unicode=True))
    settings = load_settings("ci", params)
    run = root / "run"
    for name in ("validate", "translate"):
        run_stage(name, settings, run, progress=False)
    return params, data, run


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def _fill(mount: Path, leave_bytes: int) -> Path:
    """Eat the free space of `mount` but `leave_bytes`."""
    st = os.statvfs(mount)
    free = st.f_bavail * st.f_frsize
    filler = mount / "filler.bin"
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        todo = free - leave_bytes
        while todo > 0:
            fh.write(chunk[: min(len(chunk), todo)])
            todo -= len(chunk)
    return filler


def _stage_cli(params: Path, run: Path, name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMALIA_PARAMS": str(params), "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": f"sqlite:///{params.parent / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", "amalia_vl", "stage", name, "--profile", "ci",
                           "--run-dir", str(run), "--no-progress"], env=env, cwd=params.parent,
                          capture_output=True, text=True, timeout=600)


def test_disk_full_on_a_real_tmpfs_is_one_line_and_resumable(upstream, tmp_path):
    params, _, prepared = upstream
    mount = tmp_path / "small-disk"
    if os.geteuid() != 0 or not _tmpfs(mount, "64m"):
        pytest.skip("mounting a tmpfs is not permitted here (the ENOSPC test below runs)")
    try:
        run = mount / "run"
        shutil.copytree(prepared, run)
        filler = _fill(mount, leave_bytes=64 * 1024)  # mix writes far more than 64 KiB
        proc = _stage_cli(params, run, "mix")
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr + proc.stdout
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0], proc.stderr[-2000:]
        assert "free space under" in errors[0]
        assert not (run / "mix" / "manifest.json").exists()
        for done in ("validate", "translate"):  # finished stages are untouched
            read_manifest(run, done)

        filler.unlink()  # space freed: the same command completes
        again = _stage_cli(params, run, "mix")
        assert again.returncode == 0, again.stderr[-2000:]
        assert read_manifest(run, "mix")["counts"]["sft"] > 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _failing_at_the_write_boundary(monkeypatch, exc: BaseException) -> None:
    """Make mix fail with `exc` after it has begun writing its outputs."""
    import components.mix as mix

    real = mix.run

    def run(ctx):
        (ctx.out_dir / "half-written.parquet").write_bytes(b"PAR1")
        raise exc

    monkeypatch.setattr(mix, "run", run)
    return real


@pytest.mark.parametrize("exc, needle", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/r/mix/shards/sft/part-0.parquet"),
     "no space left on device writing /runs/r/mix/shards/sft/part-0.parquet"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "no space left on device"),
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 34359738368 bytes."), "out of memory"),
], ids=["enospc", "quota", "memory-error", "cpu-allocator"])
def test_full_disk_and_oom_at_the_write_boundary(upstream, tmp_path, monkeypatch, exc, needle):
    params, _, prepared = upstream
    settings = load_settings("ci", params)
    run = tmp_path / "run"
    shutil.copytree(prepared, run)
    with monkeypatch.context() as patch:
        _failing_at_the_write_boundary(patch, exc)
        with pytest.raises(ResourceError) as err:
            run_stage("mix", settings, run, progress=False)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert isinstance(err.value, AmaliaError)  # one line in the CLI, never retried
    with pytest.raises(MissingInputError):  # no manifest: a later stage refuses it
        read_manifest(run, "mix", needed_by="align")
    _, manifest = run_stage("mix", settings, run, progress=False)  # the same call resumes
    assert manifest["counts"]["sft"] > 0
    assert not (run / "mix" / "half-written.parquet").exists()


def test_torch_out_of_memory_is_one_line(upstream, tmp_path, monkeypatch):
    import torch

    params, _, prepared = upstream
    settings = load_settings("ci", params)
    run = tmp_path / "run"
    shutil.copytree(prepared, run)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                 "79.11 GiB total capacity)")
    with monkeypatch.context() as patch:
        _failing_at_the_write_boundary(patch, oom)
        with pytest.raises(ResourceError) as err:
            run_stage("mix", settings, run, progress=False)
    assert "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB" in str(err.value)
    assert "per_device_batch_size" in str(err.value)


def test_other_errors_are_not_mistaken_for_resources(upstream, tmp_path, monkeypatch):
    params, _, prepared = upstream
    settings = load_settings("ci", params)
    run = tmp_path / "run"
    shutil.copytree(prepared, run)
    with monkeypatch.context() as patch:
        _failing_at_the_write_boundary(patch, OSError(errno.EACCES, "Permission denied"))
        with pytest.raises(PermissionError):
            run_stage("mix", settings, run, progress=False)
    report = run / "validate" / "report.json"
    assert json.loads(report.read_text())["total"] > 0
