"""A/B: incremental decoding with the preallocated key/value cache against growing it with torch.cat.

Both variants translate the same sentences with the same model, interleaved (A B A B ...),
and the medians and their ratio are printed with the CPU, its ISA and the machine load, so a
run on a busy machine still compares like with like.

    python scripts/bench_kv_cache.py RUN_DIR [-i test2016.de] [-n 300] [--repeats 5] [--beam 1 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from mt.data import read_lines
from mt.model import MultiHeadAttention
from mt.translate import Translator


def append_by_cat(cache: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache before: a new tensor every step holding the whole prefix."""
    if "k" in cache:
        k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
    cache["k"], cache["v"], cache["len"] = k, v, k.size(2)
    return k, v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("-i", "--input", default=os.path.join(os.environ.get("MT_DATA_ROOT", "../shared/data"),
                                                              "multi30k", "test2016.de"))
    parser.add_argument("-n", type=int, default=300, help="first N sentences")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--beam", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    lines = read_lines(args.input, "input")[:args.n]
    translator = Translator.from_pretrained(args.run_dir, device="cpu", threads=args.threads)
    prealloc = MultiHeadAttention.append_to_cache
    variants = {"torch.cat": staticmethod(append_by_cat), "preallocated": staticmethod(prealloc)}
    print(f"--- bench_kv_cache: {args.run_dir}, {len(lines)} sentences of {args.input}")
    print(f"CPU {platform.processor() or platform.machine()}, ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; load before {os.getloadavg()}")
    for beam in args.beam:
        times: dict[str, list[float]] = {name: [] for name in variants}
        outputs = {}
        for _ in range(args.repeats):
            for name, append in variants.items():
                MultiHeadAttention.append_to_cache = append
                start = time.perf_counter()
                outputs[name] = translator.translate(lines, beam_size=beam)
                times[name].append(time.perf_counter() - start)
        MultiHeadAttention.append_to_cache = staticmethod(prealloc)
        a, b = (statistics.median(times[n]) for n in variants)
        same = sum(x == y for x, y in zip(*outputs.values()))
        print(f"beam {beam}: torch.cat {len(lines) / a:.1f} sent/s, preallocated {len(lines) / b:.1f} sent/s, "
              f"speed-up {a / b:.2f}x (median of {args.repeats}, interleaved); identical outputs {same}/{len(lines)}")
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
