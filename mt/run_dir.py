"""The run directory's files besides the checkpoints, as ``mt train`` keeps them.

``config.yaml`` (the config used, so that a run directory alone translates), ``data_report.json``
(the training pairs kept and dropped), ``metrics.jsonl`` (one JSON record per logged step and per
validation), ``spm*.model`` (the tokenizers), ``tune.json`` (what ``mt tune`` measured) and
``checkpoints/`` (``mt.checkpoint``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from mt.checkpoint import atomic_write_text
from mt.config import Config, save_config
from mt.faults import disk_write_error, remove_stale_temps

Log = Callable[[str], None]


def open_run_dir(run_dir: Path, overwrite: bool, has_checkpoint: bool, log: Log) -> None:
    """Make ``run_dir`` ready to train in: emptied with ``overwrite``, without what killed writers
    left, and without the tokenizers of a run that never reached a checkpoint."""
    if has_checkpoint and overwrite:
        log(f"--overwrite: removing the previous run in {run_dir}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in remove_stale_temps(folder):
            log(f"removed {path.name}, left by a writer that was killed")
    if not has_checkpoint or overwrite:
        # a tokenizer from a run that never reached a checkpoint may not match this config
        for stale in run_dir.glob("spm*.model"):
            stale.unlink()


def read_tune_json(run_dir: Path) -> dict:
    """``RUN/tune.json`` ({} when missing or unreadable)."""
    try:
        record = json.loads((Path(run_dir) / "tune.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def tuned_decode(run_dir: Path) -> dict:
    """The decode settings ``mt tune`` chose for a run, from ``RUN/tune.json``
    (``length_penalty``, ``beam_size``, ``mode``; {} if never tuned), so that ``mt train``
    resuming the run writes them back into the config.yaml it rewrites."""
    record = read_tune_json(run_dir)
    best, modes = record.get("best"), record.get("modes")
    tuned = {key: best.get(key) for key in ("length_penalty", "beam_size")} if isinstance(best, dict) else {}
    if isinstance(modes, dict):
        tuned["mode"] = modes.get("chosen")
    return {key: value for key, value in tuned.items() if value is not None}


def write_run_files(config: Config, run_dir: Path, report: dict, resuming: bool, log: Log) -> None:
    """``config.yaml`` (resuming: with the decode settings ``mt tune`` chose) and ``data_report.json``."""
    if resuming and (tuned := tuned_decode(run_dir)):
        for key, value in tuned.items():
            setattr(config.decode, key, value)
        log("keeping the decode settings mt tune chose (" + ", ".join(
            f"{key} {value}" for key, value in tuned.items()) + f"; {run_dir / 'tune.json'})")
    save_config(config, run_dir / "config.yaml")
    atomic_write_text(run_dir / "data_report.json", json.dumps(report, indent=1) + "\n")


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append ``record`` to ``metrics.jsonl``; a full or read-only disk raises a one-line ``WriteError``."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        if (error := disk_write_error(path, e, "or set run_dir to another disk")) is None:
            raise
        raise error from None
