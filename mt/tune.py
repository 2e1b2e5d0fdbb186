"""Choosing decode settings on the validation set: ``mt tune RUN --length-penalty 0.6 0.8 1.0 1.2``.

Each setting translates the run's ``data.valid`` with beam search and is scored with
sacreBLEU; the best BLEU goes into the run's ``config.yaml`` ``decode`` section, the one
place ``mt translate`` and ``Translator`` read their defaults from. The test set is never
used, so a test score stays an honest estimate.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from mt.checkpoint import atomic_write_text
from mt.config import config_from_dict, save_config
from mt.data import read_parallel
from mt.errors import MTError
from mt.evaluate import score
from mt.translate import Translator, run_of


def tune_length_penalty(run: str | Path, alphas: list[float], beam_size: int | None = None,
                        device: str = "auto", threads: int = 0, progress: bool = False) -> tuple[list[dict], dict]:
    """Translate the validation set once per length penalty; write the best into ``RUN/config.yaml``.

    Returns the table (one row per alpha, in the order given: alpha, beam, BLEU, chrF) and
    its best row: the highest BLEU, the first of equals.
    """
    if not alphas:
        raise MTError("tune: give at least one length penalty")
    run_dir, _ = run_of(Path(run))
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise MTError(f"'{run_dir}' has no config.yaml to write the decode settings to (is it a run directory?)")
    config = config_from_dict(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}, str(config_file))
    data = config.data
    if not data.valid.is_set():
        raise MTError(f"{config_file}: data.valid is not set; tuning needs a validation set")
    translator = Translator.from_pretrained(run, device=device, threads=threads)
    sources, references = read_parallel(data.valid, "data.valid", data.src_lang, data.tgt_lang)
    beam = beam_size or translator.config.decode.beam_size
    table = []
    for alpha in alphas:
        hyps = translator.translate(sources, beam_size=beam, length_penalty=alpha, progress=progress)
        scores = score(hyps, references, ["bleu", "chrf"])
        table.append({"length_penalty": alpha, "beam_size": beam, "bleu": scores["bleu"][0].score,
                      "chrf": scores["chrf"][0].score, "signature": str(scores["bleu"][1])})
    best = max(table, key=lambda row: row["bleu"])  # max keeps the first of equal rows
    config.decode.length_penalty, config.decode.beam_size = best["length_penalty"], beam
    save_config(config, config_file)
    atomic_write_text(run_dir / "tune.json", json.dumps({"data": "valid", "table": table, "best": best},
                                                        indent=1) + "\n")
    return table, best


def format_table(table: list[dict], best: dict) -> str:
    lines = ["length_penalty  beam  BLEU (valid)  chrF (valid)"]
    for row in table:
        mark = "  <- best" if row is best else ""
        lines.append(f"{row['length_penalty']:>14g}  {row['beam_size']:>4}  {row['bleu']:>12.2f}  "
                     f"{row['chrf']:>12.2f}{mark}")
    lines.append(f"BLEU signature: {table[0]['signature']}")
    return "\n".join(lines)
