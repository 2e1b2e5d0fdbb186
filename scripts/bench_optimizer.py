"""A/B of Adam implementations on the recipe model's parameters: for-loop, foreach, fused.

One process, the three variants interleaved (A B C A B C ...), medians and ratios, with the
CPU, ISA and load.

    python scripts/bench_optimizer.py [--repeats 15] [--threads 0]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mt.config import ModelConfig
from mt.decode_mode import describe, machine
from mt.model import Transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    variants = {}
    for name, options in {"for-loop": dict(foreach=False), "foreach": dict(foreach=True),
                          "fused": dict(fused=True)}.items():
        torch.manual_seed(0)
        model = Transformer(ModelConfig(encoder_layers=3, decoder_layers=3, d_model=256, heads=4, d_ff=1024),
                            8000, 8000)  # the recipe's shape
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        variants[name] = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
    n_params = sum(p.numel() for p in model.parameters())
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, optimizer in variants.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    print(f"--- bench_optimizer: Adam step over {n_params / 1e6:.1f}M parameters, median of {args.repeats}")
    print(f"{describe(machine())}; load {os.getloadavg()}")
    base = statistics.median(times["for-loop"])
    for name, ts in times.items():
        print(f"{name:>9}: {statistics.median(ts) * 1000:.1f} ms, {base / statistics.median(ts):.2f}x for-loop")


if __name__ == "__main__":
    main()
