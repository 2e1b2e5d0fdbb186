"""Translation speed and BLEU on Multi30k test2016 for a trained run: greedy and beam 5,
fp32 and int8 (and bf16 with --bf16, where the CPU has native bf16), in one run.

    python scripts/bench_translate.py runs/m30k_main [--bf16]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from mt.data import read_lines
from mt.evaluate import bleu
from mt.translate import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or checkpoint")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    src = read_lines(Path(args.data) / "multi30k" / "test2016.de")
    refs = read_lines(Path(args.data) / "multi30k" / "test2016.en")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} threads, torch {torch.__version__}; "
          f"{args.model}, test2016 ({len(src)} sentences)")
    print("| variant | search | sentences/s | target tokens/s | BLEU |")
    print("|---|---|---|---|---|")
    variants = [("fp32", dict()), ("int8", dict(quantize="int8"))] + ([("bf16", dict(precision="bf16"))] if args.bf16 else [])
    for name, options in variants:
        translator = Translator.from_pretrained(args.model, device="cpu", **options)
        translator.translate(src[:50], beam_size=1)  # warm-up
        for beam in (1, 5):
            start = time.perf_counter()
            hyps = translator.translate(src, beam_size=beam)
            seconds = time.perf_counter() - start
            tokens = sum(len(ids) + 1 for ids in translator.tokenizers.tgt.encode(hyps))
            print(f"| {name} | {'greedy' if beam == 1 else f'beam {beam}'} | {len(src) / seconds:.1f} | "
                  f"{tokens / seconds:.0f} | {bleu(hyps, refs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
