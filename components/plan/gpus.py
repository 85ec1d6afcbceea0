"""GPU peak dense bf16 FLOP/s and memory, looked up by the exact CUDA device name.

Numbers (dense, no 2:4 sparsity; vendors print the sparse figure first, halve it):

- H100 SXM5 989 TFLOP/s, 80 GB; H100 PCIe 756, 80 GB; H100 NVL 835, 94 GB: NVIDIA H100
  Tensor Core GPU datasheet (BF16 Tensor Core 1,979 / 1,513 / 1,671 TFLOPS with sparsity).
- H200 SXM 989, 141 GB; H200 NVL 835, 141 GB: NVIDIA H200 datasheet.
- GH200 989 (the Hopper die of H100 SXM), 96 GB HBM3 (480GB module): GH200 datasheet.
- A100 312, 40/80 GB: NVIDIA A100 datasheet (624 with sparsity).
- L40S 362, 48 GB: NVIDIA L40S datasheet (733 with sparsity). L4 121, 24 GB: NVIDIA L4
  datasheet (242 with sparsity). A10 125, 24 GB: NVIDIA A10 datasheet (250 with sparsity).
- A10G (AWS g5) 70, 24 GB: NVIDIA publishes no A10G datasheet; 70 is the figure AWS and
  most MFU tables use (a lower-clocked A10). Treat its MFU as approximate.
- B200 2,250, 180 GB: NVIDIA HGX B200 datasheet (4.5 PFLOPS FP16/BF16 with sparsity).

Lookup is by exact name (`torch.cuda.get_device_name`), never by substring: "NVIDIA H100
PCIe" contains "H100" but has 76% of the SXM peak, and an MFU against the wrong peak is a
wrong number. An unknown name gets no peak (MFU not reported, with a logged reason).
Memory is what `torch.cuda.get_device_properties().total_memory` reports, in GiB, where
known (H100 80GB: 79.6 GiB); else the nominal GB as GiB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    key: str  # the short name `--gpu` and `plan.<stage>.gpu` use
    names: tuple[str, ...]  # exact torch.cuda.get_device_name() strings
    peak_bf16_flops: float  # dense, FLOP/s
    memory_gib: float


GPUS: tuple[Gpu, ...] = (
    Gpu("H100-SXM", ("NVIDIA H100 80GB HBM3",), 989e12, 79.6),
    Gpu("H100-PCIe", ("NVIDIA H100 PCIe",), 756e12, 79.6),
    Gpu("H100-NVL", ("NVIDIA H100 NVL",), 835e12, 93.1),
    Gpu("H200", ("NVIDIA H200",), 989e12, 140.4),
    Gpu("H200-NVL", ("NVIDIA H200 NVL",), 835e12, 139.8),
    Gpu("GH200", ("NVIDIA GH200 480GB",), 989e12, 94.5),
    Gpu("A100-80GB", ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"), 312e12, 79.2),
    Gpu("A100-40GB", ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"), 312e12, 39.4),
    Gpu("L40S", ("NVIDIA L40S",), 362e12, 44.4),
    Gpu("L4", ("NVIDIA L4",), 121e12, 22.0),
    Gpu("A10", ("NVIDIA A10",), 125e12, 22.0),
    Gpu("A10G", ("NVIDIA A10G",), 70e12, 22.0),
    Gpu("B200", ("NVIDIA B200",), 2250e12, 178.4),
)
BY_KEY: dict[str, Gpu] = {g.key.lower(): g for g in GPUS}
BY_NAME: dict[str, Gpu] = {name: g for g in GPUS for name in g.names}


def by_device_name(name: str) -> Gpu | None:
    """The GPU whose CUDA device name is exactly `name`, else None (logged)."""
    gpu = BY_NAME.get(name.strip())
    if gpu is None:
        log.warning("GPU %r is not in components.plan.gpus: its peak FLOP/s is unknown, MFU "
                    "is not reported (add its datasheet numbers there)", name)
    return gpu


def by_key(key: str) -> Gpu | None:
    """The GPU for a short key (`H100-SXM`, case-insensitive) or an exact device name."""
    return BY_KEY.get(key.strip().lower()) or BY_NAME.get(key.strip())


def peak_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the device called exactly `name`, or None."""
    gpu = by_device_name(name)
    return gpu.peak_bf16_flops if gpu else None


def detected() -> Gpu | None:
    """The GPU of this process (device 0), None without CUDA or for an unknown name."""
    import torch

    if not torch.cuda.is_available():
        return None
    return by_device_name(torch.cuda.get_device_name(0))
