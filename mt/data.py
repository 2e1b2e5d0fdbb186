"""Parallel corpora: read line-aligned text files, encode them, filter training pairs.

Reading is strict: a missing file, invalid UTF-8, different line counts or an empty
corpus is an error that names the file and line, never a silent skip.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from mt.config import Corpus, DataConfig
from mt.errors import MTError
from mt.tokenizer import BOS, EOS, TokenizerPair


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` decompressed), without line endings."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise MTError(f"{what} '{path}' not found") from None
    except IsADirectoryError:
        raise MTError(f"{what} '{path}' is a directory, expected a text file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise MTError(f"{what} '{path}': cannot read: {e}") from None
    return decode_lines(data, f"{what} '{path}'")


def decode_lines(data: bytes, name: str) -> list[str]:
    """Split UTF-8 bytes into lines; ``name`` says where they came from in errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise MTError(f"{name}, line {line}: invalid UTF-8 (byte {data[e.start]:#04x})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_parallel(corpus: Corpus, key: str) -> tuple[list[str], list[str]]:
    """Both sides of a corpus; ``key`` (e.g. 'data.train') is used in error messages."""
    src = read_lines(corpus.src, f"{key}.src")
    tgt = read_lines(corpus.tgt, f"{key}.tgt")
    if len(src) != len(tgt):
        raise MTError(f"{key}: '{corpus.src}' has {len(src)} lines but '{corpus.tgt}' has {len(tgt)}; "
                      "the two sides must be line-aligned")
    if not any(line.strip() for line in src):
        raise MTError(f"{key}: '{corpus.src}' is empty")
    return src, tgt


@dataclass
class EncodedCorpus:
    """Token ids of a parallel corpus. ``src`` ends with EOS; ``tgt`` is wrapped as BOS ... EOS."""

    src: list[list[int]]
    tgt: list[list[int]]
    kept: list[int]  # line numbers (0-based) of the pairs in the original files

    def __len__(self) -> int:
        return len(self.src)


def encode_parallel(src_lines: list[str], tgt_lines: list[str], tokenizers: TokenizerPair) -> EncodedCorpus:
    src = [ids + [EOS] for ids in tokenizers.src.encode(src_lines)]
    tgt = [[BOS] + ids + [EOS] for ids in tokenizers.tgt.encode(tgt_lines)]
    return EncodedCorpus(src, tgt, list(range(len(src))))


def filter_pairs(corpus: EncodedCorpus, cfg: DataConfig) -> tuple[EncodedCorpus, dict]:
    """Drop empty, too long and badly length-matched pairs; returns the survivors and counts."""
    dropped = {"empty": 0, "too_long": 0, "length_ratio": 0}
    keep = []
    for i, (s, t) in enumerate(zip(corpus.src, corpus.tgt)):
        n_src, n_tgt = len(s) - 1, len(t) - 2  # without the special tokens
        if n_src == 0 or n_tgt == 0:
            dropped["empty"] += 1
        elif n_src > cfg.max_len or n_tgt > cfg.max_len:
            dropped["too_long"] += 1
        elif max(n_src, n_tgt) > cfg.max_len_ratio * min(n_src, n_tgt):
            dropped["length_ratio"] += 1
        else:
            keep.append(i)
    filtered = EncodedCorpus([corpus.src[i] for i in keep], [corpus.tgt[i] for i in keep],
                             [corpus.kept[i] for i in keep])
    return filtered, dropped
