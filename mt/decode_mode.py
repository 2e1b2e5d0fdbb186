"""Decode modes: fp32, int8 (dynamic quantization), bf16 and fp16, which of them this machine
runs natively, what ``--precision auto`` loads, and the rule ``mt tune --modes`` chooses by.

A reduced mode is only worth it where it is both faster and as good, and both depend on the
machine and the model, so ``auto`` never guesses: it loads the mode that ``mt tune RUN
--modes`` measured on the validation set (``decode.mode`` in the run's config.yaml), and fp32
for a run never measured.
"""
from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import torch

from mt.config import DECODE_MODES
from mt.device import cpu_supports_bf16

BLEU_TOLERANCE = 0.2  # a mode may lose at most this much validation BLEU against fp32


def mode_options(mode: str) -> dict:
    """``Translator.from_pretrained`` keyword arguments of a mode."""
    return {"fp32": dict(precision="fp32", quantize=None), "int8": dict(precision="fp32", quantize="int8"),
            "bf16": dict(precision="bf16", quantize=None), "fp16": dict(precision="fp16", quantize=None)}[mode]


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The int8 mode's model: dynamic int8 quantization of every linear layer, weights stored in int8,
    activations quantized on the fly (CPU)."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


def unavailable_reason(mode: str, device: torch.device) -> str | None:
    """Why ``mode`` should not run on ``device`` (None: it should). bf16 on a CPU without native
    bf16 runs emulated, correct but many times slower than fp32, so it is no candidate there."""
    if device.type == "cpu":
        if mode == "fp16":
            return "fp16 needs a CUDA device"
        if mode == "bf16" and not cpu_supports_bf16():
            return "this CPU has no native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False)"
    elif device.type == "cuda":
        if mode == "int8":
            return "int8 dynamic quantization runs on the CPU only"
        if mode == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16"
    elif mode != "fp32":
        return f"only fp32 is supported on {device.type}"
    return None


def available_modes(device: torch.device) -> list[str]:
    """The modes worth measuring on ``device``, fp32 first."""
    return [mode for mode in DECODE_MODES if unavailable_reason(mode, device) is None]


def resolve(precision: str, quantize: str | None, tuned: str | None,
            device: torch.device) -> tuple[str, str | None, str, str | None]:
    """(precision, quantize, mode name, note) to load: explicit options as given; ``precision="auto"``
    the tuned mode where ``device`` has it, else fp32 (the note says why, or None)."""
    if precision != "auto":
        name = precision if not quantize else quantize if precision == "fp32" else f"{quantize}+{precision}"
        return precision, quantize, name, None
    if quantize:  # --quantize int8 given with auto: int8 is the mode asked for
        return "fp32", quantize, quantize, None
    if tuned is None:  # never measured: fp32, also where bf16 is native, since nobody checked its BLEU
        return "fp32", None, "fp32", None
    why = unavailable_reason(tuned, device)
    if why is None:
        options = mode_options(tuned)
        return options["precision"], options["quantize"], tuned, None
    return "fp32", None, "fp32", (f"decode.mode {tuned} (measured by mt tune) does not suit this machine: {why}; "
                                  "--precision auto uses fp32")


def choose(table: list[dict], tolerance: float = BLEU_TOLERANCE) -> dict:
    """The row of the fastest mode whose BLEU is within ``tolerance`` of fp32's (inclusive);
    of equally fast ones the first in the table, so fp32 wins a tie."""
    reference = next((row for row in table if row["mode"] == "fp32"), None)
    if reference is None:
        raise ValueError("choosing a mode needs the fp32 row: BLEU is compared with fp32's")
    good = [row for row in table if row["bleu"] >= reference["bleu"] - tolerance - 1e-9]  # 1e-9: float noise
    return max(good, key=lambda row: row["sentences_per_s"])  # max keeps the first of equals


def machine(device: torch.device | None = None) -> dict:
    """What a speed figure depends on: CPU model, its ISA, whether bf16 is native, threads, GPU."""
    flags = set()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    extras = [name for flag, name in [("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")] if flag in flags]
    info = {"cpu": cpu, "cores": os.cpu_count(), "isa": " + ".join([isa] + extras), "bf16_native": cpu_supports_bf16(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: dict) -> str:
    """One line: 'AMD EPYC 7B13 (AVX2), bf16 native: no, 2 cores, 2 threads, torch 2.x'."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (f"{info['cpu']} ({info['isa']}), bf16 native: {'yes' if info['bf16_native'] else 'no'}, "
            f"{info['cores']} cores, {info['threads']} threads, torch {info['torch']}{gpu}")
