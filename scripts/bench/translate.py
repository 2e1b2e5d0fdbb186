"""Translation speed and BLEU on Multi30k test2016 (the run's language pair) for a trained run, in one process:
greedy and beam 5 for mt fp32, int8 and bf16 (bf16 only where the CPU has native bf16, or
with --force-bf16), and CTranslate2 in each CPU compute type it supports here (float32, int8,
int16, and bfloat16 / int8_bfloat16 where available) on the model exported by `mt export`;
then two ratios: mt fp32 / CTranslate2 fp32, and the best mt mode (the fastest whose
BLEU is within 0.2 of mt fp32's, the rule of `mt tune --modes`) / CTranslate2's fastest compute
type, for greedy and beam 5, with the CPU, its ISA and whether bf16 is native.

Both engines run on --threads threads in one process, each in both of its ways of using
them: mt with one decoder per thread (its default, `--decoders`) and with one decoder on
all of them; CTranslate2 with intra_threads=N (one translation on N threads) and with
inter_threads=N (N translations of one thread each, its batches side by side). The ratios
compare each engine's fastest way.

The process sets glibc's allocator as the `mt` command does (`mt.memory.tune_allocator`,
`$MT_ALLOCATOR`, default `heap`), so mt is measured as `mt translate` runs (CTranslate2, in
the same process, gets the same malloc). The repeats are interleaved: every row is set up and
warmed up first, then each round times every row once, so a machine whose speed drifts
within the run moves all rows alike.

    python scripts/bench/translate.py runs/m30k_main [--repeats 3] [--no-ct2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from common import machine_line, median
from mt import decode_mode
from mt.config import load_config
from mt.data import read_lines
from mt.evaluate import bleu
from mt.memory import DEFAULT_ALLOCATOR, tune_allocator
from mt.pretrained import run_of
from mt.translate import Translator

CT2_CPU_TYPES = ("float32", "int8", "int16", "bfloat16", "int8_bfloat16")  # int8_float32 = int8 on a CPU


def time_interleaved(cells: list[dict], repeats: int) -> None:
    """Each cell's ``run`` ``repeats`` times, round by round over all cells; sets each cell's
    ``hyps`` (its output) and ``seconds`` (the median)."""
    times: list[list[float]] = [[] for _ in cells]
    for _ in range(repeats):
        for cell, cell_times in zip(cells, times):
            start = time.perf_counter()
            cell["hyps"] = cell["run"]()
            cell_times.append(time.perf_counter() - start)
    for cell, cell_times in zip(cells, times):
        cell["seconds"] = median(cell_times)


def languages(model: Path) -> tuple[str, str]:
    """The run's source and target language (from its config.yaml); de, en for a bare checkpoint."""
    config = run_of(model)[0] / "config.yaml"  # a run directory, or a checkpoint inside one
    if not config.is_file():
        return "de", "en"
    data = load_config(config).data
    return data.src_lang, data.tgt_lang


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
    source, target = languages(Path(args.model))
    src = read_lines(Path(args.data) / "multi30k" / f"test2016.{source}")
    refs = read_lines(Path(args.data) / "multi30k" / f"test2016.{target}")
    if args.limit:
        src, refs = src[:args.limit], refs[:args.limit]
    torch.set_num_threads(args.threads)
    allocator = os.environ.get("MT_ALLOCATOR", DEFAULT_ALLOCATOR) if tune_allocator() else \
        "the C library's own (not glibc, MT_ALLOCATOR=glibc, or MALLOC_MMAP_THRESHOLD_ set)"
    info = decode_mode.machine()
    print(f"# {machine_line()}; {args.model}, test2016 {source}->{target} ({len(src)} sentences), median of "
          f"{args.repeats} interleaved rounds; malloc: {allocator}")
    cells: list[dict] = []  # one per table row: engine, variant, mode, beam, run (-> hypotheses), tokenizer
    variants = [("fp32", dict()), ("int8", dict(quantize="int8")), ("bf16", dict(precision="bf16"))]
    ways = [args.threads, 1] if args.threads > 1 else [1]  # decoders: one per thread, then one on all
    notes = []
    if not (args.force_bf16 or info["bf16_native"]):
        variants.pop(2)
        notes.append("mt bf16 skipped: this CPU has no native bf16 (emulated bf16 is many times slower "
                       "than fp32); --force-bf16 runs it anyway")
    for name, options in variants:
        for decoders in ways:
            translator = Translator.from_pretrained(args.model, device="cpu", threads=args.threads,
                                                    decoders=decoders, **options)
            translator.translate(src[:50], beam_size=5)  # warm-up
            variant = name if len(ways) == 1 else f"{name}, {decoders} decoder{'s' * (decoders > 1)}"
            for beam in (1, 5):
                cells.append(dict(engine="mt", variant=variant, mode=name, beam=beam,
                                  tokenizer=translator.tokenizers.tgt,
                                  run=lambda t=translator, b=beam: t.translate(src, beam_size=b)))
    tgt = translator.tokenizers.tgt
    alpha = translator.config.decode.length_penalty

    if not args.no_ct2:
        try:
            import ctranslate2
        except ImportError:
            ctranslate2 = None
            notes.append("CTranslate2 skipped: pip install 'mt[ctranslate2]'")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_ct2 and ctranslate2 is not None:
            from mt.export import export_ctranslate2

            pieces = [translator.tokenizers.src.pieces(line) for line in src]
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
                        def run(ct2=ct2, beam=beam):
                            results = ct2.translate_batch(pieces, beam_size=beam, length_penalty=alpha,
                                                          max_batch_size=args.ct2_batch)
                            return [tgt.sp.decode_pieces(r.hypotheses[0]) for r in results]
                        cells.append(dict(engine="CTranslate2", variant=variant, mode=mode, beam=beam,
                                          tokenizer=tgt, run=run, intra=inter == 1))
        time_interleaved(cells, args.repeats)

    rows: list[dict] = []
    print("| engine | variant | search | sentences/s | target tokens/s | BLEU |")
    print("|---|---|---|---|---|---|")
    for cell in cells:
        hyps, seconds = cell["hyps"], cell["seconds"]
        tokens = sum(len(ids) + 1 for ids in cell["tokenizer"].encode(hyps))  # + EOS
        rows.append({"engine": cell["engine"], "mode": cell["mode"], "beam": cell["beam"],
                     "sentences_per_s": len(src) / seconds, "bleu": bleu(hyps, refs)})
        search = "greedy" if cell["beam"] == 1 else f"beam {cell['beam']}"
        print(f"| {cell['engine']} | {cell['variant']} | {search} | "
              f"{len(src) / seconds:.1f} | {tokens / seconds:,.0f} | {rows[-1]['bleu']:.2f} |")
    greedy_mt = next(c["hyps"] for c in cells if c["engine"] == "mt" and c["mode"] == "fp32" and c["beam"] == 1)
    greedy_ct2 = next((c["hyps"] for c in cells if c["engine"] == "CTranslate2" and c["mode"] == "fp32"
                       and c["beam"] == 1 and c["intra"]), None)
    if greedy_ct2 is not None:
        same = sum(a == b for a, b in zip(greedy_mt, greedy_ct2))
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
    """The two ratios of sentences/s per search, when both engines ran."""
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
