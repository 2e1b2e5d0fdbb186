"""Encoded training corpora and trained tokenizers, stored once and shared between runs.

A training corpus is streamed (``mt.data.iter_parallel``), cleaned, encoded and filtered
chunk by chunk, and written as flat token arrays with offsets and per-pair lengths under
``CACHE/corpora/KEY``. KEY hashes what the arrays depend on: the source files' identity
(path, size, mtime, inode), the cleaning and filter settings and the tokenizer
fingerprint. A second run, or a resume, opens the arrays on disk: it starts in seconds
and holds only the lengths (2 bytes a side per pair) in memory; a batch reads its rows
from the token arrays. Tokenizers are cached the same way under
``CACHE/tokenizers/KEY`` (KEY: the training corpora, cleaning and tokenizer settings).

Entries are written to a temporary directory (named for its writer's pid, see
``mt.faults``) and renamed into place, so a crash or a concurrent run never leaves a
half-written entry behind; the next start removes the temporary directories of writers
that are gone, never those of a run still writing.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mt.config import CACHE_DIR_ENV, Config, Corpus, DataConfig
from mt.data import Cleaner, filter_mask, iter_parallel, sample_pairs, source_identity
from mt.errors import MTError
from mt.faults import disk_write_error, kill_point, remove_stale_temps, temp_name
from mt.tokenizer import TokenizerPair, load_tokenizers, model_files, train_tokenizers

FORMAT = 1  # bump when the layout of an entry changes, so old entries are not misread
SAMPLE_SEED = 1  # the tokenizer's sample is the same in every run (and so is the cached tokenizer)


def cache_dir(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$MT_CACHE_DIR``, else ``$XDG_CACHE_HOME/mt`` or ``~/.cache/mt``."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mt"


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()[:24]


def _named_corpora(cfg: DataConfig) -> list[tuple[str, Corpus]]:
    if isinstance(cfg.train, list):
        return [(f"data.train[{i}]", c) for i, c in enumerate(cfg.train)]
    return [("data.train", cfg.train)]


def _tokenizer_corpora(cfg: DataConfig) -> list[tuple[str, Corpus]]:
    """The training corpora the tokenizer is sampled from (``train_tokenizer: false`` ones left out)."""
    return [(key, corpus) for key, corpus in _named_corpora(cfg) if corpus.train_tokenizer]


def _publish(tmp: Path, folder: Path) -> None:
    """Rename a finished temporary directory into place (another process may have won the race).

    Its files are fsynced first, so a power cut cannot leave a published entry with empty files.
    """
    for path in [*tmp.iterdir(), tmp]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _building(tmp: Path):
    """Build a cache entry in the temporary directory ``tmp``; it is gone afterwards, published or not.

    A full or read-only cache disk is a one-line error naming the file.
    """
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process that had our pid
    try:
        tmp.mkdir(parents=True)
        yield
    except OSError as e:
        inside = e.filename is None or str(e.filename).startswith(str(tmp.parent.parent))  # not an input file
        error = disk_write_error(e.filename or tmp, e, f"or set data.cache_dir (or ${CACHE_DIR_ENV}) to another disk")
        if error is None or not inside:
            raise
        raise error from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_entries(config: Config) -> None:
    """Remove the temporary directories that killed writers left in the cache (live writers' stay)."""
    for kind in ("tokenizers", "corpora"):
        for path in remove_stale_temps(cache_dir(config.data) / kind):
            tqdm.write(f"cache: removed {path.name}, left by a writer that was killed", file=sys.stderr)


# ---------------------------------------------------------------- tokenizers


def prepare_tokenizers(config: Config, run_dir: Path, threads: int = 1) -> TokenizerPair:
    """The run's tokenizer: the one in ``run_dir``, else a cached one trained on the same inputs, else a new one.

    A new one is trained on ``tokenizer.sample_sentences`` pairs drawn uniformly from the
    training corpora (after cleaning, without dedup; not those with ``train_tokenizer: false``),
    and cached.
    """
    from mt.checkpoint import atomic_write_bytes  # (imports torch, which the tokenizer alone does not need)

    data, tok = config.data, config.tokenizer
    files = model_files(run_dir, tok.joint)
    if all(f.exists() for f in files):
        return load_tokenizers(run_dir, tok.joint)
    corpora = _tokenizer_corpora(data)
    key = _key({"sources": [source_identity(c) for _, c in corpora],
                "langs": [data.src_lang, data.tgt_lang], "clean": asdict(data.clean), "tokenizer": asdict(tok)})
    folder = cache_dir(data) / "tokenizers" / key
    if not (folder / "meta.json").exists():
        src, tgt, seen = sample_pairs(_cleaned_stream(config, corpora, "sampling for the tokenizer"),
                                      tok.sample_sentences, SAMPLE_SEED)
        if not src:
            raise MTError("data.train: no training pairs left after cleaning")
        tqdm.write(f"tokenizer: training SentencePiece (vocab {tok.vocab_size}, "
                   f"{'joint' if tok.joint else 'separate'}) on {len(src):,} of {seen:,} pairs", file=sys.stderr)
        tmp = folder.with_name(temp_name(key))
        with _building(tmp):
            train_tokenizers(model_files(tmp, tok.joint), tok, src, tgt, threads)
            (tmp / "meta.json").write_text(json.dumps({"sampled_pairs": len(src), "of_pairs": seen}) + "\n")
            kill_point("cache.tokenizer")
            _publish(tmp, folder)
    else:
        tqdm.write(f"tokenizer: reusing {folder}", file=sys.stderr)
    for f in files:
        atomic_write_bytes(f, (folder / f.name).read_bytes())
    return load_tokenizers(run_dir, tok.joint)


def _cleaned_stream(config: Config, corpora: list[tuple[str, Corpus]], what: str):
    """Cleaned (src, tgt) chunks of ``corpora``, one after the other, with a progress bar."""
    data = config.data
    clean = Cleaner(replace(data.clean, dedup=False))  # a sample needs no dedup, and dedup costs memory
    invalid = "none" if data.clean.enabled else "error"
    with tqdm(desc=what, unit=" pairs", unit_scale=True, file=sys.stderr, disable=None) as bar:
        for key, corpus in corpora:
            for src, tgt in iter_parallel(corpus, key, data.src_lang, data.tgt_lang, invalid):
                bar.update(len(src))
                yield clean(src, tgt) if data.clean.enabled else (src, tgt)


# ---------------------------------------------------------------- encoded corpora


class CorpusArrays:
    """One cached corpus: flat arrays on disk, of which only the lengths are loaded.

    Pair i's source ids are ``tokens[offsets[i]:offsets[i + 1]]`` of the arrays in
    ``src.tokens`` and ``src.offsets`` (no special tokens; any of them can be opened with
    ``np.memmap``). Rows are read with ``os.pread`` rather than through a memory map: the
    kernel's page cache keeps hot rows just as well, but a map would count every page it
    ever touched (and its neighbours) in the training process's resident memory, which
    then grows with the corpus.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.report, self.n = self.meta["report"], self.meta["pairs"]
        self.token_dtype = np.dtype(self.meta["token_dtype"])
        self.files = {}
        for name in ("src.tokens", "src.offsets", "tgt.tokens", "tgt.offsets"):
            fd = os.open(folder / name, os.O_RDONLY)
            weakref.finalize(self, os.close, fd)
            self.files[name] = fd

    def __len__(self) -> int:
        return self.n

    def lengths(self, side: str) -> np.ndarray:
        return np.fromfile(self.folder / f"{side}.lens", dtype=self.meta["len_dtype"])

    def row(self, side: str, i: int) -> np.ndarray:
        start, end = np.frombuffer(os.pread(self.files[f"{side}.offsets"], 16, 8 * i), dtype=np.int64).tolist()
        size = self.token_dtype.itemsize
        return np.frombuffer(os.pread(self.files[f"{side}.tokens"], (end - start) * size, start * size),
                             dtype=self.token_dtype)


def corpus_arrays(corpus: Corpus, key: str, config: Config, tokenizers: TokenizerPair,
                  threads: int = 1) -> CorpusArrays:
    """The cached arrays of one training corpus, encoding it first if they are not cached yet."""
    data = config.data
    settings = {"source": source_identity(corpus), "langs": [data.src_lang, data.tgt_lang],
                "clean": asdict(data.clean), "max_len": data.max_len, "max_len_ratio": data.max_len_ratio,
                "vocab": tokenizers.fingerprint()}
    name = _key(settings)
    folder = cache_dir(data) / "corpora" / name
    if not (folder / "meta.json").exists():
        tmp = folder.with_name(temp_name(name))
        with _building(tmp):
            start = time.monotonic()
            n = _encode_into(tmp, corpus, key, config, tokenizers, threads)
            seconds = time.monotonic() - start
            tqdm.write(f"{key}: encoded and cached {n:,} pairs in {seconds:.1f} s "
                       f"({n / max(seconds, 1e-9):,.0f} pairs/s)", file=sys.stderr)
            kill_point("cache.publish")
            _publish(tmp, folder)
    return CorpusArrays(folder)


def _encode_into(folder: Path, corpus: Corpus, key: str, config: Config, tokenizers: TokenizerPair,
                 threads: int) -> int:
    """Stream, clean, encode and filter ``corpus`` chunk by chunk, appending to flat arrays in ``folder``.

    Returns the number of pairs read.
    """
    data = config.data
    vocab = max(tokenizers.src.vocab_size, tokenizers.tgt.vocab_size)
    token_dtype = np.dtype(np.uint16 if vocab <= 1 << 16 else np.int32)
    len_dtype = np.dtype(np.uint16 if data.max_len < (1 << 16) - 2 else np.int32)
    cleaner = Cleaner(data.clean) if data.clean.enabled else None
    report = {"read": 0}
    filtered = {"empty": 0, "too_long": 0, "length_ratio": 0}
    with _array_writer(folder, token_dtype, len_dtype) as arrays:
        stream = iter_parallel(corpus, key, data.src_lang, data.tgt_lang, "none" if cleaner else "error")
        with tqdm(desc=f"encoding {key}", unit=" pairs", unit_scale=True, file=sys.stderr, disable=None) as bar:
            for src, tgt in stream:
                report["read"] += len(src)
                bar.update(len(src))
                if cleaner:
                    src, tgt = cleaner(src, tgt)
                if not src:
                    continue
                ids = {"src": tokenizers.src.encode(src, threads), "tgt": tokenizers.tgt.encode(tgt, threads)}
                lens = {side: np.fromiter(map(len, ids[side]), np.int64, len(src)) for side in ids}
                keep, dropped = filter_mask(lens["src"], lens["tgt"], data)
                for why, n in dropped.items():
                    filtered[why] += n
                arrays.append(ids, lens, keep)
                bar.set_postfix(kept=f"{arrays.pairs:,}")
                kill_point("cache.encode")
    if cleaner:
        report.update(cleaner.dropped)
    _write_meta(folder, key, report, filtered, token_dtype, len_dtype)
    return report["read"]


class _ArrayWriter:
    """Appends the pairs kept from each chunk to the open files of a corpus entry (see ``CorpusArrays``)."""

    def __init__(self, files: dict, token_dtype: np.dtype, len_dtype: np.dtype):
        self.files, self.token_dtype, self.len_dtype = files, token_dtype, len_dtype
        self.totals = {"src": 0, "tgt": 0}  # tokens written per side: where the next row starts
        self.pairs = 0

    def append(self, ids: dict, lens: dict, keep: np.ndarray) -> None:
        """Write the rows of ``ids`` (per side: a list of token id lists) where ``keep`` is set."""
        kept = np.flatnonzero(keep).tolist()
        for side in ("src", "tgt"):
            kept_lens = lens[side][keep]
            rows = itertools.chain.from_iterable(ids[side][i] for i in kept)
            self.files[f"{side}.tokens"].write(np.fromiter(rows, self.token_dtype, int(kept_lens.sum())).tobytes())
            self.files[f"{side}.offsets"].write((self.totals[side] + np.cumsum(kept_lens)).tobytes())
            self.files[f"{side}.lens"].write(kept_lens.astype(self.len_dtype).tobytes())
            self.totals[side] += int(kept_lens.sum())
        self.pairs += len(kept)


@contextmanager
def _array_writer(folder: Path, token_dtype: np.dtype, len_dtype: np.dtype):
    """An ``_ArrayWriter`` on new files in ``folder``, closed afterwards; each offsets file starts with a 0."""
    files = {name: open(folder / name, "wb") for name in
             ("src.tokens", "tgt.tokens", "src.offsets", "tgt.offsets", "src.lens", "tgt.lens")}
    try:
        for side in ("src", "tgt"):
            files[f"{side}.offsets"].write(np.zeros(1, np.int64).tobytes())
        yield _ArrayWriter(files, token_dtype, len_dtype)
    finally:
        for f in files.values():
            f.close()


def _write_meta(folder: Path, key: str, report: dict, filtered: dict, token_dtype: np.dtype,
                len_dtype: np.dtype) -> None:
    """Add the filter counts to the cleaning ``report`` and write ``meta.json``; no pair left is an error."""
    cleaned = report["read"] - sum(report.get(k, 0) for k in ("invalid_utf8", "empty", "duplicate"))
    for why, n in filtered.items():
        report[why] = report.get(why, 0) + n
    report["kept"] = n_kept = cleaned - sum(filtered.values())
    if cleaned == 0:
        raise MTError(f"{key}: no training pairs left after cleaning ({describe_dropped(report)})")
    if n_kept == 0:
        raise MTError(f"{key}: no training pairs left after filtering ({describe_dropped(report)}); "
                      "check data.max_len and data.max_len_ratio")
    meta = {"pairs": n_kept, "report": report, "token_dtype": token_dtype.name, "len_dtype": len_dtype.name}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def describe_dropped(report: dict) -> str:
    """The pairs a data report counts as dropped, by reason: 'dropped: 3 empty, 12 too long' or 'dropped: none'."""
    dropped = [f"{n} {why.replace('_', ' ')}" for why, n in report.items()
               if why not in ("read", "kept", "corpora", "pairs_per_epoch") and n]
    return "dropped: " + (", ".join(dropped) if dropped else "none")


# ---------------------------------------------------------------- the mixture


class TrainingData:
    """All training corpora as one index space: pair ``i`` of corpus ``c`` is ``starts[c] + i``.

    ``src_lens`` / ``tgt_lens`` are the lengths the batches see (source + EOS, target + one
    of BOS/EOS); ``epoch_examples`` applies the corpus weights.
    """

    def __init__(self, corpora: list[CorpusArrays], weights: list[float]):
        self.corpora, self.weights = corpora, weights
        self.starts = np.cumsum([0] + [len(c) for c in corpora])
        self.src_lens = np.concatenate([c.lengths("src") for c in corpora]) + 1
        self.tgt_lens = np.concatenate([c.lengths("tgt") for c in corpora]) + 1

    def __len__(self) -> int:
        return int(self.starts[-1])

    def pairs_per_epoch(self) -> int:
        return sum(int(w) * len(c) + round((w - int(w)) * len(c)) for c, w in zip(self.corpora, self.weights))

    def epoch_examples(self, seed: int, epoch: int) -> np.ndarray | None:
        """The pairs of one epoch (None: every pair once, the unweighted case).

        A corpus of weight w contributes each of its pairs int(w) times, plus a random
        subset of round(frac(w) x size) pairs drawn anew for each (seed, epoch).
        """
        if all(w == 1.0 for w in self.weights):
            return None
        gen = np.random.default_rng([seed, epoch])
        parts = []
        for c, w, start in zip(self.corpora, self.weights, self.starts):
            ids = np.arange(start, start + len(c), dtype=np.int64)
            parts += [ids] * int(w)
            extra = round((w - int(w)) * len(c))
            if extra:
                parts.append(np.sort(gen.choice(ids, extra, replace=False)))
        return np.concatenate(parts)

    def rows(self, ids: np.ndarray, side: str) -> list[np.ndarray]:
        """The token ids (no special tokens) of pairs ``ids``, read from the cached arrays."""
        which = np.searchsorted(self.starts, ids, side="right") - 1
        starts = self.starts.tolist()
        return [self.corpora[c].row(side, i - starts[c]) for i, c in zip(np.asarray(ids).tolist(), which.tolist())]


def prepare_training_data(config: Config, run_dir: Path, threads: int = 1) -> tuple[TokenizerPair, TrainingData, dict]:
    """Tokenizers and encoded training corpora, from the cache when their inputs are unchanged.

    The report sums the corpora's cleaning and filtering counts; with several corpora it
    lists each one too.
    """
    remove_stale_entries(config)
    tokenizers = prepare_tokenizers(config, run_dir, threads)
    named = _named_corpora(config.data)
    corpora = [corpus_arrays(corpus, key, config, tokenizers, threads) for key, corpus in named]
    data = TrainingData(corpora, [corpus.weight for _, corpus in named])
    for (key, corpus), c in zip(named, corpora):
        if int(corpus.weight) * len(c) + round((corpus.weight - int(corpus.weight)) * len(c)) == 0:
            raise MTError(f"{key}.weight: {corpus.weight:g} x {len(c)} pairs kept rounds to 0 pairs per epoch; "
                          f"raise the weight above {0.5 / len(c):.3g} or leave the corpus out")
    report: dict = {}
    for c in corpora:
        for why, n in c.report.items():
            report[why] = report.get(why, 0) + n
    if len(corpora) > 1:
        report["corpora"] = [{"corpus": key, "weight": corpus.weight, **c.report}
                             for (key, corpus), c in zip(named, corpora)]
    report["pairs_per_epoch"] = data.pairs_per_epoch()
    return tokenizers, data, report
