"""A trained run on disk: which checkpoint to load, its model, tokenizers and decode settings.

Translating, tuning and exporting all start here, so the exporter needs no ``Translator``
and the engines that export on first use import no module that imports them.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from mt import checkpoint as ckpt
from mt.config import Config, DecodeConfig, config_from_dict
from mt.errors import MTError
from mt.model import Transformer
from mt.tokenizer import TokenizerPair, load_tokenizers


def run_of(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory or a checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise MTError(f"run directory or checkpoint '{path}' not found")
    if path.is_dir():
        return path, ckpt.best_or_latest(path)
    return (path.parent.parent if path.parent.name == "checkpoints" else path.parent), path


def load_model(path: Path) -> tuple[Transformer, TokenizerPair, Config, Path]:
    """One checkpoint's model (on the CPU), its tokenizers, its config and its run directory."""
    run_dir, checkpoint_file = run_of(path)
    state = ckpt.load_checkpoint(checkpoint_file)
    if "model" not in state or "config" not in state:
        raise MTError(f"'{checkpoint_file}' is not an mt checkpoint")
    config = config_from_dict(state["config"], str(checkpoint_file))
    if not path.is_dir() and not (run_dir / "config.yaml").exists():
        run_dir = Path(config.run_dir)  # a checkpoint copied out of its run: find the run's tokenizer
    tokenizers = load_tokenizers(run_dir, config.tokenizer.joint)
    if state.get("vocab") != tokenizers.fingerprint():
        raise MTError(f"checkpoint '{checkpoint_file}' was trained with another vocabulary than "
                      f"the tokenizer in '{run_dir}'")
    model = Transformer(config.model, tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)
    model.load_state_dict(state["model"])
    return model, tokenizers, config, run_dir


def decode_settings(run_dir: Path, fallback: Config) -> DecodeConfig:
    """The decode settings translation uses: ``run_dir/config.yaml``'s (which ``mt tune`` updates),
    else those saved in the checkpoint (``fallback``), e.g. for a checkpoint copied out of its run."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return fallback.decode
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise MTError(f"'{path}': cannot read the decode settings: {e}".replace("\n", " ")) from None
    return config_from_dict(raw, str(path)).decode

