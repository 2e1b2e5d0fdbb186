"""Parallel corpora: read every source as a stream, clean, sample, encode, filter.

Reading is strict: a missing file, invalid UTF-8, different line counts or an empty
corpus is an error that names the file and line, never a silent skip. Training corpora
are streamed in chunks (``iter_parallel``), so memory does not grow with their size;
``mt.cache`` stores them encoded.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

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


CHUNK = 10_000  # pairs per chunk when a corpus is streamed


def read_parallel(corpus: Corpus, key: str, src_lang: str = "src", tgt_lang: str = "tgt",
                  invalid: str = "error") -> tuple[list, list]:
    """Both sides of a corpus as lists of strings; ``key`` (e.g. 'data.train') names it in errors.

    With ``invalid="none"``, lines that are not UTF-8 come back as None instead of an error.
    For small corpora (validation, tests); training data is streamed with ``iter_parallel``.
    """
    src, tgt = [], []
    for s, t in iter_parallel(corpus, key, src_lang, tgt_lang, invalid):
        src += s
        tgt += t
    return src, tgt


def iter_parallel(corpus: Corpus, key: str, src_lang: str = "src", tgt_lang: str = "tgt",
                  invalid: str = "error", chunk: int = CHUNK) -> Iterator[tuple[list, list]]:
    """A corpus as a stream of (source lines, target lines) chunks of up to ``chunk`` pairs.

    Memory stays flat however large the corpus; the errors are those of ``read_parallel``.
    """
    kind = corpus.kind()
    if kind == "text":
        pairs, name = _text_pairs(corpus, key, invalid), corpus.src
    elif kind == "tsv":
        pairs, name = _tsv_pairs(corpus, key, invalid), corpus.path
    elif kind == "jsonl":
        pairs = _jsonl_pairs(corpus, key, corpus.src_field or src_lang, corpus.tgt_field or tgt_lang, invalid)
        name = corpus.path
    else:
        pairs = _datasets_pairs(corpus, key, corpus.src_field or src_lang, corpus.tgt_field or tgt_lang)
        name = corpus.path or corpus.dataset
    has_text = False
    while True:
        block = list(itertools.islice(pairs, chunk))
        if not block:
            break
        src, tgt = [s for s, _ in block], [t for _, t in block]
        has_text = has_text or any(line and line.strip() for line in src)
        yield src, tgt
    if not has_text:
        raise MTError(f"{key}: '{name}' is empty")


def _open_lines(path: str | Path, what: str, invalid: str) -> Iterator[str | None]:
    """Lines of a UTF-8 text file (``.gz`` decompressed) one at a time; see ``read_lines``."""
    path = Path(path)
    try:
        f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise MTError(f"{what} '{path}' not found") from None
    except IsADirectoryError:
        raise MTError(f"{what} '{path}' is a directory, expected a text file") from None
    except OSError as e:
        raise MTError(f"{what} '{path}': cannot read: {e}") from None
    with f:
        number = 0
        try:
            for number, raw in enumerate(f, 1):
                try:
                    yield raw.rstrip(b"\n").decode("utf-8").rstrip("\r")
                except UnicodeDecodeError as e:
                    if invalid == "error":
                        raise MTError(f"{what} '{path}', line {number}: invalid UTF-8 "
                                      f"(byte {raw[e.start]:#04x})") from None
                    yield None
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise MTError(f"{what} '{path}': cannot read after line {number}: {e}") from None


def _text_pairs(corpus: Corpus, key: str, invalid: str) -> Iterator[tuple]:
    src = _open_lines(corpus.src, f"{key}.src", invalid)
    tgt = _open_lines(corpus.tgt, f"{key}.tgt", invalid)
    n = 0
    for s, t in itertools.zip_longest(src, tgt, fillvalue=_END):
        if s is _END or t is _END:  # one side ended first: count the rest of the other for the message
            n_src = n + (s is not _END) + sum(1 for _ in src)
            n_tgt = n + (t is not _END) + sum(1 for _ in tgt)
            raise MTError(f"{key}: '{corpus.src}' has {n_src} lines but '{corpus.tgt}' has {n_tgt}; "
                          "the two sides must be line-aligned")
        n += 1
        yield s, t


_END = object()


def _tsv_pairs(corpus: Corpus, key: str, invalid: str = "error") -> Iterator[tuple]:
    s_col, t_col = int(corpus.src_field or 0), int(corpus.tgt_field or 1)
    for number, line in enumerate(_open_lines(corpus.path, f"{key}.path", invalid), 1):
        if line is None:  # not UTF-8: both sides unusable
            yield None, None
            continue
        columns = line.split("\t")
        if len(columns) <= max(s_col, t_col):
            raise MTError(f"{key}.path '{corpus.path}', line {number}: expected at least {max(s_col, t_col) + 1} "
                          f"tab-separated columns, found {len(columns)}")
        yield columns[s_col], columns[t_col]


def _field(record: dict, field: str):
    """record[field], or record['translation'][field] (the Hugging Face translation layout)."""
    if field in record:
        return record[field]
    translation = record.get("translation")
    if isinstance(translation, dict) and field in translation:
        return translation[field]
    raise KeyError(field)


def _jsonl_pairs(corpus: Corpus, key: str, src_field: str, tgt_field: str,
                 invalid: str = "error") -> Iterator[tuple]:
    for number, line in enumerate(_open_lines(corpus.path, f"{key}.path", invalid), 1):
        if line is None:
            yield None, None
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
        yield str(s or "").replace("\n", " "), str(t or "").replace("\n", " ")


def _datasets_pairs(corpus: Corpus, key: str, src_field: str, tgt_field: str) -> Iterator[tuple]:
    """A Hugging Face ``datasets`` corpus: from the hub, local json/csv/parquet files, or save_to_disk.

    Datasets are memory-mapped Arrow tables, so reading them batch by batch keeps memory flat.
    """
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
    nested = "translation" in ds.column_names and src_field not in ds.column_names
    for field in ([] if nested else [src_field, tgt_field]):
        if field not in ds.column_names:
            raise MTError(f"{key}: dataset {described} has no field '{field}'; its columns are {ds.column_names} "
                          f"(set {key}.src_field / {key}.tgt_field)")
    for batch in ds.iter(batch_size=CHUNK):
        if nested:
            try:
                src = [p[src_field] for p in batch["translation"]]
                tgt = [p[tgt_field] for p in batch["translation"]]
            except KeyError as e:
                raise MTError(f"{key}: dataset {described} has no field {e} in 'translation' "
                              f"(set {key}.src_field / {key}.tgt_field)") from None
        else:
            src, tgt = batch[src_field], batch[tgt_field]
        yield from zip((str(s or "") for s in src), (str(t or "") for t in tgt))


def source_identity(corpus: Corpus) -> dict:
    """What a cached corpus depends on: the settings and each file's path, size, mtime and inode.

    A changed file gets a new identity (its size or mtime changes) without being read; a glob
    (``datasets`` data files) stands for the files it matches now. A hub dataset is known by
    its name, configuration and split only: a change upstream keeps the cached entry.
    """
    files = [p for p in (corpus.src, corpus.tgt, corpus.path) if p]
    stats = []
    for name in files:
        path = Path(name)
        if not path.exists() and any(ch in name for ch in "*?["):
            members = sorted(Path(p) for p in glob.glob(name, recursive=True))
        else:
            members = sorted(path.rglob("*")) if path.is_dir() else [path]
        for member in members:
            try:
                st = member.stat()
            except OSError:
                continue  # a missing file is reported by the reader, with the config key
            if member.is_file():
                stats.append([str(member), st.st_size, st.st_mtime_ns, st.st_ino])
    settings = {k: v for k, v in asdict(corpus).items() if k not in ("weight", "train_tokenizer")}
    return {"corpus": settings, "files": stats}


class Cleaner:
    """Training-data cleaning applied chunk by chunk; ``dropped`` counts what went and why.

    Lines that were not UTF-8 (None) go with their partner; then optional Unicode NFKC
    normalisation and whitespace normalisation; pairs with an empty side; and, optionally,
    exact duplicate pairs, recognised by an 8-byte hash so that a corpus of 100M pairs
    does not keep 100M strings in memory.
    """

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.dropped = {"invalid_utf8": 0, "empty": 0, "duplicate": 0}
        self.seen: set[bytes] = set()

    def __call__(self, src: list, tgt: list) -> tuple[list[str], list[str]]:
        cfg, dropped = self.cfg, self.dropped
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
                digest = hashlib.blake2b(f"{len(s)}:{s}{t}".encode(), digest_size=8).digest()
                if digest in self.seen:
                    dropped["duplicate"] += 1
                    continue
                self.seen.add(digest)
            out_src.append(s)
            out_tgt.append(t)
        return out_src, out_tgt


def clean_pairs(src: list, tgt: list, cfg: CleanConfig) -> tuple[list[str], list[str], dict]:
    """Clean a whole corpus at once; returns the kept pairs and the counts of ``Cleaner``."""
    cleaner = Cleaner(cfg)
    out_src, out_tgt = cleaner(src, tgt)
    return out_src, out_tgt, cleaner.dropped


def sample_pairs(chunks: Iterable[tuple[list, list]], n: int, seed: int = 1) -> tuple[list, list, int]:
    """A uniform random sample of ``n`` pairs from a stream of chunks (reservoir sampling).

    Memory holds the sample, never the stream; ``n = 0`` keeps every pair. Returns the
    sampled sources and targets and the number of pairs seen.
    """
    rng = np.random.default_rng(seed)
    src: list = []
    tgt: list = []
    seen = 0
    for s_chunk, t_chunk in chunks:
        k = len(s_chunk)
        fill = k if n == 0 else min(k, max(0, n - len(src)))
        src += s_chunk[:fill]
        tgt += t_chunk[:fill]
        if fill < k:  # item i (0-based in the stream) replaces a random slot with probability n / (i + 1)
            slots = (rng.random(k - fill) * np.arange(seen + fill + 1, seen + k + 1)).astype(np.int64)
            for pos in np.flatnonzero(slots < n):
                src[slots[pos]], tgt[slots[pos]] = s_chunk[fill + pos], t_chunk[fill + pos]
        seen += k
    return src, tgt, seen


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


def filter_mask(n_src: np.ndarray, n_tgt: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, dict]:
    """Which pairs to keep, from their token counts (without special tokens), and why the others go.

    Dropped: an empty side, more than ``max_len`` tokens on a side, or lengths differing by
    more than a factor of ``max_len_ratio``.
    """
    n_src, n_tgt = np.asarray(n_src), np.asarray(n_tgt)
    empty = (n_src == 0) | (n_tgt == 0)
    too_long = ~empty & ((n_src > cfg.max_len) | (n_tgt > cfg.max_len))
    ratio = ~empty & ~too_long & (np.maximum(n_src, n_tgt) > cfg.max_len_ratio * np.minimum(n_src, n_tgt))
    keep = ~(empty | too_long | ratio)
    return keep, {"empty": int(empty.sum()), "too_long": int(too_long.sum()), "length_ratio": int(ratio.sum())}


def filter_pairs(corpus: EncodedCorpus, cfg: DataConfig) -> tuple[EncodedCorpus, dict]:
    """Drop empty, too long and badly length-matched pairs (``filter_mask``); returns the survivors and counts."""
    keep, dropped = filter_mask([len(s) - 1 for s in corpus.src], [len(t) - 2 for t in corpus.tgt], cfg)
    index = np.flatnonzero(keep).tolist()
    filtered = EncodedCorpus([corpus.src[i] for i in index], [corpus.tgt[i] for i in index],
                             [corpus.kept[i] for i in index])
    return filtered, dropped
