"""Where a training step's time goes, by operator group, from torch.profiler.

Runs ``--steps`` training steps of mt's model (the recipe's shape; random batches of
bench_model's small shape) with the fused loss and fused Adam, after one warm-up step, and
sums the operators' self CPU time into groups: matmul, attention, norms, elementwise, loss,
optimizer, casts/copies, data (batch creation), other. Shares of the step are comparable
across machines; absolute times depend on the load (printed).

With ``--precision bf16`` the forward runs under bf16 autocast, as ``train.precision: bf16``
trains (fp32 master weights; the casts show up as casts/copies). The process sets glibc's
allocator as the ``mt`` command does (``mt.memory.tune_allocator``, ``$MT_ALLOCATOR``): in
glibc's defaults every large tensor is mapped and zeroed afresh, which shows up as slow
elementwise operators that ``mt train`` does not have.

``--dropout-masks fast`` profiles ``model.dropout_masks: fast`` (the dropouts are the model's
defaults, the frozen e6cecd9 recipe's: 0.1 on residuals and embeddings, none inside the FFN).

    python scripts/profile_step.py [--steps 3] [--threads 0] [--precision fp32|bf16] [--dropout-masks fast]
"""
from __future__ import annotations

import argparse
import collections
import os
import platform

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from mt.config import ModelConfig
from mt.memory import DEFAULT_ALLOCATOR, tune_allocator
from mt.loss import sequence_loss
from mt.model import Transformer

GROUPS = [  # first matching substring of the operator name wins
    ("optimizer", ("adam",)),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("norms", ("layer_norm",)),
    ("loss", ("logsumexp", "gather", "scatter", "cross_entropy", "LinearCrossEntropy")),
    ("casts/copies", ("::to", "_to_copy", "copy_", "contiguous", "clone", "index_select")),
    ("data", ("randint", "data")),
    ("elementwise", ("add", "mul", "sub", "div", "relu", "threshold", "dropout", "bernoulli", "exp", "masked",
                     "fill", "zero", "sum", "mean", "embedding", "sqrt", "norm", "where", "ne", "eq")),
]


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in lowered for k in keys):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--dropout-masks", choices=["bernoulli", "fast"], default="bernoulli")
    args = parser.parse_args()
    allocator = os.environ.get("MT_ALLOCATOR", DEFAULT_ALLOCATOR) if tune_allocator() else "glibc"
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(encoder_layers=3, decoder_layers=3, d_model=256, heads=4, d_ff=1024,
                                    dropout_masks=args.dropout_masks), 8000, 8000)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step():
        with record_function("data"):
            src, tgt = torch.randint(4, 8000, (128, 34)), torch.randint(4, 8000, (128, 33))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = sequence_loss(model, src, tgt[:, :-1], tgt[:, 1:], 0.1) / tgt[:, 1:].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    totals: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values())
    print(f"--- profile_step: small shape (3+3, d 256, FFN 1024, vocab 8k, 128 x 34 -> 32), "
          f"{args.precision}, {args.dropout_masks} dropout masks, {args.steps} steps")
    print(f"CPU {platform.processor() or platform.machine()}, ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, native bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
          f"torch {torch.__version__}, allocator {allocator}; load {os.getloadavg()}")
    print("| group | share of self CPU time | ms per step |")
    print("|---|---|---|")
    for group, micros in totals.most_common():
        print(f"| {group} | {micros / whole:.1%} | {micros / 1000 / args.steps:.0f} |")
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    print("top operators: " + ", ".join(f"{e.key} {e.self_cpu_time_total / whole:.1%} ({group_of(e.key)})"
                                        for e in top))


if __name__ == "__main__":
    main()
