"""Training-step speed of mt's Transformer against torch.nn.Transformer of the same shape.

Both get the same random, unpadded batches, the same (tied) embeddings and output
projection, label-smoothed loss and Adam; a step is forward + backward + optimizer step.
Also measures the matrix-product peak of this machine in the same run and reports the
model FLOPs per second as a fraction of it.

    python scripts/bench/model.py [--shapes small base] [--precisions fp32 bf16] [--steps 5] [--compile]

--compile also times mt's model under torch.compile(dynamic=True), as train.compile does
(the first, compiling step is reported separately).
"""
from __future__ import annotations

import argparse
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from common import machine_line, median, timed
from mt.config import ModelConfig
from mt.loss import sequence_loss
from mt.model import Transformer

SHAPES = {  # layers, d_model, heads, d_ff, vocab, batch size x source length x target length
    "small": dict(layers=3, d=256, heads=4, d_ff=1024, vocab=8000, batch=(128, 34, 32)),
    "base": dict(layers=6, d=512, heads=8, d_ff=2048, vocab=32000, batch=(64, 34, 32)),
    "tiny": dict(layers=1, d=32, heads=2, d_ff=64, vocab=100, batch=(4, 6, 5)),  # checks that the script runs
}


class TorchTransformer(nn.Module):
    """torch.nn.Transformer with the same embeddings, positions and tied output as mt's model."""

    def __init__(self, s: dict):
        super().__init__()
        self.embed = nn.Embedding(s["vocab"], s["d"])
        self.core = nn.Transformer(s["d"], s["heads"], s["layers"], s["layers"], s["d_ff"], dropout=0.1,
                                   batch_first=True, norm_first=True)
        self.output = nn.Linear(s["d"], s["vocab"], bias=False)
        self.output.weight = self.embed.weight
        self.scale = math.sqrt(s["d"])
        pos = torch.arange(512)[:, None] * torch.exp(torch.arange(0, s["d"], 2) * (-math.log(10000.0) / s["d"]))
        self.register_buffer("pe", torch.cat([pos.sin(), pos.cos()], dim=1))

    def forward(self, src, tgt):
        x = self.embed(src) * self.scale + self.pe[: src.size(1)]
        y = self.embed(tgt) * self.scale + self.pe[: tgt.size(1)]
        mask = self.core.generate_square_subsequent_mask(tgt.size(1))
        return self.output(self.core(x, y, tgt_mask=mask, tgt_is_causal=True))


def build(kind: str, s: dict) -> nn.Module:
    if kind == "mt":
        cfg = ModelConfig(encoder_layers=s["layers"], decoder_layers=s["layers"], d_model=s["d"], heads=s["heads"],
                          d_ff=s["d_ff"], dropout=0.1, attention_dropout=0.1)
        return Transformer(cfg, s["vocab"], s["vocab"])
    return TorchTransformer(s)


def model_flops(s: dict) -> float:
    """Matrix-product FLOPs of one training step (3 x forward), attention included."""
    B, S, T = s["batch"]
    d, f, L, V = s["d"], s["d_ff"], s["layers"], s["vocab"]
    enc = L * (B * S * (2 * 4 * d * d + 2 * 2 * d * f) + B * 2 * 2 * S * S * d)
    dec = L * (B * T * (2 * 6 * d * d + 2 * 2 * d * f) + B * S * 2 * 2 * d * d
               + B * 2 * 2 * (T * T + T * S) * d)
    return 3 * (enc + dec + B * T * 2 * d * V)


def matmul_peak(dtype: torch.dtype) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b  # warm up

    def five():
        for _ in range(5):
            a @ b

    return 5 * 2 * 2048 ** 3 / timed(five)


def time_steps(model: nn.Module, s: dict, dtype: torch.dtype | None, steps: int) -> tuple[float, float]:
    """(median step time, first step time); the first step includes any compilation."""
    B, S, T = s["batch"]
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(4, s["vocab"], (B, S), generator=g), torch.randint(4, s["vocab"], (B, T + 1), generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    fused = not isinstance(model, TorchTransformer)  # mt's model computes its loss without the full logits

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            if fused:
                loss = sequence_loss(model, src, tgt[:, :-1], tgt[:, 1:], 0.1) / tgt[:, 1:].numel()
            else:
                logits = model(src, tgt[:, :-1])
        if not fused:
            loss = F.cross_entropy(logits.float().reshape(-1, s["vocab"]), tgt[:, 1:].reshape(-1),
                                   label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first = timed(step)
    return median([timed(step) for _ in range(steps)]), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small", "base"], choices=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time mt's model under torch.compile")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="enable_nested_tensor")  # nn.Transformer with norm_first
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# {machine_line()}")
    print("| shape | precision | target tokens | mt step (s) | nn.Transformer step (s) | mt speed-up | "
          "mt target tok/s | model GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        dtype = torch.bfloat16 if precision == "bf16" else None
        peak = matmul_peak(dtype or torch.float32)
        for name in args.shapes:
            s = SHAPES[name]
            torch.manual_seed(0)
            ours, _ = time_steps(build("mt", s), s, dtype, args.steps)
            torch.manual_seed(0)
            theirs, _ = time_steps(build("torch", s), s, dtype, args.steps)
            B, S, T = s["batch"]
            flops = model_flops(s) / ours
            print(f"| {name} | {precision} | {B * T} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x | "
                  f"{B * T / ours:.0f} | {flops / 1e9:.1f} | {flops / peak:.0%} (peak {peak / 1e9:.0f} GFLOP/s) |",
                  flush=True)
            if args.compile:
                torch.manual_seed(0)
                compiled, first = time_steps(torch.compile(build("mt", s), dynamic=True), s, dtype, args.steps)
                print(f"| {name}, mt compiled | {precision} | {B * T} | {compiled:.3f} | | "
                      f"{ours / compiled:.2f}x eager mt (first step {first:.0f} s) | "
                      f"{B * T / compiled:.0f} | {model_flops(s) / compiled / 1e9:.1f} | "
                      f"{model_flops(s) / compiled / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
