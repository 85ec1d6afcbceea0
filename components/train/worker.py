"""One process of a distributed training stage, as `torchrun` starts it.

    python -m torch.distributed.run --nproc-per-node N -m components.train.worker \\
        sft --run-dir runs/x [--profile tiny] [--params params.yaml] [--parent-run-id ID]

Every rank runs the same stage function (`components.stages.run_stage`); rank 0 wraps it
in the stage's MLflow run (`components.pipeline.run_tracked_stage`) and alone writes the
manifest. `amalia-vl stage NAME --nproc N` and `retrain --nproc N` build this command
(`components.train.distributed.launch_stage`); a Kubernetes PyTorchJob runs it directly.
A known failure (`AmaliaError`) is written as one line to `$AMALIA_ERROR_DIR/rank-R.txt`
for the launcher to show, and the process exits 1.

Settings are loaded before the process group is formed, so the group is created with
`train.ddp_timeout_s` (`distributed.init_process_group`); a rank that waits longer than
that for the others fails with one line naming the setting
(`distributed.collective_timeout_error`), not a gloo/NCCL traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from components.errors import AmaliaError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="components.train.worker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["align", "sft", "dpo"])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--params", default=None, help="params.yaml path")
    ap.add_argument("--parent-run-id", default=None, help="MLflow parent (retrain) run")
    ap.add_argument("--restart", action="store_true", help="discard the stage's checkpoints")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from components.train.distributed import (
        collective_timeout_error,
        init_process_group,
        world,
    )

    ws = world()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # N ranks x weight-loading bars; rank 0 has its own
    if not ws.is_main:
        logging.getLogger().setLevel(logging.ERROR)
        hf_logging.set_verbosity_error()
    try:
        from components.settings import load_settings

        settings = load_settings(args.profile, args.params)
        timeout_s = settings.engine.ddp_timeout_s
        try:
            init_process_group(timeout_s)
            if ws.is_main:
                from components.pipeline import run_tracked_stage

                run_tracked_stage(args.stage, settings, args.run_dir, args.parent_run_id,
                                  progress=not args.no_progress, restart=args.restart)
            else:
                from components.stages import run_stage

                run_stage(args.stage, settings, args.run_dir, progress=False,
                          restart=args.restart)
        except RuntimeError as exc:
            timed_out = collective_timeout_error(exc, timeout_s)
            if timed_out is None:
                raise
            raise timed_out from exc
    except AmaliaError as exc:
        folder = os.environ.get("AMALIA_ERROR_DIR")
        if folder:  # our launcher prints it, once for all ranks
            Path(folder, f"rank-{ws.rank}.txt").write_text(str(exc))
        else:  # started by torchrun directly (a PyTorchJob): say it here
            print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
