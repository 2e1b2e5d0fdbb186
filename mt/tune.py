"""Choosing decode settings on the validation set: ``mt tune RUN --length-penalty 0.6 0.8 1.0 1.2``
and ``mt tune RUN --modes``.

Each setting translates the run's ``data.valid`` and is scored with sacreBLEU; the choice goes
into the run's ``config.yaml`` ``decode`` section, the one place ``mt translate`` and
``Translator`` read their defaults from. The test set is never used, so a test score stays an
honest estimate.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import yaml

from mt import ctranslate2_engine, decode_mode
from mt.checkpoint import atomic_write_text
from mt.config import DECODE_MODES, Config, config_from_dict, save_config
from mt.data import read_parallel
from mt.device import resolve_device, set_threads
from mt.errors import MTError
from mt.evaluate import score
from mt.run_dir import read_tune_json
from mt.pretrained import run_of
from mt.translate import Translator


def run_config(run: str | Path) -> tuple[Path, Path, Config]:
    """(run directory, its config.yaml, the config) of a run that has a validation set."""
    run_dir, _ = run_of(Path(run))
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise MTError(f"'{run_dir}' has no config.yaml to write the decode settings to (is it a run directory?)")
    config = config_from_dict(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}, str(config_file))
    if not config.data.valid.is_set():
        raise MTError(f"{config_file}: data.valid is not set; tuning needs a validation set")
    return run_dir, config_file, config


def update_tune_json(run_dir: Path, **entries) -> None:
    """Replace some entries of ``RUN/tune.json``, keeping the others (each kind of tuning its own)."""
    record = {**read_tune_json(run_dir), "data": "valid", **entries}
    atomic_write_text(Path(run_dir) / "tune.json", json.dumps(record, indent=1) + "\n")


def tune_length_penalty(run: str | Path | list, alphas: list[float], beam_size: int | None = None,
                        device: str = "auto", threads: int = 0, progress: bool = False) -> tuple[list[dict], dict]:
    """Translate the validation set once per length penalty; write the best into ``RUN/config.yaml``.

    Returns the table (one row per alpha, in the order given: alpha, beam, BLEU, chrF) and
    its best row: the highest BLEU, the first of equals. ``run`` may be a list of runs, an
    ensemble (``mt.ensemble``): it is tuned on the first run's validation set, and nothing is
    written, because an ensemble has no config of its own (its members keep their own
    choices); pass the best to ``mt translate RUN ... --length-penalty``.
    """
    if not alphas:
        raise MTError("tune: give at least one length penalty")
    runs = list(run) if isinstance(run, (list, tuple)) else [run]
    run_dir, config_file, config = run_config(runs[0])
    data = config.data
    translator = Translator.from_pretrained(runs, device=device, threads=threads)  # a list of one: that model
    sources, references = read_parallel(data.valid, "data.valid", data.src_lang, data.tgt_lang)
    beam = beam_size or translator.config.decode.beam_size
    table = []
    for alpha in alphas:
        hyps = translator.translate(sources, beam_size=beam, length_penalty=alpha, progress=progress)
        scores = score(hyps, references, ["bleu", "chrf"])
        table.append({"length_penalty": alpha, "beam_size": beam, "bleu": scores["bleu"][0].score,
                      "chrf": scores["chrf"][0].score, "signature": str(scores["bleu"][1])})
    best = max(table, key=lambda row: row["bleu"])  # max keeps the first of equal rows
    if len(runs) > 1:
        return table, best
    config.decode.length_penalty, config.decode.beam_size = best["length_penalty"], beam
    save_config(config, config_file)
    update_tune_json(run_dir, table=table, best=best)
    return table, best


def format_table(table: list[dict], best: dict) -> str:
    lines = ["length_penalty  beam  BLEU (valid)  chrF (valid)"]
    for row in table:
        mark = "  <- best" if row is best else ""
        lines.append(f"{row['length_penalty']:>14g}  {row['beam_size']:>4}  {row['bleu']:>12.2f}  "
                     f"{row['chrf']:>12.2f}{mark}")
    lines.append(f"BLEU signature: {table[0]['signature']}")
    return "\n".join(lines)


def timed_translate(translator: Translator, sources: list[str], progress: bool = False) -> tuple[list[str], float]:
    """The translations of ``sources`` with the run's decode settings and the seconds they took."""
    start = time.perf_counter()
    hyps = translator.translate(sources, progress=progress)
    return hyps, time.perf_counter() - start


def modes_to_measure(modes: list[str] | None, engines: tuple[str, ...], device) -> list[str]:
    """The decode modes ``tune_modes`` measures, fp32 first: those named (checked), else every one this
    device runs natively with the given engines (``ctranslate2:TYPE`` for each compute type it runs)."""
    engine_types = ctranslate2_engine.supported_compute_types(device.type) \
        if "ctranslate2" in engines or any(ctranslate2_engine.compute_type_of(m) for m in modes or []) else []
    for mode in modes or []:
        if ctranslate2_engine.compute_type_of(mode):
            if ctranslate2_engine.compute_type_of(mode) not in engine_types:
                raise MTError(f"--modes {mode}: not measured on {device.type}: this machine's CTranslate2 runs "
                              f"{', '.join(engine_types)}")
            continue
        if mode not in DECODE_MODES:
            raise MTError(f"--modes: '{mode}' is not a decode mode; choose from {', '.join(DECODE_MODES)}")
        why = decode_mode.unavailable_reason(mode, device)
        if why:
            raise MTError(f"--modes {mode}: not measured on {device.type}: {why}")
    if modes:
        return ["fp32"] + [m for m in DECODE_MODES[1:] if m in modes] + \
            [ctranslate2_engine.mode_name(t) for t in engine_types if ctranslate2_engine.mode_name(t) in modes]
    torch_modes = decode_mode.available_modes(device) if "torch" in engines else ["fp32"]
    return torch_modes + [ctranslate2_engine.mode_name(t) for t in engine_types]


def mode_translator(run: str | Path, mode: str, device: str, threads: int) -> Translator:
    compute_type = ctranslate2_engine.compute_type_of(mode)
    if compute_type:
        return Translator.from_pretrained(run, device=device, threads=threads, engine="ctranslate2",
                                          compute_type=compute_type)
    return Translator.from_pretrained(run, device=device, threads=threads, **decode_mode.mode_options(mode))


def tune_modes(run: str | Path, modes: list[str] | None = None, device: str = "auto", threads: int = 0,
               repeats: int = 1, progress: bool = False,
               engines: tuple[str, ...] = ("torch",)) -> tuple[list[dict], dict, dict]:
    """Measure each decode mode on the validation set; write the fastest whose BLEU is within
    ``decode_mode.BLEU_TOLERANCE`` of fp32's into ``RUN/config.yaml`` as ``decode.mode``.

    ``modes``: those to measure (default: every mode this device runs natively with ``engines``,
    torch and/or ctranslate2; torch's fp32, the reference, is always measured). The modes take
    turns, ``repeats`` rounds after a warm-up, so a change in the machine's load touches them all
    alike; the median time counts.
    Returns the table (mode, BLEU, chrF, sentences/s, seconds), the chosen row and the machine.
    """
    if repeats < 1:
        raise MTError(f"--repeats: must be at least 1, got {repeats}")
    run_dir, config_file, config = run_config(run)
    set_threads(threads)
    torch_device = resolve_device(device)
    chosen_modes = modes_to_measure(modes, engines, torch_device)
    sources, references = read_parallel(config.data.valid, "data.valid", config.data.src_lang, config.data.tgt_lang)
    translators = {mode: mode_translator(run, mode, device, threads) for mode in chosen_modes}
    for translator in translators.values():
        translator.translate(sources[:16])  # warm-up: first-call allocations and kernel choices
    seconds: dict[str, list[float]] = {mode: [] for mode in chosen_modes}
    outputs: dict[str, list[str]] = {}
    for _ in range(repeats):
        for mode, translator in translators.items():
            hyps, took = timed_translate(translator, sources, progress)
            outputs.setdefault(mode, hyps)
            seconds[mode].append(took)
    table = []
    for mode in chosen_modes:
        scores = score(outputs[mode], references, ["bleu", "chrf"])
        median = statistics.median(seconds[mode])
        table.append({"mode": mode, "bleu": scores["bleu"][0].score, "chrf": scores["chrf"][0].score,
                      "sentences_per_s": len(sources) / median, "seconds": median,
                      "signature": str(scores["bleu"][1])})
    best = decode_mode.choose(table)
    decode = config.decode
    setup = {"device": torch_device.type, "sentences": len(sources), "repeats": repeats,
             "beam_size": decode.beam_size, "length_penalty": decode.length_penalty,
             "batch_tokens": decode.batch_tokens, "tolerance": decode_mode.BLEU_TOLERANCE}
    info = {**decode_mode.machine(torch_device), **setup}
    decode.mode = best["mode"]
    save_config(config, config_file)
    update_tune_json(run_dir, modes={"machine": info, "table": table, "chosen": best["mode"]})
    return table, best, info


def format_mode_table(table: list[dict], best: dict, info: dict) -> str:
    fp32 = next(row for row in table if row["mode"] == "fp32")
    search = "greedy" if info["beam_size"] == 1 else f"beam {info['beam_size']}"
    width = max(len(row["mode"]) for row in table)  # torch's fp32 ... and CTranslate2's ctranslate2:int8 ...
    lines = [f"# {decode_mode.describe(info)}",
             f"# {info['device']}, valid ({info['sentences']} sentences), {search}, length penalty "
             f"{info['length_penalty']:g}, median of {info['repeats']}",
             f"{'mode':<{width}}  sentences/s  BLEU (valid)  vs fp32"]
    for row in table:
        mark = "  <- chosen" if row is best else ""
        lines.append(f"{row['mode']:<{width}}  {row['sentences_per_s']:>11.1f}  {row['bleu']:>12.2f}  "
                     f"{row['bleu'] - fp32['bleu']:>+7.2f}{mark}")
    lines.append(f"chosen: the fastest with BLEU >= fp32's - {info['tolerance']:g}")
    lines.append(f"BLEU signature: {table[0]['signature']}")
    return "\n".join(lines)
