"""Fixtures: a tiny config, a trained tiny run, and test-only caches; shared helpers live in helpers.py."""
from __future__ import annotations

import os

import pytest
import torch

from helpers import TINY_OVERRIDES, tiny_pairs, write_corpus
from mt.config import DATA_ROOT_ENV, load_config

torch.set_num_threads(1)  # tests are small; one thread keeps them deterministic and polite


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Tokenizer and corpus caches of the tests go to a temporary directory, never ~/.cache/mt."""
    os.environ["MT_CACHE_DIR"] = str(tmp_path_factory.mktemp("mt_cache"))


@pytest.fixture(scope="session", autouse=True)
def _own_data_root():
    """Test configs name their own data: a data root set for real runs ($MT_DATA_ROOT) would
    redirect them (tests about that variable set it themselves)."""
    os.environ.pop(DATA_ROOT_ENV, None)


@pytest.fixture
def tiny_config(tmp_path):
    """A config training a tiny model on 20 pairs in tmp_path; returns a factory taking overrides."""
    pairs = tiny_pairs(20)
    write_corpus(tmp_path / "data", "train", pairs)
    write_corpus(tmp_path / "data", "valid", pairs[:6])
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(
        "run_dir: RUN\n"
        "data:\n  root: data\n  train: {src: train.de, tgt: train.en}\n  valid: {src: valid.de, tgt: valid.en}\n"
        .replace("RUN", str(tmp_path / "run")), encoding="utf-8")

    def make(*overrides: str):
        return load_config(cfg_file, TINY_OVERRIDES + list(overrides))

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run directory holding a tiny model trained until it reproduces its 20 training pairs."""
    from mt.train import train

    tmp = tmp_path_factory.mktemp("trained")
    pairs = tiny_pairs(20)
    write_corpus(tmp / "data", "train", pairs)
    cfg_file = tmp / "tiny.yaml"
    cfg_file.write_text(f"run_dir: {tmp / 'run'}\ndata:\n  root: data\n"
                        "  train: {src: train.de, tgt: train.en}\n  valid: {src: train.de, tgt: train.en}\n",
                        encoding="utf-8")
    config = load_config(cfg_file, TINY_OVERRIDES + ["train.max_steps=300"])
    metrics = train(config)
    return tmp / "run", pairs, metrics, cfg_file
