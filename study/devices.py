"""Where and how a run computes: its device, autocast precision and memory format, chosen once.

Training and evaluation both ask here, so that ``precision: auto`` means the same in both. The
``auto`` choices come from measurement (``benchmarks/bench_train_throughput.py``, BENCHMARKS.md):
- CUDA: bf16 autocast, channels_last.
- CPU: channels_last float32 for MobileNetV2 (bf16 was slower); bf16 autocast for ResNets where
  the CPU computes bf16 natively (AMX or AVX512-BF16: 1.7-2x float32), else float32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from study.errors import UserError


def choose_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; other names are checked against this machine.

    >>> choose_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from study.config import DEVICE, DEVICES

    if not DEVICE.match(name):
        raise UserError(f"train.device {name!r} is not a device; use {DEVICES}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"train.device={name} but this machine has {torch.cuda.device_count()} CUDA devices"
            " (cuda:0 ...); use train.device=cuda or a smaller N"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={name} but MPS is not available here; use train.device=auto or cpu")
    return device


def autocast_dtype(device: torch.device, precision: str, backbone: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (auto, fp32 or bf16) for a backbone; None for float32.

    >>> autocast_dtype(torch.device("cpu"), "auto", "mobilenet_v2") is None
    True
    """
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda":
        return torch.bfloat16
    if backbone.startswith("resnet") and cpu_computes_bf16():
        return torch.bfloat16
    return None


def uses_channels_last(device: torch.device, channels_last: bool) -> bool:
    """Whether images and weights are kept channels_last (NHWC); faster on CUDA and on CPU alike."""
    return channels_last and device.type in ("cuda", "cpu")


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16), read from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))
