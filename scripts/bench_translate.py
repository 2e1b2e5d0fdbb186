"""Translation speed and BLEU on Multi30k test2016 for a trained run, in one process:
greedy and beam 5 for mt fp32, bf16 (only where the CPU has native bf16, or with
--force-bf16), int8, and CTranslate2 fp32 and int8 on the model exported by `mt export`;
plus how many greedy lines mt fp32 and CTranslate2 fp32 agree on.

    python scripts/bench_translate.py runs/m30k_main [--repeats 3] [--no-ct2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mt.data import read_lines
from mt.evaluate import bleu
from mt.translate import Translator


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(translate, repeats: int) -> tuple[list[str], float]:
    """The output and the median seconds of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = translate()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or checkpoint")
    parser.add_argument("--data", default=os.environ.get("MT_DATA_ROOT", "../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the median time is reported")
    parser.add_argument("--ct2-batch", type=int, default=100, help="CTranslate2 sentences per batch")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 even where the CPU only emulates it")
    parser.add_argument("--no-ct2", action="store_true", help="skip CTranslate2")
    parser.add_argument("--limit", type=int, default=0, help="only the first N sentences (a quick check)")
    args = parser.parse_args()
    src = read_lines(Path(args.data) / "multi30k" / "test2016.de")
    refs = read_lines(Path(args.data) / "multi30k" / "test2016.en")
    if args.limit:
        src, refs = src[:args.limit], refs[:args.limit]
    torch.set_num_threads(args.threads)
    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads, torch {torch.__version__}; "
          f"{args.model}, test2016 ({len(src)} sentences), median of {args.repeats}")
    print("| engine | variant | search | sentences/s | target tokens/s | BLEU |")
    print("|---|---|---|---|---|---|")

    def report(engine: str, variant: str, beam: int, hyps: list[str], seconds: float, tokenizer) -> None:
        tokens = sum(len(ids) + 1 for ids in tokenizer.encode(hyps))  # + EOS
        print(f"| {engine} | {variant} | {'greedy' if beam == 1 else f'beam {beam}'} | {len(src) / seconds:.1f} | "
              f"{tokens / seconds:,.0f} | {bleu(hyps, refs):.2f} |", flush=True)

    variants = [("fp32", dict()), ("bf16", dict(precision="bf16")), ("int8", dict(quantize="int8"))]
    notes = []
    if not (args.force_bf16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        variants.pop(1)
        notes.append("mt bf16 skipped: this CPU has no native bf16 (emulated bf16 is many times slower "
                       "than fp32); --force-bf16 runs it anyway")
    greedy_mt = None
    for name, options in variants:
        translator = Translator.from_pretrained(args.model, device="cpu", threads=args.threads, **options)
        translator.translate(src[:50], beam_size=5)  # warm-up
        for beam in (1, 5):
            hyps, seconds = timed(lambda: translator.translate(src, beam_size=beam), args.repeats)
            report("mt", name, beam, hyps, seconds, translator.tokenizers.tgt)
            if name == "fp32" and beam == 1:
                greedy_mt = hyps
    tgt = translator.tokenizers.tgt
    alpha = translator.config.decode.length_penalty

    if not args.no_ct2:
        try:
            import ctranslate2
        except ImportError:
            ctranslate2 = None
            notes.append("CTranslate2 skipped: pip install 'mt[ctranslate2]'")
    if not args.no_ct2 and ctranslate2 is not None:
        from mt.export import export_ctranslate2

        pieces = [translator.tokenizers.src.pieces(line) for line in src]
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = export_ctranslate2(args.model, Path(tmp) / "ct2")
            for compute_type in ("float32", "int8"):
                ct2 = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                             intra_threads=args.threads, inter_threads=1)
                ct2.translate_batch(pieces[:50], beam_size=5)  # warm-up
                for beam in (1, 5):
                    def run():
                        results = ct2.translate_batch(pieces, beam_size=beam, length_penalty=alpha,
                                                      max_batch_size=args.ct2_batch)
                        return [tgt.sp.decode_pieces(r.hypotheses[0]) for r in results]
                    hyps, seconds = timed(run, args.repeats)
                    report("CTranslate2", "fp32" if compute_type == "float32" else compute_type, beam, hyps,
                           seconds, tgt)
                    if compute_type == "float32" and beam == 1:
                        same = sum(a == b for a, b in zip(greedy_mt, hyps))
                        notes.append(f"greedy lines identical, mt fp32 vs CTranslate2 fp32: {same}/{len(src)} "
                                       f"({100 * same / len(src):.1f}%)")
    for note in notes:
        print(f"# {note}")


if __name__ == "__main__":
    main()
