"""The ``mt`` command: argument parsing for each verb; the work is done by the library."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from mt.commands import (cmd_attention, cmd_average, cmd_data, cmd_evaluate, cmd_export, cmd_figures, cmd_plot,
                         cmd_serve, cmd_train, cmd_translate, cmd_tune)
from mt.config import PRECISIONS  # no torch: mt/__init__ imports mt.config anyway
from mt.errors import MTError, TrainingInterrupted
from mt.memory import tune_allocator
from mt.plot_labels import LANGUAGES  # no matplotlib until a figure is drawn

EXIT_USER_ERROR = 2
# The verbs that train or decode at length, which the C allocator and oneDNN cache settings make faster and
# smaller (measured for training and translation: mt/memory.py, docs/performance.md); tune and serve decode as
# translate does. The other verbs keep the C library's defaults.
MEMORY_TUNED_VERBS = ("train", "translate", "tune", "serve")


def add_decoding_hardware_options(p: argparse.ArgumentParser) -> None:
    """Where and how a model decodes: the same options for mt translate and mt serve."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="fp32, bf16, fp16, or auto (default): the run's decode.mode, the fastest mode within 0.2 "
                        "validation BLEU of fp32 as measured by mt tune RUN --modes, where this machine has it; "
                        "fp32 for a run never measured. --precision fp32 / --quantize int8 override it")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = every core)")
    p.add_argument("--decoders", type=int, default=0,
                   help="decoding threads (per model for mt serve), each decoding its own batch on its share of "
                        "--threads (default: one per core on CPU, at most 4: a beam search's small operators keep "
                        "one core busy, not two; 1 on a GPU)")
    p.add_argument("--quantize", choices=["int8"], default=None, help="int8 dynamic quantization of linear layers (CPU)")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Which decoder runs the searches: mt's torch code or CTranslate2 (mt.ctranslate2_engine)."""
    from mt.config import ENGINE_COMPUTE_TYPES

    p.add_argument("--engine", default="auto", choices=["auto", "torch", "ctranslate2"],
                   help="torch (the reference), ctranslate2 (the model exported once into the run directory; what "
                        "it cannot do exactly decodes with torch, with a note), or auto (default): the engine of the "
                        "run's decode.mode as chosen by mt tune RUN --modes, torch for a run never measured; "
                        "CTranslate2 runs one worker per --decoders")
    p.add_argument("--compute-type", default=None, choices=ENGINE_COMPUTE_TYPES,
                   help="with --engine ctranslate2: its compute type (default: from --precision / --quantize: "
                        "fp32 float32, bf16 bfloat16, int8 int8; auto: the tuned one, else float32)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    parser = argparse.ArgumentParser(prog="mt", description="Transformer machine translation: train, translate, evaluate.",
                                     parents=[common])
    verbs = parser.add_subparsers(dest="verb", required=True,
                                  metavar="{train,translate,tune,evaluate,data,average,plot,attention,figures,export,serve}")

    p = verbs.add_parser("train", parents=[common], help="train a model from a YAML config",
                         description="Train a model. Resumes from the run directory's latest checkpoint if any.")
    p.add_argument("config", help="YAML config file, e.g. configs/multi30k_de_en.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. train.max_steps=2000 run_dir=runs/x")
    p.add_argument("--overwrite", action="store_true", help="delete the run directory's checkpoints and start over")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("translate", parents=[common], help="translate a file or stdin",
                         description="Translate one sentence per line. Output line i translates input line i. "
                                     "Several models translate as an ensemble (their log-probabilities averaged); "
                                     "mt serve with several run directories serves several language "
                                     "pairs, one run each, and never combines runs.")
    p.add_argument("models", nargs="+", metavar="model",
                   help="run directory (uses checkpoints/best.pt) or a checkpoint file; several: an ensemble")
    p.add_argument("-i", "--input", help="input file (default: stdin)")
    p.add_argument("-o", "--output", help="output file (default: stdout); written atomically")
    p.add_argument("--beam", type=int, default=None, help="beam size; 1 = greedy (default: the run's decode.beam_size)")
    p.add_argument("--length-penalty", type=float, default=None, help="GNMT length penalty alpha")
    p.add_argument("--batch-tokens", type=int, default=None, help="source tokens x beam per batch")
    p.add_argument("--min-len", type=int, default=None, help="no end of sentence before this many tokens")
    p.add_argument("--no-repeat-ngram", type=int, default=None, help="forbid repeating n-grams of this size")
    p.add_argument("--nbest", type=int, default=1,
                   help="write the N best hypotheses of each line as 'line<TAB>score<TAB>translation'")
    p.add_argument("--sample", action="store_true", help="sample translations instead of searching (back-translation)")
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample")
    p.add_argument("--top-k", type=int, default=0, help="with --sample: only the k most probable tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="with --sample: nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="with --sample: random seed")
    p.add_argument("--max-output-tokens", type=int, default=None,
                   help="target subword tokens per sentence at most (default: decode.max_len_a x source + max_len_b)")
    add_decoding_hardware_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_translate)

    p = verbs.add_parser("tune", parents=[common],
                         help="choose the length penalty and the decode mode on the validation set",
                         description="Translate the run's validation set with each length penalty, print BLEU "
                                     "and chrF, and write the best into RUN/config.yaml (what mt translate uses). "
                                     "--modes: translate it in each decode mode, print sentences/s and BLEU with "
                                     "the CPU and its ISA, and write the fastest mode whose BLEU is within 0.2 of "
                                     "fp32's as decode.mode (what --precision auto loads).")
    p.add_argument("run", nargs="+", help="run directory (uses checkpoints/best.pt) or a checkpoint file inside "
                                          "one; several: an ensemble, tuned on the first run's validation set "
                                          "(the choice is printed, not written)")
    p.add_argument("--length-penalty", type=float, nargs="+", default=None, metavar="ALPHA",
                   help="GNMT length penalties to try, e.g. 0.6 0.8 1.0 1.2")
    p.add_argument("--modes", nargs="*", default=None, metavar="MODE",
                   help="decode modes to measure, from fp32 int8 bf16 fp16 and ctranslate2:TYPE (CTranslate2's compute "
                        "types, e.g. ctranslate2:int8; fp32 always; none given: every mode this machine runs "
                        "natively: bf16 only with native bf16 or CUDA, fp16 only on CUDA, and each compute type "
                        "its CTranslate2 runs, where ctranslate2 is installed)")
    p.add_argument("--repeats", type=int, default=1, help="with --modes: timed rounds per mode (median; default 1)")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the run's decode.beam_size)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = every core)")
    p.set_defaults(func=cmd_tune)

    p = verbs.add_parser("evaluate", parents=[common], help="score translations with sacreBLEU",
                         description="BLEU, chrF and TER with sacreBLEU signatures; prints what "
                                     "'sacrebleu REF -i HYP -m bleu chrf ter -f text' prints (--json: without -f text).")
    p.add_argument("-r", "--reference", required=True, help="reference file, one sentence per line")
    p.add_argument("-i", "--input", required=True, help="hypothesis file, one sentence per line")
    p.add_argument("-m", "--metrics", nargs="+", default=["bleu", "chrf", "ter"], choices=["bleu", "chrf", "ter"])
    p.add_argument("--json", action="store_true", help="sacreBLEU's JSON output")
    p.add_argument("-lc", "--lowercase", action="store_true", help="case-insensitive BLEU (sacreBLEU's -lc)")
    p.add_argument("-tok", "--tokenize", choices=["13a", "intl", "none", "char", "zh"],
                   help="BLEU's tokenizer (sacreBLEU's -tok; default 13a; none for text tokenised beforehand)")
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("data", parents=[common], help="download a public corpus (Multi30k) where the configs look",
                         description="Download Multi30k task 1 (train, val, test2016 in en, de, fr, cs) "
                                     "into DIR/multi30k.")
    p.add_argument("corpus", choices=["multi30k"])
    p.add_argument("--dir", help="the data root (default: $MT_DATA_ROOT, else ../shared/data, "
                                 "where configs/*.yaml look)")
    p.set_defaults(func=cmd_data)

    p = verbs.add_parser("average", parents=[common], help="average the last (or best) N checkpoints of a run",
                         description="Average the weights of the last N numbered checkpoints (or of the N best "
                                     "by validation BLEU); translate with: mt translate OUTPUT")
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints (default 5)")
    which.add_argument("--best", type=int, default=0,
                       help="average the N best checkpoints instead (needs train.keep_best >= N)")
    p.add_argument("-o", "--output", required=True, help="output checkpoint, e.g. RUN_DIR/checkpoints/avg.pt")
    p.set_defaults(func=cmd_average)

    p = verbs.add_parser("plot", parents=[common], help="draw a run's learning curves (PNG)",
                         description="Train/validation loss and validation BLEU against step and wall time, "
                                     "from RUN_DIR/metrics.jsonl. Needs matplotlib (pip install 'mt[plot]').")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="PNG file (default: RUN_DIR/learning_curves.png)")
    p.set_defaults(func=cmd_plot)

    p = verbs.add_parser("attention", parents=[common], help="draw a sentence's attention as a PNG heatmap",
                         description="Translate one sentence and draw its attention weights (needs the plot "
                                     "extra: pip install 'mt[plot]'): cross-attention (where the decoder looked "
                                     "in the source), encoder self-attention or decoder masked self-attention. "
                                     "Default: averaged over layers and heads.")
    p.add_argument("model", help="run directory or checkpoint file")
    p.add_argument("sentence", help="the source sentence")
    p.add_argument("-o", "--output", default="attention.png", help="PNG file (default: attention.png)")
    p.add_argument("--kind", choices=["cross", "encoder", "decoder"], default="cross",
                   help="cross-attention (default), encoder self-attention or decoder masked self-attention")
    p.add_argument("--layer", type=int, default=None, help="layer, from 1 (default: mean of all)")
    p.add_argument("--head", type=int, default=None, help="attention head, from 1 (default: mean of all)")
    p.add_argument("--grid", action="store_true", help="one map per head of every layer")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the run's decode.beam_size)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=cmd_attention)

    p = verbs.add_parser("figures", parents=[common], help="draw the figures of the guided tour from a run (PNGs)",
                         description="Draw every figure of docs/transformer.md from a trained run directory: "
                                     "positional encodings, masks, score variance, the three kinds of attention, "
                                     "learning-rate schedules, label smoothing, learning curves and a beam-search "
                                     "tree. Needs the plot extra (pip install 'mt[plot]').")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="directory for the PNGs (default: RUN_DIR/figures)")
    p.add_argument("--sentence", default=None,
                   help="source sentence for the attention maps and the beam tree (default: first validation line)")
    p.add_argument("--beam", type=int, default=3, help="beam size of the drawn search tree (default 3)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME.png", help="draw only these figures")
    p.add_argument("--lang", choices=LANGUAGES, default="en",
                   help="language of the labels (default en; zh needs the font WenQuanYi Zen Hei: fonts-wqy-zenhei)")
    p.set_defaults(func=cmd_figures)

    p = verbs.add_parser("export", parents=[common], help="export a model for a serving engine (CTranslate2, Argos)",
                         description="Write the model as a CTranslate2 model directory (needs the ctranslate2 "
                                     "extra: pip install 'mt[ctranslate2]'), with the SentencePiece model beside it, "
                                     "or as an Argos Translate package (--format argos) that LibreTranslate serves.")
    p.add_argument("model", help="run directory (uses checkpoints/best.pt) or a checkpoint file")
    p.add_argument("--format", default="ctranslate2", choices=["ctranslate2", "argos"],
                   help="ctranslate2: a model directory; argos: an .argosmodel package for Argos Translate and "
                        "LibreTranslate (needs the argos extra: pip install 'mt[argos]'; a joint tokenizer)")
    p.add_argument("-o", "--output", required=True, help="output directory (argos: the .argosmodel file)")
    p.add_argument("--quantization", default=None, choices=["int8", "int8_float32", "int16", "float16"],
                   help="store weights quantized (default: fp32; CTranslate2 can also quantize when loading)")
    p.add_argument("--force", action="store_true", help="replace the output directory if it exists")
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("serve", parents=[common], help="serve models over HTTP (LibreTranslate API) with a web page",
                         description="Serve each run directory as one language pair: LibreTranslate's API "
                                     "(/translate, /languages, /detect, ...), OpenNMT-py's /translator/translate, "
                                     "and a page at / that translates as you type and shows the cross-attention. "
                                     "Several runs mean several language pairs (not an ensemble); two runs of "
                                     "one pair are an error. Needs the serve extra: pip install 'mt[serve]'.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR[=SRC:TGT]",
                   help="run directory; its config's data.src_lang/data.tgt_lang name the pair unless "
                        "=SRC:TGT is given, e.g. runs/demo_de_en=de:en")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000, as LibreTranslate)")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help="require an api_key from this file (one per line): 400 without one, 403 for a wrong one")
    p.add_argument("--char-limit", type=int, default=5000, help="characters per text (-1 = no limit)")
    p.add_argument("--batch-limit", type=int, default=100, help="texts per request when q is a list (-1 = no limit)")
    p.add_argument("--max-tokens", type=int, default=8192, help="source subword tokens per request")
    p.add_argument("--max-body", type=int, default=4 << 20, help="bytes per request body (default 4 MiB)")
    p.add_argument("--max-sentence-tokens", type=int, default=256,
                   help="source subword tokens per sentence (default 256); a longer sentence is refused with 400 "
                        "(sentences over 400 characters are first cut at spaces)")
    p.add_argument("--max-output-tokens", type=int, default=256,
                   help="target subword tokens per sentence at most (default 256): bounds a sentence's decoding time")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the run's decode.beam_size)")
    p.add_argument("--length-penalty", type=float, default=None,
                   help="GNMT length penalty alpha (default: the run's decode.length_penalty)")
    for name, default, what in [("header", 60, "a request's headers"), ("body", 60, "each part of a request's body"),
                                ("keep-alive", 60, "the next request on an idle connection"),
                                ("shutdown", 30, "requests in flight after SIGTERM/SIGINT, then exit 2")]:
        p.add_argument(f"--{name}-timeout", type=float, default=default,
                       help=f"seconds to wait for {what} (default {default})")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting per model; more get 429 with Retry-After (default 64)")
    p.add_argument("--gather-ms", type=float, default=15.0,
                   help="a worker starts decoding once no request has come for this long (default 15 ms), "
                        "or at once when the clients it just answered are back")
    p.add_argument("--gather-window-ms", type=float, default=50.0,
                   help="while requests keep coming, a worker gathers at most this long from the first (default 50 ms)")
    p.add_argument("--gather-tokens", type=int, default=4096,
                   help="source tokens a worker gathers at most into one decoding round (default 4096)")
    add_decoding_hardware_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        if args.verb in MEMORY_TUNED_VERBS:  # the command's choice, not a side effect of importing mt
            tune_allocator()
        args.func(args)
    except MTError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except TrainingInterrupted as e:  # saved; the run says how to resume
        import signal

        sys.exit(128 + signal.Signals[e.signal_name].value)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        if args.func not in (cmd_translate, cmd_evaluate):  # e.g. training: a cut-off run is no success
            raise
        # the reader has gone (`mt translate RUN < big | head -3`): it has all it wanted, so stop
        # quietly; stdout now points at /dev/null so the interpreter's last flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
