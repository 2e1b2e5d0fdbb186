"""How fast decoding could be: a search against its own matrix products alone.

Translates the first ``--limit`` sentences of Multi30k test2016 (the run's language pair) with
one decoder on ``--threads`` threads (default 1: what each of ``mt translate``'s decoders runs,
one per core), in each mode (fp32, int8, bf16 where native) and search (greedy, beam 5). Then it
records every matrix product of one such translation (``RecordProducts`` of
``scripts/bench_step_floor.py``: dense products, the packed oneDNN output projection, int8 linears)
and replays them alone. The replay is a floor: with the search's other work (attention's softmax,
norms, top-k, cache reordering, Python) at zero cost, decoding would still take that long, so
``sentences / floor`` is the fastest these product kernels allow. The encoder's fused attention
kernel is not counted as a product (its products are small), so the floor is, if anything, low.

    python scripts/bench_decode_floor.py runs/results/de_en_s1 [--limit 500] [--threads 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench_step_floor import RecordProducts, replay
from bench_translate import languages
from mt import decode_mode
from mt.data import read_lines
from mt.memory import DEFAULT_ALLOCATOR, tune_allocator
from mt.translate import Translator


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or checkpoint")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=500, help="the first N sentences of test2016")
    parser.add_argument("--repeats", type=int, default=2, help="timed translations and replays per cell (median)")
    parser.add_argument("--modes", nargs="+", default=["fp32", "int8", "bf16"], choices=["fp32", "int8", "bf16"])
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    args = parser.parse_args()
    allocator = os.environ.get("MT_ALLOCATOR", DEFAULT_ALLOCATOR) if tune_allocator() else "glibc"
    source, target = languages(Path(args.model))
    src = read_lines(Path(args.data) / "multi30k" / f"test2016.{source}")[: args.limit]
    info = decode_mode.machine()
    print(f"# {decode_mode.describe(info)}; {args.model}, test2016 {source}->{target} "
          f"({len(src)} sentences), 1 decoder x {args.threads} thread(s), median of {args.repeats}; "
          f"malloc: {allocator}; load {os.getloadavg()}")
    print("| mode | beam | sentences/s | products alone: s (share) | GFLOP | products' GFLOP/s | "
          "sentences/s if only the products took time |")
    print("|---|---|---|---|---|---|---|")
    options = {"fp32": {}, "int8": {"quantize": "int8"}, "bf16": {"precision": "bf16"}}
    for mode in args.modes:
        if mode == "bf16" and not info["bf16_native"]:
            print("| bf16 | - | skipped: no native bf16 on this CPU | | | | |")
            continue
        translator = Translator.from_pretrained(args.model, device="cpu", threads=args.threads, decoders=1,
                                                **options[mode])
        translator.translate(src[:50], beam_size=5)  # warm-up
        for beam in args.beams:
            seconds = statistics.median(timed(lambda: translator.translate(src, beam_size=beam))
                                        for _ in range(args.repeats))
            recorder = RecordProducts()
            with recorder:
                translator.translate(src, beam_size=beam)
            replay(recorder.calls)  # warm-up of these shapes
            floor = statistics.median(replay(recorder.calls) for _ in range(args.repeats))
            gflop = recorder.flops / 1e9
            print(f"| {mode} | {beam} | {len(src) / seconds:.1f} | {floor:.2f} ({floor / seconds:.0%}) | {gflop:.1f} "
                  f"| {gflop / floor:.0f} | {len(src) / floor:.0f} ({seconds / floor:.2f}x) |", flush=True)
            del recorder
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
