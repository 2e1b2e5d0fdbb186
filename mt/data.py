"""Parallel corpora: read line-aligned text files, encode them, filter training pairs.

Reading is strict: a missing file, invalid UTF-8, different line counts or an empty
corpus is an error that names the file and line, never a silent skip.
"""
from __future__ import annotations

import gzip
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from mt.config import CleanConfig, Corpus, DataConfig
from mt.errors import MTError
from mt.tokenizer import BOS, EOS, TokenizerPair


def read_lines(path: str | Path, what: str = "file", invalid: str = "error") -> list[str | None]:
    """All lines of a UTF-8 text file (``.gz`` decompressed), without line endings.

    A line that is not valid UTF-8 is an error naming the file and line, or, with
    ``invalid="none"`` (training data being cleaned), None.
    """
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
    return decode_lines(data, f"{what} '{path}'", invalid)


def decode_lines(data: bytes, name: str, invalid: str = "error") -> list[str | None]:
    """Split UTF-8 bytes into lines; ``name`` says where they came from in errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if invalid == "error":
            line = data.count(b"\n", 0, e.start) + 1
            raise MTError(f"{name}, line {line}: invalid UTF-8 (byte {data[e.start]:#04x})") from None
        raw = data.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        return [_decode_or_none(line) for line in raw]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _decode_or_none(line: bytes) -> str | None:
    try:
        return line.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return None


def read_parallel(corpus: Corpus, key: str, src_lang: str = "src", tgt_lang: str = "tgt",
                  invalid: str = "error") -> tuple[list, list]:
    """Both sides of a corpus as lists of strings; ``key`` (e.g. 'data.train') names it in errors.

    With ``invalid="none"``, lines that are not UTF-8 come back as None instead of an error.
    """
    kind = corpus.kind()
    if kind == "text":
        src = read_lines(corpus.src, f"{key}.src", invalid)
        tgt = read_lines(corpus.tgt, f"{key}.tgt", invalid)
        if len(src) != len(tgt):
            raise MTError(f"{key}: '{corpus.src}' has {len(src)} lines but '{corpus.tgt}' has {len(tgt)}; "
                          "the two sides must be line-aligned")
        name = corpus.src
    elif kind == "tsv":
        src, tgt = _read_tsv(corpus, key, invalid)
        name = corpus.path
    elif kind == "jsonl":
        src, tgt = _read_jsonl(corpus, key, corpus.src_field or src_lang, corpus.tgt_field or tgt_lang, invalid)
        name = corpus.path
    else:
        src, tgt = _read_datasets(corpus, key, corpus.src_field or src_lang, corpus.tgt_field or tgt_lang)
        name = corpus.path or corpus.dataset
    if not any(line and line.strip() for line in src):
        raise MTError(f"{key}: '{name}' is empty")
    return src, tgt


def _read_tsv(corpus: Corpus, key: str, invalid: str = "error") -> tuple[list, list]:
    s_col, t_col = int(corpus.src_field or 0), int(corpus.tgt_field or 1)
    src, tgt = [], []
    for number, line in enumerate(read_lines(corpus.path, f"{key}.path", invalid), 1):
        if line is None:  # not UTF-8: both sides unusable
            src.append(None)
            tgt.append(None)
            continue
        columns = line.split("\t")
        if len(columns) <= max(s_col, t_col):
            raise MTError(f"{key}.path '{corpus.path}', line {number}: expected at least {max(s_col, t_col) + 1} "
                          f"tab-separated columns, found {len(columns)}")
        src.append(columns[s_col])
        tgt.append(columns[t_col])
    return src, tgt


def _field(record: dict, field: str):
    """record[field], or record['translation'][field] (the Hugging Face translation layout)."""
    if field in record:
        return record[field]
    translation = record.get("translation")
    if isinstance(translation, dict) and field in translation:
        return translation[field]
    raise KeyError(field)


def _read_jsonl(corpus: Corpus, key: str, src_field: str, tgt_field: str, invalid: str = "error") -> tuple[list, list]:
    src, tgt = [], []
    for number, line in enumerate(read_lines(corpus.path, f"{key}.path", invalid), 1):
        if line is None:
            src.append(None)
            tgt.append(None)
            continue
        if not line.strip():
            continue
        where = f"{key}.path '{corpus.path}', line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MTError(f"{where}: invalid JSON ({e.msg})") from None
        try:
            s, t = _field(record, src_field), _field(record, tgt_field)
        except (KeyError, TypeError) as e:
            raise MTError(f"{where}: no field {e} (set {key}.src_field / {key}.tgt_field)") from None
        src.append(str(s or "").replace("\n", " "))
        tgt.append(str(t or "").replace("\n", " "))
    return src, tgt


def _read_datasets(corpus: Corpus, key: str, src_field: str, tgt_field: str) -> tuple[list[str], list[str]]:
    """A Hugging Face ``datasets`` corpus: from the hub, local json/csv/parquet files, or save_to_disk."""
    import datasets

    described = f"'{corpus.dataset}'" + (f" ({corpus.name})" if corpus.name else "") + f" split '{corpus.split}'"
    try:
        if corpus.dataset == "disk":
            ds = datasets.load_from_disk(corpus.path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[corpus.split]
        elif corpus.dataset in ("json", "csv", "parquet"):
            ds = datasets.load_dataset(corpus.dataset, data_files=corpus.path, split=corpus.split)
        else:
            ds = datasets.load_dataset(corpus.dataset, corpus.name or None, split=corpus.split)
    except Exception as e:  # datasets raises many types: connection, missing file, bad config, missing split
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        local = corpus.dataset in ("json", "csv", "parquet", "disk")
        hint = ("" if local else "; if the hub is unreachable, download the corpus elsewhere and point "
                f"{key} at local files ({key}.dataset: json/csv/parquet with {key}.path: FILE, "
                f"or {key}.dataset: disk with {key}.path: a save_to_disk directory)")
        raise MTError(f"{key}: could not load the Hugging Face dataset {described}"
                      f"{' from ' + repr(corpus.path) if local else ''}: {reason}{hint}") from None
    try:
        if "translation" in ds.column_names and src_field not in ds.column_names:
            pairs = ds["translation"]
            src, tgt = [p[src_field] for p in pairs], [p[tgt_field] for p in pairs]
        else:
            src, tgt = ds[src_field], ds[tgt_field]
    except KeyError as e:
        raise MTError(f"{key}: dataset {described} has no field {e}; its columns are {ds.column_names} "
                      f"(set {key}.src_field / {key}.tgt_field)") from None
    return [str(s or "") for s in src], [str(t or "") for t in tgt]


def clean_pairs(src: list, tgt: list, cfg: CleanConfig) -> tuple[list[str], list[str], dict]:
    """Training-data cleaning; returns the kept pairs and how many were dropped for which reason.

    Lines that were not UTF-8 (None) go with their partner; then optional Unicode NFKC
    normalisation and whitespace normalisation; pairs with an empty side; and, optionally,
    exact duplicate pairs.
    """
    dropped = {"invalid_utf8": 0, "empty": 0, "duplicate": 0}
    seen: set = set()
    out_src, out_tgt = [], []
    for s, t in zip(src, tgt):
        if s is None or t is None:
            dropped["invalid_utf8"] += 1
            continue
        if cfg.normalize == "nfkc":
            s, t = unicodedata.normalize("NFKC", s), unicodedata.normalize("NFKC", t)
        if cfg.whitespace:
            s, t = " ".join(s.split()), " ".join(t.split())
        if not s.strip() or not t.strip():
            dropped["empty"] += 1
            continue
        if cfg.dedup:
            if (s, t) in seen:
                dropped["duplicate"] += 1
                continue
            seen.add((s, t))
        out_src.append(s)
        out_tgt.append(t)
    return out_src, out_tgt, dropped


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
