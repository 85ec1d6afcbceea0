"""Where this process stands in a `torchrun` launch, and how a stage is launched on N.

A training stage on N processes is `torchrun` (torch's elastic launcher: one process per
device, gloo on CPU, NCCL on GPUs) running `python -m components.train.worker`, which runs
the very stage function a single process runs. Multi-node launches pass the same
`--nnodes/--node-rank/--rdzv-endpoint` a Kubernetes PyTorchJob or JobSet sets. There is no
scheduler or RPC here: torchrun starts the processes, the Trainer (through Accelerate)
forms the process group and shards the data; only rank 0 writes models, manifests and
MLflow runs.

`World` reads the `RANK`/`WORLD_SIZE`/`LOCAL_RANK` variables torchrun sets; `barrier()`
is a no-op until a process group exists.

The timeout in force: `init_process_group(timeout_s)` forms the group (gloo or NCCL)
with `train.ddp_timeout_s` before anything else touches it; the Trainer's later
`PartialState` finds the group formed and reuses it (accelerate creates a group only when
none exists), so `TrainingArguments.ddp_timeout` is the same value, never a second one.
A rank that waits longer than that at a collective (a barrier, a gradient all-reduce, the
rendezvous itself) fails; `collective_timeout_error` turns that failure (gloo's "Timed out
waiting", the store's "wait timeout", NCCL's watchdog) into one line naming
`train.ddp_timeout_s`, and `launch_stage` says the same when NCCL's watchdog killed the
process before Python could.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from components.errors import AmaliaError, ConfigError

TRAINING_STAGES = ("align", "sft", "dpo")


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_available() and dist.is_initialized():
            dist.barrier()


def world() -> World:
    """This process's place in the launch (1 process when not under torchrun)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("WORLD_SIZE", 1)))


def init_process_group(timeout_s: float) -> None:
    """Form the process group now (Accelerate's `PartialState`: gloo on CPU, NCCL on GPU)
    so that rank 0 can prepare the stage folder before the others read it, with
    `timeout_s` (`train.ddp_timeout_s`) as the limit of every collective wait.

    The timeout must be given here: the group keeps the one it was created with, and
    the Trainer's own `PartialState` (built from `TrainingArguments.ddp_timeout`) reuses
    this group instead of forming another."""
    if world().distributed:
        import torch.distributed as dist
        from accelerate import PartialState

        if dist.is_available() and dist.is_initialized():
            # formed by someone else with a timeout we cannot see: ours would be ignored
            raise AmaliaError(
                "the process group was formed before the stage set train.ddp_timeout_s",
                "start the stage through `amalia-vl stage` or components.train.worker")
        PartialState(timeout=timedelta(seconds=timeout_s))


# what a timed-out collective says: gloo ("Timed out waiting 2000ms for recv operation"),
# the rendezvous store ("wait timeout after 2000ms"), NCCL's watchdog ("Watchdog caught
# collective operation timeout: WorkNCCL(...) ran for 600012 milliseconds before timing out")
TIMEOUT_SIGNS = ("Timed out waiting", "wait timeout after", "collective operation timeout",
                 "before timing out")


class CollectiveTimeoutError(AmaliaError):
    """A rank waited longer than `train.ddp_timeout_s` for the others."""


def timeout_message(detail: str, timeout_s: float | None = None) -> CollectiveTimeoutError:
    value = f"={timeout_s:g} s" if timeout_s is not None else ""
    return CollectiveTimeoutError(
        f"a process waited more than train.ddp_timeout_s{value} for the other ranks at a "
        f"collective ({detail.strip().splitlines()[0][:200] if detail.strip() else 'timeout'})",
        "raise train.ddp_timeout_s in params.yaml above the longest time one rank can work "
        "alone (a checkpoint save, rank 0's planning or evaluation), or find the rank that "
        "stalled or died")


def collective_timeout_error(exc: BaseException, timeout_s: float) -> CollectiveTimeoutError | None:
    """The one-line error for `exc` when it is a distributed timeout, else None (torch's
    `DistStoreError` / `DistBackendError` are `RuntimeError`s, as is gloo's)."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(s in text for s in TIMEOUT_SIGNS):
        return timeout_message(text, timeout_s)
    return None


def check_nproc(nproc: int, nnodes: int = 1) -> None:
    """Refuse more processes per node than this node has devices (GPUs, else CPU cores)."""
    import torch

    from components.accel import available_cores

    if nproc < 1 or nnodes < 1:
        raise ConfigError(f"--nproc {nproc} / --nnodes {nnodes}: both must be >= 1")
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc} is more than the {gpus} GPUs of this node",
                              f"use --nproc {gpus} (one process per GPU)")
        return
    cores = available_cores()
    if nproc > cores:
        raise ConfigError(f"--nproc {nproc} is more than the {cores} CPU cores of this node",
                          f"use --nproc {cores} or fewer (one gloo process per core)")


@dataclass(frozen=True)
class Launch:
    """How to start a stage: `nproc` per node; multi-node needs `rdzv_endpoint`."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str = "amalia-vl"

    @property
    def distributed(self) -> bool:
        return self.nproc * self.nnodes > 1


def needs_torchrun(name: str, launch: Launch | None, strategy: str) -> bool:
    """Whether training stage `name` must be started through torchrun from this process:
    several processes, or DeepSpeed / FSDP on a GPU (they need a process group even on
    one GPU). False inside a torchrun worker (it is already one rank): torchrun marks its
    workers with `TORCHELASTIC_RUN_ID` / `LOCAL_RANK`. `RANK` alone is no sign of one: the
    Kubeflow training operator sets it (to the node's rank) in every pod it starts."""
    import torch

    if name not in TRAINING_STAGES or is_torchrun_worker():
        return False
    if launch is not None and launch.distributed:
        return True
    return strategy != "ddp" and torch.cuda.is_available()


def is_torchrun_worker() -> bool:
    """True in a process torchrun started (not in its launcher)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_command(launch: Launch, worker_args: list[str]) -> list[str]:
    """The `torchrun` command line (as `python -m torch.distributed.run`) for a worker."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc}"]
    if launch.nnodes > 1:
        if not launch.rdzv_endpoint:
            raise ConfigError(f"--nnodes {launch.nnodes} needs --rdzv-endpoint HOST:PORT",
                              "pass the address of the rendezvous host (node 0)")
        cmd += [f"--nnodes={launch.nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={launch.rdzv_id}"]
        if launch.node_rank is not None:
            cmd.append(f"--node-rank={launch.node_rank}")
    elif launch.rdzv_endpoint:
        cmd += ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}"]
    else:
        cmd.append("--standalone")
    return [*cmd, "-m", "components.train.worker", *worker_args]


def forward_worker_stderr(stream, sink) -> str | None:
    """Copy the launch's stderr to `sink` line by line, as it comes, less torchrun's own
    bookkeeping: its agent's log lines and, after a failure, its `ChildFailedError` report
    (the last thing it prints). The workers' own logs and tracebacks pass unchanged; the
    failure itself is summed up in one line by `launch_stage`. Returns the first line
    that reports a collective timeout (NCCL's watchdog aborts the process without a Python
    exception, so no rank can write its own error), or None."""
    pending: str | None = None
    timed_out: str | None = None
    for line in stream:
        if timed_out is None and "collective operation timeout" in line:
            timed_out = line
        if pending is not None:
            if "<frozen runpy>" in line:  # torchrun's own traceback: its report follows
                pending = None
                break
            sink.write(pending)
            pending = None
        if line.startswith("Traceback (most recent call last):"):
            pending = line
            continue
        if line[:1] in ("W", "E", "I") and "torch/distributed/elastic/" in line:
            continue
        sink.write(line)
        sink.flush()
    if pending is not None:
        sink.write(pending)
    for _ in stream:  # drain the report
        pass
    return timed_out


def launch_stage(name: str, run_dir: Path, launch: Launch, *, profile: str | None,
                 params_path: str | None, parent_run_id: str | None, restart: bool,
                 progress: bool) -> None:
    """Run training stage `name` on `launch.nproc` x `launch.nnodes` processes and wait.

    Raises the workers' own one-line `AmaliaError` when a worker fails for a known reason,
    else an `AmaliaError` naming the exit status.
    """
    if name not in TRAINING_STAGES:
        raise ConfigError(f"--nproc applies to the training stages ({', '.join(TRAINING_STAGES)}),"
                          f" not '{name}'")
    from components.accel import available_cores

    check_nproc(launch.nproc, launch.nnodes)
    errors = Path(tempfile.mkdtemp(prefix="amalia-launch-"))
    args = [name, "--run-dir", str(run_dir)]
    if profile:
        args += ["--profile", profile]
    if params_path:
        args += ["--params", str(params_path)]
    if parent_run_id:
        args += ["--parent-run-id", parent_run_id]
    if restart:
        args.append("--restart")
    if not progress:
        args.append("--no-progress")
    env = {**os.environ, "AMALIA_ERROR_DIR": str(errors), "OMP_NUM_THREADS":
           os.environ.get("OMP_NUM_THREADS", str(max(1, available_cores() // launch.nproc)))}
    try:
        proc = subprocess.Popen(torchrun_command(launch, args), env=env,
                                stderr=subprocess.PIPE, text=True, errors="replace")
        timed_out = forward_worker_stderr(proc.stderr, sys.stderr)
        proc.wait()
        if proc.returncode != 0:
            messages = sorted(errors.glob("rank-*.txt"))
            if messages:
                raise AmaliaError(_first_cause(messages))
            if timed_out:
                raise timeout_message(timed_out)
            raise AmaliaError(f"stage {name}: torchrun exited with status {proc.returncode}",
                              "see the worker logs above")
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def _first_cause(messages: list[Path]) -> str:
    """The line to show for a failed launch: a rank's own error, preferring one that is
    not a collective timeout (when rank 1 fails for a reason, rank 0 then times out waiting
    for it: the reason is the news)."""
    lines = [m.read_text().strip() for m in messages]
    causes = [line for line in lines if "train.ddp_timeout_s" not in line]
    return (causes or lines)[0]
