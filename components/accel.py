"""Runtime detection: which device, dtype, attention kernel and launcher this box can use.

The same code runs on a 2-core CPU laptop and on a GPU node; nothing is configured by
hand. `detect_runtime()` decides once per process:

- device: `cuda` when torch sees a GPU, else `cpu`;
- dtype: bfloat16 when the GPU supports it, else float32 (CPU always trains in fp32);
- attention: `flash_attention_2` when `flash_attn` imports and we train in bf16 on CUDA,
  else `sdpa`;
- DeepSpeed: used only for multi-process runs (`WORLD_SIZE` > 1) when it imports.

`Runtime.describe()` is the one line logged at the start of every training stage, e.g.
"CPU fallback: fp32, sdpa attention, no DeepSpeed (2 threads)".
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: torch.dtype
    attn_implementation: str
    world_size: int
    deepspeed_available: bool
    num_threads: int

    @property
    def use_deepspeed(self) -> bool:
        return self.deepspeed_available and self.world_size > 1

    @property
    def dtype_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(
            self.dtype, str(self.dtype)
        )

    def describe(self) -> str:
        launcher = (
            f"DeepSpeed on {self.world_size} processes" if self.use_deepspeed else "no DeepSpeed"
        )
        attn = f"{self.attn_implementation} attention"
        if self.device == "cpu":
            return (f"CPU fallback: {self.dtype_name}, {attn}, {launcher} "
                    f"({self.num_threads} threads)")
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else self.device
        return f"GPU {name}: {self.dtype_name}, {attn}, {launcher}"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware, so containers report their share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads: `AMALIA_NUM_THREADS`, else one per available core.

    More threads than cores only adds contention on a small shared box.
    """
    n = num_threads or int(os.environ.get("AMALIA_NUM_THREADS", 0)) or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@lru_cache(maxsize=1)
def detect_runtime() -> Runtime:
    """Probe the box once; see the module docstring for the rules."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        # flash-attn kernels only take half precision
        flash = _importable("flash_attn") and dtype == torch.bfloat16
        attn = "flash_attention_2" if flash else "sdpa"
        threads = torch.get_num_threads()
    else:
        dtype, attn = torch.float32, "sdpa"
        threads = configure_threads()
    return Runtime(
        device="cuda" if cuda else "cpu",
        dtype=dtype,
        attn_implementation=attn,
        world_size=world,
        deepspeed_available=_importable("deepspeed"),
        num_threads=threads,
    )


def inference_autocast(module: torch.nn.Module):
    """Autocast for a forward pass outside the Trainer (probes, reference scoring): on CUDA
    in bf16 (fp16 without bf16), where the fp32 master weights would otherwise run slow
    fp32 matmuls and flash-attention 2 (half precision only) would refuse the inputs; a
    no-op on CPU."""
    import contextlib

    param = next(module.parameters(), None)
    if param is None or param.device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
