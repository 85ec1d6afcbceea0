"""torchrun worker of tests/test_chunked_loss.py: the chunked LM loss through real DDP
(gloo), each rank on its own saved micro-batch, gradients saved by rank 0.

    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        tests/chunked_ddp_worker.py FOLDER CHUNK_TOKENS [zero3]

With `zero3`, lm_head's weight carries ZeRO-3's partition marker (`ds_id`, which
DeepSpeed sets on GPUs only) and each rank writes how often its lm_head ran.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import LlavaNextForConditionalGeneration

from components.train.engine import LMObjective


def main(folder: Path, chunk: int, zero3: bool = False) -> None:
    # a stalled collective fails in a minute instead of gloo's default 30
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    saved = torch.load(folder / "batch.pt")
    mine, n = saved["batches"][rank], saved["n"]  # n: label tokens of both micro-batches
    model = LlavaNextForConditionalGeneration.from_pretrained(folder / "model",
                                                              dtype=torch.float32)
    for name, param in model.named_parameters():
        # the tower's last norm is never used (features come from the layer before it):
        # DDP without find_unused_parameters would wait for its gradient and skip the
        # all-reduce of its bucket
        if "post_layernorm" in name:
            param.requires_grad_(False)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    calls = []
    if zero3:
        model.lm_head.weight.ds_id = 0
        model.lm_head.register_forward_hook(lambda m, a, out: calls.append(out.shape[-2]))
    # as AmaliaTrainer.compute_loss: a share of the global-batch sum, times the world
    # size because DDP averages the ranks' gradients
    loss = LMObjective(chunk)(ddp, mine, n)[0] * size
    loss.backward()
    if zero3:
        (folder / f"calls{rank}.json").write_text(json.dumps(calls))
    if rank == 0:
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
                 if p.grad is not None}
        torch.save(grads, folder / "grads.pt")
        (folder / "done.json").write_text(json.dumps({"world_size": size}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["zero3"])
