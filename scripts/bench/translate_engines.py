"""`mt translate`'s engines on Multi30k test2016 for a trained run: greedy and beam 5, sentences/s and BLEU.

Rows: the best mode (what `mt translate` loads by default: the run's decode.mode, engine and type,
as `mt tune RUN --modes` chose it; fp32 with torch for a run never tuned), the torch engine in
fp32, `mt translate --engine ctranslate2` in each compute type, and CTranslate2 used directly
(`translate_batch` on SentencePiece pieces, each compute type, the faster of intra_threads=N and
inter_threads=N). Then the ratios: best mode / CTranslate2's fastest, best mode / torch fp32.
Prints the CPU, its ISA and whether bf16 is native. Repeats are interleaved (every row is warmed
up first, then each round times every row once).

--agreement: instead, how far the engines agree: for val and test2016, greedy and beam 5, the lines
that torch fp32 and ctranslate2 float32 translate identically, and each one's BLEU.

    python scripts/bench/translate_engines.py RUN [--threads 2] [--repeats 3] [--agreement]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from common import machine_line
from mt import ctranslate2_engine
from mt.config import load_config
from mt.data import read_lines
from mt.evaluate import bleu
from mt.memory import tune_allocator
from mt.pretrained import run_of
from mt.translate import Translator


ENGINE_TYPES = ("float32", "int8")  # CTranslate2's types measured (int8_float32 is int8 on a CPU)


def corpus(run: str, data: Path, split: str, limit: int) -> tuple[list[str], list[str]]:
    config = load_config(run_of(Path(run))[0] / "config.yaml").data
    src = read_lines(data / "multi30k" / f"{split}.{config.src_lang}")
    refs = read_lines(data / "multi30k" / f"{split}.{config.tgt_lang}")
    return (src[:limit], refs[:limit]) if limit else (src, refs)


def agreement(args) -> None:
    torch_fp32 = Translator.from_pretrained(args.run, device="cpu", threads=args.threads, precision="fp32",
                                            engine="torch")
    engine = Translator.from_pretrained(args.run, device="cpu", threads=args.threads, engine="ctranslate2",
                                        compute_type="float32")
    print("| data | search | identical lines | BLEU torch fp32 | BLEU ctranslate2 float32 |")
    print("|---|---|---|---|---|")
    for split in ("val", "test2016"):
        src, refs = corpus(args.run, args.data, split, args.limit)
        for beam in (1, 5):
            mine, theirs = torch_fp32.translate(src, beam_size=beam), engine.translate(src, beam_size=beam)
            same = sum(a == b for a, b in zip(mine, theirs))
            search = "greedy" if beam == 1 else f"beam {beam}"
            print(f"| {split} | {search} | {same}/{len(src)} | {bleu(mine, refs):.2f} | {bleu(theirs, refs):.2f} |",
                  flush=True)


def direct_translate(ct2, pieces: list[list[str]], beam: int, decode) -> list[list[str]]:
    """CTranslate2's translate_batch over length-sorted chunks of 64 sentences, all submitted at once (its
    inter_threads take them side by side), each with mt's length limit for its longest source: without
    it CTranslate2 decodes up to 256 tokens, and a model that repeats itself spends its time there."""
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    chunks = [order[i:i + 64] for i in range(0, len(order), 64)]
    pending = [ct2.translate_batch([pieces[i] for i in chunk], beam_size=beam, length_penalty=decode.length_penalty,
                                   max_decoding_length=int(decode.max_len_a * len(pieces[chunk[-1]])
                                                           + decode.max_len_b) + 1, asynchronous=True)
               for chunk in chunks]
    out: list = [None] * len(pieces)
    for chunk, results in zip(chunks, pending):
        for i, result in zip(chunk, results):
            out[i] = result.result().hypotheses[0]
    return out


def direct_rows(args, src: list[str], translator: Translator) -> list[dict]:
    """CTranslate2 used directly on the run's export, per compute type and way of using the threads."""
    import ctranslate2

    pieces = [translator.tokenizers.src.pieces(line) for line in src]
    tgt, decode = translator.tokenizers.tgt, translator.config.decode
    rows = []
    for compute_type in ENGINE_TYPES:
        model_dir = ctranslate2_engine.exported_model(run_of(Path(args.run))[0], run_of(Path(args.run))[1],
                                                      compute_type, translator.config.data)
        for inter in sorted({1, args.threads}):
            ct2 = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                         intra_threads=args.threads // inter, inter_threads=inter)
            ct2.translate_batch(pieces[:50], beam_size=5)  # warm-up
            for beam in (1, 5):
                def run(ct2=ct2, beam=beam):
                    return [tgt.sp.decode_pieces(hyp) for hyp in direct_translate(ct2, pieces, beam, decode)]
                rows.append(dict(name=f"CTranslate2 direct {compute_type}, "
                                      f"{'inter' if inter > 1 else 'intra'}_threads={args.threads}",
                                 group=f"direct {compute_type}", beam=beam, run=run))
    return rows


def mt_rows(args, src: list[str]) -> tuple[list[dict], Translator]:
    best = Translator.from_pretrained(args.run, device="cpu", threads=args.threads, precision="auto", engine="auto")
    choices = [(f"mt translate best mode ({best.mode})", best),
               ("mt translate --engine torch, fp32", Translator.from_pretrained(
                   args.run, device="cpu", threads=args.threads, precision="fp32", engine="torch"))]
    for compute_type in ENGINE_TYPES:
        choices.append((f"mt translate --engine ctranslate2 {compute_type}", Translator.from_pretrained(
            args.run, device="cpu", threads=args.threads, engine="ctranslate2", compute_type=compute_type)))
    rows = []
    for name, translator in choices:
        translator.translate(src[:50], beam_size=5)  # warm-up
        for beam in (1, 5):
            rows.append(dict(name=name, group=name, beam=beam,
                             run=lambda t=translator, b=beam: t.translate(src, beam_size=b)))
    return rows, best


def speed(args) -> None:
    src, refs = corpus(args.run, args.data, "test2016", args.limit)
    rows, best = mt_rows(args, src)
    rows += direct_rows(args, src, best)
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(args.repeats):
        for row, row_times in zip(rows, times):
            start = time.perf_counter()
            row["hyps"] = row["run"]()
            row_times.append(time.perf_counter() - start)
    print("| engine | search | sentences/s | BLEU |")
    print("|---|---|---|---|")
    for row, row_times in zip(rows, times):
        row["sentences_per_s"], row["bleu"] = len(src) / statistics.median(row_times), bleu(row["hyps"], refs)
        search = "greedy" if row["beam"] == 1 else f"beam {row['beam']}"
        print(f"| {row['name']} | {search} | {row['sentences_per_s']:.1f} | {row['bleu']:.2f} |")
    print()
    print("| ratio of sentences/s | greedy | beam 5 |")
    print("|---|---|---|")
    cells = {"direct": [], "torch": []}
    for beam in (1, 5):
        of_beam = [row for row in rows if row["beam"] == beam]
        mine = of_beam[0]
        fastest = max((row for row in of_beam if row["group"].startswith("direct")),
                      key=lambda row: row["sentences_per_s"])
        torch_fp32 = next(row for row in of_beam if "--engine torch" in row["name"])
        cells["direct"].append(f"{mine['sentences_per_s'] / fastest['sentences_per_s']:.2f}x "
                               f"({fastest['name'].removeprefix('CTranslate2 direct ')})")
        cells["torch"].append(f"{mine['sentences_per_s'] / torch_fp32['sentences_per_s']:.2f}x")
    print(f"| best mode ({best.mode}) / CTranslate2's fastest used directly | {' | '.join(cells['direct'])} |")
    print(f"| best mode ({best.mode}) / torch engine fp32 | {' | '.join(cells['torch'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run directory")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MT_DATA_ROOT", "../shared/data")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the median time counts")
    parser.add_argument("--limit", type=int, default=0, help="only the first N sentences (a quick check)")
    parser.add_argument("--agreement", action="store_true", help="lines and BLEU of torch fp32 vs ctranslate2")
    args = parser.parse_args()
    tune_allocator()  # as the mt command does
    torch.set_num_threads(args.threads)
    print(f"# {machine_line()}; {args.run}")
    agreement(args) if args.agreement else speed(args)


if __name__ == "__main__":
    main()
