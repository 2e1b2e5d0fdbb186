"""Where decoding time goes, by operator group, from torch.profiler (issue #14, goal 4).

Translates the first ``--limit`` sentences of Multi30k test2016 with a trained run, greedy
and beam 5, as ``mt translate`` does (``Translator.translate``), and sums the operators'
self CPU time into groups: linear/matmul, output projection (matrix products with the
vocabulary as a dimension), log_softmax/topk/argmax, attention, cache cat/index_select,
copies (reshape/transpose/contiguous), norms, elementwise, other. "Python/dispatch" is
the profiled wall time that no operator claims (the interpreter between operators, the
search's bookkeeping, the profiler's own cost). Also counts torch calls per decoder step
and times one decoder step of a single row (all overhead, almost no arithmetic).

    python scripts/profile_decode.py RUN [--limit 300] [--threads 2] [--beams 1 5]
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

from mt.data import read_lines
from mt.translate import Translator

GROUPS = [  # first matching substring of the operator name wins (after the output projection)
    ("log_softmax/topk/argmax", ("log_softmax", "topk", "argmax", "::max", "sort")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax", "baddbmm")),
    ("linear/matmul", ("addmm", "::mm", "bmm", "matmul", "linear", "quantized")),
    ("cache cat/index_select", ("::cat", "index_select", "aten::index", "gather")),
    ("copies (reshape/transpose)", ("copy_", "contiguous", "clone", "_to_copy", "::to", "reshape", "empty")),
    ("norms", ("layer_norm",)),
    ("elementwise", ("add", "mul", "sub", "div", "relu", "threshold", "masked", "fill", "embedding", "where",
                     "ne", "eq", "any", "nonzero", "repeat", "arange", "full", "sum", "lt", "ge", "gt", "bitwise")),
]


def group_of(name: str, shapes: list, vocab: int) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("addmm", "::mm", "linear", "quantized")) and any(
            vocab in s for s in shapes if isinstance(s, list)):
        return "output projection"
    for group, keys in GROUPS:
        if any(k in lowered for k in keys):
            return group
    return "other ops"


class CountCalls(TorchFunctionMode):
    """Counts torch function calls (each a trip through Python and the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or checkpoint")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--limit", type=int, default=300, help="the first N sentences of test2016")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--quantize", default=None, help="int8: profile the dynamically quantized model")
    args = parser.parse_args()
    src = read_lines(Path(args.data) / "multi30k" / "test2016.de")[:args.limit]
    translator = Translator.from_pretrained(args.model, device="cpu", threads=args.threads, quantize=args.quantize)
    model = translator.model
    vocab = getattr(model.output, "out_features", None) or model.output.weight.size(0)  # int8: weight() is a method
    print(f"--- profile_decode: {args.model}, test2016[:{len(src)}], {args.threads} threads, "
          f"ISA {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"quantize {args.quantize}; load {os.getloadavg()}")
    translator.translate(src[:50], beam_size=5)  # warm-up

    steps = collections.Counter()
    decode = model.decode

    def counted_decode(*a, **kw):
        steps["decode"] += 1
        return decode(*a, **kw)

    for beam in args.beams:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            translator.translate(src, beam_size=beam)
            times.append(time.perf_counter() - start)
        wall = statistics.median(times)
        model.decode = counted_decode
        steps.clear()
        counter = CountCalls()
        with counter:
            translator.translate(src, beam_size=beam)
        n_steps = steps["decode"]
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            translator.translate(src, beam_size=beam)
        profiled = time.perf_counter() - start
        del model.decode
        totals: collections.Counter = collections.Counter()
        for event in prof.key_averages(group_by_input_shape=True):
            totals[group_of(event.key, event.input_shapes, vocab)] += event.self_cpu_time_total
        totals["Python/dispatch (no operator)"] = max(0.0, profiled * 1e6 - sum(totals.values()))
        whole = sum(totals.values())
        search = "greedy" if beam == 1 else f"beam {beam}"
        print(f"\n{search}: {len(src) / wall:.1f} sentences/s unprofiled (median of 3, {wall:.2f} s), "
              f"{profiled:.2f} s profiled; {n_steps} decoder steps, {counter.calls / n_steps:.0f} torch calls "
              f"per step (search included), {1e3 * wall / n_steps:.2f} ms per step")
        print("| group | share | ms per decoder step |")
        print("|---|---|---|")
        for group, micros in totals.most_common():
            print(f"| {group} | {micros / whole:.1%} | {micros / 1000 / n_steps:.2f} |")
        by_op: collections.Counter = collections.Counter()
        for event in prof.key_averages():
            by_op[event.key] += event.self_cpu_time_total
        print("top operators: " + ", ".join(f"{k} {v / whole:.1%}" for k, v in by_op.most_common(14)))

    # one row, one step: the cost of a decoder step that is almost all overhead
    with torch.inference_mode():
        memory, src_mask = model.encode(torch.tensor([[5, 6, 7, 8, 2]]))
        times = []
        for _ in range(5):
            cache = model.new_cache()
            tokens = torch.tensor([[1]])
            start = time.perf_counter()
            for _ in range(20):
                model.decode(tokens, memory, src_mask, cache)
            times.append((time.perf_counter() - start) / 20)
    print(f"\none row: {1e3 * statistics.median(times):.3f} ms per decoder step (median of 5 x 20 steps)")


if __name__ == "__main__":
    main()
