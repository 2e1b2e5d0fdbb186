"""What each ``mt`` verb does once its arguments are parsed: a call into the library and a note on stderr."""
from __future__ import annotations

import argparse
import sys

from mt.errors import MTError, WriteError


def cmd_train(args: argparse.Namespace) -> None:
    from mt.config import load_config

    config = load_config(args.config, args.overrides)  # before torch is imported: config errors answer at once
    from mt.train import train

    train(config, overwrite=args.overwrite)


def check_translate_options(args: argparse.Namespace) -> None:
    """Every option's range, before the model loads: bad values would decode nonsense or crash later."""
    import math

    def need(ok: bool, option: str, what: str, value) -> None:
        if not ok:
            raise MTError(f"{option}: {what}, got {value}")

    for option, value in [("--beam", args.beam), ("--nbest", args.nbest), ("--batch-tokens", args.batch_tokens),
                          ("--max-output-tokens", args.max_output_tokens)]:
        need(value is None or value >= 1, option, "must be at least 1", value)
    need(args.min_len is None or args.min_len >= 0, "--min-len", "must be >= 0", args.min_len)
    need(args.no_repeat_ngram is None or args.no_repeat_ngram >= 0, "--no-repeat-ngram", "must be >= 0 (0 = off)",
         args.no_repeat_ngram)
    need(args.length_penalty is None or math.isfinite(args.length_penalty), "--length-penalty",
         "must be a finite number", args.length_penalty)
    need(0 <= args.temperature < math.inf, "--temperature", "must be a finite number >= 0 (0 = greedy)",
         args.temperature)
    need(args.top_k >= 0, "--top-k", "must be >= 0 (0 = all tokens)", args.top_k)
    need(0 < args.top_p <= 1, "--top-p", "must be in (0, 1]", args.top_p)
    need(args.threads >= 0, "--threads", "must be >= 0 (0 = every core)", args.threads)
    need(args.decoders >= 0, "--decoders", "must be >= 0 (0 = one per core)", args.decoders)


def cmd_translate(args: argparse.Namespace) -> None:
    from mt.translate import Translator

    check_translate_options(args)
    # the model first: a wrong run directory should not wait for stdin to be typed
    translator = Translator.from_pretrained(args.models, device=args.device, precision=args.precision,
                                           threads=args.threads, quantize=args.quantize, decoders=args.decoders,
                                           engine=args.engine, compute_type=args.compute_type)
    if translator.mode_note:
        print(f"note: {translator.mode_note}", file=sys.stderr)
    translator.max_output_tokens = args.max_output_tokens
    too_long: list[int] = []  # line numbers left untranslated, reported once everything else is written

    def translate(lines: list[str], first_line: int, progress: bool) -> str:
        return translate_text(translator, args, lines, first_line, progress, too_long)

    if args.input in (None, "-") and args.output is None:  # a pipeline: answer batch by batch as input arrives
        translate_stream(translate)
    else:
        text = translate(read_input(args.input), 0, progress=True)  # the bar goes to stderr
        write_output(args.output, text)
    report_too_long(too_long, translator)


def translate_text(translator, args: argparse.Namespace, lines: list[str], first_line: int, progress: bool,
                   too_long: list[int]) -> str:
    """The output text for lines (numbered from first_line); a line too long for the model gets an empty
    translation and its number (from 1) is added to too_long."""
    skip = set(translator.too_long(lines))
    if skip:
        too_long.extend(first_line + i + 1 for i in sorted(skip))
        lines = ["" if i in skip else line for i, line in enumerate(lines)]
    settings = dict(length_penalty=args.length_penalty, min_len=args.min_len, no_repeat_ngram=args.no_repeat_ngram)
    if args.nbest > 1:
        nbest = translator.translate_nbest(lines, args.nbest, beam_size=args.beam, progress=progress, **settings)
        return "".join(f"{first_line + i}\t{score:.4f}\t{hyp}\n"
                       for i, hyps in enumerate(nbest) for score, hyp in hyps)
    if args.sample:
        out = translator.sample(lines, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                seed=args.seed, progress=progress, first_line=first_line,
                                batch_tokens=args.batch_tokens, min_len=args.min_len,
                                no_repeat_ngram=args.no_repeat_ngram)
    else:
        out = translator.translate(lines, beam_size=args.beam, batch_tokens=args.batch_tokens,
                                   progress=progress, **settings)
    return "".join(line + "\n" for line in out)


def translate_stream(translate) -> None:
    """stdin to stdout batch by batch, each answered as soon as it is read."""
    from mt.translate import stdin_batches

    done = 0
    for lines in stdin_batches(sys.stdin.fileno()):
        sys.stdout.write(translate(lines, done, progress=False))
        sys.stdout.flush()
        done += len(lines)


def read_input(path: str | None) -> list[str]:
    from mt.data import decode_lines, read_lines

    if path in (None, "-"):
        return decode_lines(sys.stdin.buffer.read(), "<stdin>")
    return read_lines(path, "input file")


def write_output(path: str | None, text: str) -> None:
    """To stdout, or to a file whole or not at all: Ctrl-C or a full disk leaves no partial file."""
    from mt.checkpoint import atomic_write_text

    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        atomic_write_text(path, text)
    except WriteError as e:
        raise WriteError(f"{e}, or give -o a file on another disk") from None
    except OSError as e:
        raise MTError(f"output file '{path}': cannot write: {e}") from None


def report_too_long(too_long: list[int], translator) -> None:
    """The lines left empty, as an error after everything else is written."""
    from mt.translate import too_long_message

    if too_long:
        many = len(too_long) > 1
        raise MTError(too_long_message(too_long, translator.model.max_positions)
                      + ("; their output lines are empty" if many else "; its output line is empty"))


def cmd_tune(args: argparse.Namespace) -> None:
    if args.length_penalty is None and args.modes is None:
        raise MTError("tune: give --length-penalty ALPHA ... and/or --modes [MODE ...]")
    from mt.tune import format_mode_table, format_table, tune_length_penalty, tune_modes

    if args.modes is not None and len(args.run) > 1:
        raise MTError("tune: --modes measures one run; give one run directory")
    if args.length_penalty is not None:  # first: the modes are then measured with the chosen penalty
        table, best = tune_length_penalty(args.run, args.length_penalty, beam_size=args.beam, device=args.device,
                                          threads=args.threads, progress=True)
        print(format_table(table, best))
        if len(args.run) > 1:
            print(f"an ensemble has no config of its own, so nothing was written: translate with "
                  f"mt translate {' '.join(args.run)} --length-penalty {best['length_penalty']:g} "
                  f"--beam {best['beam_size']}", file=sys.stderr)
        else:
            print(f"wrote decode.length_penalty: {best['length_penalty']:g} and decode.beam_size: "
                  f"{best['beam_size']} to the run's config.yaml", file=sys.stderr)
    if args.modes is not None:
        from mt.ctranslate2_engine import installed

        engines = ("torch", "ctranslate2") if installed() else ("torch",)
        table, best, info = tune_modes(args.run[0], args.modes, device=args.device, threads=args.threads,
                                       repeats=args.repeats, progress=True, engines=engines)
        print(format_mode_table(table, best, info))
        print(f"wrote decode.mode: {best['mode']} to the run's config.yaml (what --precision/--engine auto load)",
              file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mt.evaluate import format_scores, read_pair, score

    hyps, refs = read_pair(args.input, args.reference)
    format_scores(score(hyps, refs, args.metrics, args.lowercase, args.tokenize), as_json=args.json)


def cmd_data(args: argparse.Namespace) -> None:
    from mt.download import download_multi30k

    download_multi30k(args.dir, log=lambda message: print(message, file=sys.stderr))


def cmd_average(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mt.checkpoint import average_checkpoints, best_checkpoints, save_checkpoint, step_checkpoints

    run_dir = Path(args.run_dir)
    if args.best:
        paths = [run_dir / "checkpoints" / e["file"] for e in best_checkpoints(run_dir)[:args.best]]
        if len(paths) < args.best:
            raise MTError(f"run directory '{run_dir}' keeps {len(paths)} best checkpoints, --best {args.best} "
                          "asks for more (train with train.keep_best >= N)")
    else:
        paths = step_checkpoints(run_dir)[-args.last:]
        if len(paths) < args.last:
            raise MTError(f"run directory '{run_dir}' has {len(paths)} numbered checkpoints, "
                          f"--last {args.last} asks for more")
    save_checkpoint(average_checkpoints(paths), Path(args.output))
    print(f"averaged {', '.join(p.name for p in paths)} -> {args.output}", file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mt.plot import plot_learning_curves

    output = Path(args.output or Path(args.run_dir) / "learning_curves.png")
    plot_learning_curves(Path(args.run_dir), output)
    print(f"wrote {output}", file=sys.stderr)


def cmd_attention(args: argparse.Namespace) -> None:
    from mt.plot import attention_heatmap, select_attention
    from mt.translate import Translator

    translator = Translator.from_pretrained(args.model, device=args.device)
    queries, keys, weights = translator.attention(args.sentence, kind=args.kind, beam_size=args.beam)
    if not args.grid:  # a bad --layer/--head fails before any drawing
        select_attention(weights, args.layer, args.head, stack="encoder" if args.kind == "encoder" else "decoder")
    attention_heatmap(weights, keys, queries, args.output, layer=args.layer, head=args.head, grid=args.grid,
                      kind=args.kind)
    if args.kind == "encoder":
        print(f"{' '.join(queries)}\n-> {args.output}", file=sys.stderr)
    else:
        produced = queries[:-1] if args.kind == "cross" else queries[1:]  # without </s> / <s>
        print(f"{translator.tokenizers.tgt.sp.decode_pieces(produced)}\n-> {args.output}", file=sys.stderr)


def cmd_figures(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mt.figures import make_figures

    output = Path(args.output or Path(args.run_dir) / "figures")
    for path in make_figures(args.run_dir, output, sentence=args.sentence, beam_size=args.beam, only=args.only,
                             lang=args.lang):
        print(f"wrote {path}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    if args.format == "argos":
        from mt.argos import export_argos

        out = export_argos(args.model, args.output, quantization=args.quantization, force=args.force)
        print(f"exported {args.model} -> {out} (Argos Translate package; install with "
              f"argostranslate.package.install_from_path('{out}'); split sentences offline with "
              f"ARGOS_CHUNK_TYPE=SPACY)", file=sys.stderr)
        return
    from mt.export import export_ctranslate2

    out = export_ctranslate2(args.model, args.output, quantization=args.quantization, force=args.force)
    print(f"exported {args.model} -> {out} (CTranslate2; translate SentencePiece pieces, e.g. "
          f"ctranslate2.Translator('{out}').translate_batch([...]))", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> None:
    from mt.serve import Limits, serve

    limits = Limits(char_limit=args.char_limit, batch_limit=args.batch_limit, max_tokens=args.max_tokens,
                    max_body=args.max_body, max_sentence_tokens=args.max_sentence_tokens,
                    header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                    keep_alive_timeout=args.keep_alive_timeout, shutdown_timeout=args.shutdown_timeout)
    serve(args.runs, host=args.host, port=args.port, api_keys_file=args.api_keys, limits=limits,
          device=args.device, precision=args.precision, threads=args.threads, quantize=args.quantize,
          max_queue=args.max_queue, gather_ms=args.gather_ms, gather_tokens=args.gather_tokens,
          gather_window_ms=args.gather_window_ms, decoders=args.decoders, beam=args.beam,
          length_penalty=args.length_penalty, max_output_tokens=args.max_output_tokens, engine=args.engine,
          compute_type=args.compute_type)
