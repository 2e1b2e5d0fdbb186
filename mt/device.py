"""Where and how a model computes: the device, the autocast dtype, the CPU threads.

Shared by training, translation, tuning and serving; kept apart from ``mt.train`` so that
translating one sentence does not import the training loop (and sacreBLEU with it).
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from mt.config import PRECISIONS
from mt.errors import MTError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MTError(f"train.device: '{name}' requested but CUDA is not available; use 'auto' or 'cpu'")
    return device


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). Master weights always stay fp32."""
    if precision not in PRECISIONS:  # unchecked, anything else ran fp16 (emulated, slowly, on a CPU)
        hint = " (int8 is quantize='int8')" if precision == "int8" else ""
        raise MTError(f"precision: '{precision}' is not supported; use fp32, bf16, fp16 or auto{hint}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise MTError("train.precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def cpu_threads(threads: int) -> int:
    """A ``threads`` setting as a number: 0 means every core."""
    return threads or os.cpu_count() or 1


def set_threads(threads: int) -> None:
    torch.set_num_threads(cpu_threads(threads))
