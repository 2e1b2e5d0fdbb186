"""How fast a training step could be: the step against its own matrix products alone.

Runs ``Trainer.train_step`` (forward, backward, clipping, Adam: what ``mt train`` runs) on a
config's real batches (the first ``--batches`` of epoch 1, after one warm-up batch) or on
``--random B S T`` batches (B sentences, S source and T target tokens, no padding), and
records, with a ``TorchDispatchMode``, every matrix product one step issues below autograd
and autocast (``mm``, ``addmm``, ``bmm``, ``baddbmm``; ``scripts/bench_decode_floor.py`` also
counts the linears decoding runs whole) with the shapes, strides and dtypes of the real step,
forward and backward. It then replays those products alone, back to back.

The replay's time is a floor for the step with these kernels: if every other operator
(norms, dropout, casts, softmax, the optimizer, Python) took no time, the step would still
take that long. Also printed: the products' FLOPs and rate, and the rate of one 2048 x 2048
product in the step's compute dtype (the probe ``scripts/bench_model.py`` calls the peak).
A speed goal below the floor needs faster products, not fewer overheads.

    python scripts/bench_step_floor.py configs/multi30k_de_en.yaml [key=value ...] [--batches 10] [--repeats 5]
    python scripts/bench_step_floor.py configs/multi30k_de_en.yaml --random 128 34 33   # bench_model's small shape
    cd OLD_WORKTREE && PYTHONPATH=. python /path/to/scripts/bench_step_floor.py ...   # an older commit's step
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mt
from bench_model import matmul_peak
from mt.batching import batch_from_rows, bucket_order
from mt.config import load_config
from mt.decode_mode import describe, machine
from mt.train import Trainer

# the mt command's allocator setting; old commits (PYTHONPATH=OLD_WORKTREE times their code) had none, and an
# editable install of today's mt could otherwise lend them its mt/memory.py
if (Path(mt.__file__).parent / "memory.py").exists():
    from mt.memory import DEFAULT_ALLOCATOR, tune_allocator
else:
    DEFAULT_ALLOCATOR, tune_allocator = "glibc", lambda: False

aten = torch.ops.aten
# matrix products as the dispatcher sees them: dense ones (with autograd on, linear and matmul arrive
# here already decomposed; under inference mode as themselves), the packed oneDNN linear of mt's fp32
# decoding (``PackedLinear``) and the dynamic int8 linear of ``--quantize int8``
PRODUCTS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
            aten.linear.default, aten.matmul.default,
            torch.ops.mkldnn._linear_pointwise.default, torch.ops.quantized.linear_dynamic.default}
WITH_BIAS_FIRST = {aten.addmm.default, aten.baddbmm.default}  # (bias, a, b): the left operand comes second


class RecordProducts(TorchDispatchMode):
    """Keeps every matrix product's function, arguments and FLOPs; values do not matter, shapes do."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in PRODUCTS:
            # the same views (shapes, strides, dtypes) the step used: a layout change would time other kernels
            keep = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            self.calls.append((func, keep, dict(kwargs)))
            left = args[1] if func in WITH_BIAS_FIRST else args[0]
            self.flops += 2 * left.numel() * out.shape[-1]  # 2 x (batch x) m x k x n
        return out


def replay(calls: list[tuple]) -> float:
    start = time.perf_counter()
    for func, args, kwargs in calls:
        func(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batches", type=int, default=10, help="real batches timed (after one warm-up)")
    parser.add_argument("--random", type=int, nargs=3, metavar=("B", "S", "T"),
                        help="random unpadded batches of B sentences, S source and T target tokens instead")
    parser.add_argument("--repeats", type=int, default=5, help="replays of the recorded products per batch")
    args = parser.parse_args()
    allocator = os.environ.get("MT_ALLOCATOR", DEFAULT_ALLOCATOR) if tune_allocator() else "glibc"  # as `mt` sets it
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(args.config, [*args.overrides, f"run_dir={run_dir}"])
        trainer = Trainer(config, overwrite=True)
        data, t = trainer.train_data, config.train
        if args.random:
            n, s, tl = args.random
            rng = np.random.default_rng(0)
            vocab = min(trainer.tokenizers.src.vocab_size, trainer.tokenizers.tgt.vocab_size)
            rows = [(list(rng.integers(4, vocab, s - 1)), list(rng.integers(4, vocab, tl - 1))) for _ in range(n)]
            batches = [batch_from_rows([r[0] for r in rows], [r[1] for r in rows])] * (args.batches + 1)
            what = f"random {n} x {s} -> {tl}"
        else:
            order = bucket_order(data.src_lens, data.tgt_lens, t.batch_tokens, t.seed, 0,
                                 examples=data.epoch_examples(t.seed, 0))
            batches = [batch_from_rows(data.rows(ids, "src"), data.rows(ids, "tgt")) for ids in order[: args.batches + 1]]
            what = f"first {args.batches} real batches of epoch 1"
        dtype = trainer.amp_dtype or torch.float32
        print(f"--- bench_step_floor: {args.config} {' '.join(args.overrides)}; {what}; compute {dtype}")
        print(f"{describe(machine())}, allocator {allocator}; load before {os.getloadavg()}")
        trainer.train_step([batches[0]])  # warm-up
        steps, floors, step_flops, counts = [], [], [], collections.Counter()
        for batch in batches[1:]:
            start = time.perf_counter()
            trainer.train_step([batch])
            steps.append(time.perf_counter() - start)
            recorder = RecordProducts()
            with recorder:
                trainer.train_step([batch])
            replay(recorder.calls)  # warm-up of these shapes
            floors.append(statistics.median(replay(recorder.calls) for _ in range(args.repeats)))
            step_flops.append(recorder.flops)
            counts.update(str(f).split(".")[1] for f, _, _ in recorder.calls)
        step, floor = statistics.median(steps), statistics.median(floors)
        gflop = statistics.median(step_flops) / 1e9
        peak = matmul_peak(dtype) / 1e9
        per_step = {name: n / len(steps) for name, n in counts.items()}
        print(f"products per step: {per_step} ({len(steps)} batches); {gflop:.1f} GFLOP a step (median)")
        print("| measure | ms | share of the step | GFLOP/s |")
        print("|---|---|---|---|")
        print(f"| whole step (median) | {step * 1000:.0f} | 100% | {gflop / step:.0f} |")
        print(f"| its products alone, replayed (median) | {floor * 1000:.0f} | {floor / step:.0%} | {gflop / floor:.0f} |")
        print(f"| the same FLOPs at the 2048 x 2048 probe's rate | {gflop / peak * 1000:.0f} | "
              f"{gflop / peak / step:.0%} | {peak:.0f} |")
        print(f"everything but the products: {(step - floor) * 1000:.0f} ms; the step can be at most "
              f"{step / floor:.2f}x faster with these product kernels; load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
