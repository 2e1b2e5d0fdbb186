"""Translation speed and BLEU on Multi30k test2016 for a trained run, in one process:
greedy and beam 5 for mt fp32, int8 and bf16 (bf16 only where the CPU has native bf16, or
with --force-bf16), and CTranslate2 in each CPU compute type it supports here (float32, int8,
int16, and bfloat16 / int8_bfloat16 where available) on the model exported by `mt export`;
then the issue's ratios: mt fp32 / CTranslate2 fp32, and the best mt mode (the fastest whose
BLEU is within 0.2 of mt fp32's, the rule of `mt tune --modes`) / CTranslate2's fastest compute
type, for greedy and beam 5, with the CPU, its ISA and whether bf16 is native.

Both engines run on --threads threads in one process, each in both of its ways of using
them: mt with one decoder per thread (its default, `--decoders`) and with one decoder on
all of them; CTranslate2 with intra_threads=N (one translation on N threads) and with
inter_threads=N (N translations of one thread each, its batches side by side). The ratios
compare each engine's fastest way.

    python scripts/bench_translate.py runs/m30k_main [--repeats 3] [--no-ct2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mt import decode_mode
from mt.data import read_lines
from mt.evaluate import bleu
from mt.translate import Translator

CT2_CPU_TYPES = ("float32", "int8", "int16", "bfloat16", "int8_bfloat16")  # int8_float32 = int8 on a CPU


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
    info = decode_mode.machine()
    print(f"# {decode_mode.describe(info)}; {args.model}, test2016 ({len(src)} sentences), median of {args.repeats}")
    print("| engine | variant | search | sentences/s | target tokens/s | BLEU |")
    print("|---|---|---|---|---|---|")
    rows: list[dict] = []

    def report(engine: str, variant: str, beam: int, hyps: list[str], seconds: float, tokenizer, mode: str) -> None:
        tokens = sum(len(ids) + 1 for ids in tokenizer.encode(hyps))  # + EOS
        rows.append({"engine": engine, "mode": mode, "beam": beam, "sentences_per_s": len(src) / seconds,
                     "bleu": bleu(hyps, refs)})
        print(f"| {engine} | {variant} | {'greedy' if beam == 1 else f'beam {beam}'} | {len(src) / seconds:.1f} | "
              f"{tokens / seconds:,.0f} | {rows[-1]['bleu']:.2f} |", flush=True)

    variants = [("fp32", dict()), ("int8", dict(quantize="int8")), ("bf16", dict(precision="bf16"))]
    ways = [args.threads, 1] if args.threads > 1 else [1]  # decoders: one per thread, then one on all
    notes = []
    if not (args.force_bf16 or info["bf16_native"]):
        variants.pop(2)
        notes.append("mt bf16 skipped: this CPU has no native bf16 (emulated bf16 is many times slower "
                       "than fp32); --force-bf16 runs it anyway")
    greedy_mt = None
    for name, options in variants:
        for decoders in ways:
            translator = Translator.from_pretrained(args.model, device="cpu", threads=args.threads,
                                                    decoders=decoders, **options)
            translator.translate(src[:50], beam_size=5)  # warm-up
            variant = name if len(ways) == 1 else f"{name}, {decoders} decoder{'s' * (decoders > 1)}"
            for beam in (1, 5):
                hyps, seconds = timed(lambda: translator.translate(src, beam_size=beam), args.repeats)
                report("mt", variant, beam, hyps, seconds, translator.tokenizers.tgt, mode=name)
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
            supported = ctranslate2.get_supported_compute_types("cpu")
            for compute_type in [t for t in CT2_CPU_TYPES if t in supported]:
                mode = "fp32" if compute_type == "float32" else compute_type
                for inter in ways[::-1]:  # intra_threads=N first, then inter_threads=N
                    ct2 = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                                 intra_threads=args.threads // inter, inter_threads=inter)
                    ct2.translate_batch(pieces[:50], beam_size=5)  # warm-up
                    way = "inter" if inter > 1 else "intra"
                    variant = mode if len(ways) == 1 else f"{mode}, {way}_threads={args.threads}"
                    for beam in (1, 5):
                        def run():
                            results = ct2.translate_batch(pieces, beam_size=beam, length_penalty=alpha,
                                                          max_batch_size=args.ct2_batch)
                            return [tgt.sp.decode_pieces(r.hypotheses[0]) for r in results]
                        hyps, seconds = timed(run, args.repeats)
                        report("CTranslate2", variant, beam, hyps, seconds, tgt, mode=mode)
                        if compute_type == "float32" and beam == 1 and inter == 1:
                            same = sum(a == b for a, b in zip(greedy_mt, hyps))
                            notes.append(f"greedy lines identical, mt fp32 vs CTranslate2 fp32: {same}/{len(src)} "
                                           f"({100 * same / len(src):.1f}%)")
    for note in notes:
        print(f"# {note}")
    print_ratios(rows)


def fastest_ways(rows: list[dict]) -> list[dict]:
    """Of each engine, mode and search, the row of its fastest way of using the threads."""
    best: dict = {}
    for row in rows:
        key = (row["engine"], row["mode"], row["beam"])
        if key not in best or row["sentences_per_s"] > best[key]["sentences_per_s"]:
            best[key] = row
    return list(best.values())


def print_ratios(rows: list[dict]) -> None:
    """The issue's two ratios of sentences/s per search, when both engines ran."""
    rows = fastest_ways(rows)
    ct2 = [row for row in rows if row["engine"] == "CTranslate2"]
    if not ct2:
        return
    cells = {"fp32": [], "best": []}
    for beam in (1, 5):
        mt_rows = [row for row in rows if row["engine"] == "mt" and row["beam"] == beam]
        ct2_rows = [row for row in ct2 if row["beam"] == beam]
        mt_fp32 = next(row for row in mt_rows if row["mode"] == "fp32")
        ct2_fp32 = next(row for row in ct2_rows if row["mode"] == "fp32")
        best = decode_mode.choose(mt_rows)
        fastest = max(ct2_rows, key=lambda row: row["sentences_per_s"])
        cells["fp32"].append(f"{mt_fp32['sentences_per_s'] / ct2_fp32['sentences_per_s']:.2f}x")
        cells["best"].append(f"{best['sentences_per_s'] / fastest['sentences_per_s']:.2f}x "
                             f"(mt {best['mode']} / CTranslate2 {fastest['mode']})")
    print()
    print("| ratio of sentences/s | greedy | beam 5 |")
    print("|---|---|---|")
    print(f"| mt fp32 / CTranslate2 fp32 | {' | '.join(cells['fp32'])} |")
    print(f"| best mt mode with BLEU within {decode_mode.BLEU_TOLERANCE:g} of mt fp32 / fastest CTranslate2 "
          f"compute type | {' | '.join(cells['best'])} |")


if __name__ == "__main__":
    main()
