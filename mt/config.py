"""One typed config: every key with its default and meaning, and the rules a valid config keeps.

``load_config`` reads a YAML file and dotted command-line overrides (``mt.config_load``) into
these dataclasses and checks them here, once, so the rest of the code can trust the values.
Errors name the file and the dotted key, and suggest the closest valid key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

# DATA_ROOT_ENV and parse_duration are part of this module's API, beside CACHE_DIR_ENV and the dataclasses
from mt.config_load import DATA_ROOT_ENV as DATA_ROOT_ENV
from mt.config_load import apply_overrides, build, parse_duration, read_with_bases, resolve_paths
from mt.errors import MTError

CACHE_DIR_ENV = "MT_CACHE_DIR"


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision, `mt translate --precision`


@dataclass
class Corpus:
    """Where a parallel corpus comes from; one of (``.gz`` allowed for files):

    - two line-aligned text files: ``src`` and ``tgt``;
    - one TSV file: ``path`` (``*.tsv`` or format: tsv), columns ``src_field``/``tgt_field`` (default 0, 1);
    - one JSONL file: ``path`` (``*.jsonl`` or format: jsonl), fields ``src_field``/``tgt_field``
      (default data.src_lang/data.tgt_lang, also found inside a ``"translation"`` object);
    - a Hugging Face ``datasets`` corpus: ``dataset`` is a hub name (with ``name`` and ``split``),
      or json/csv/parquet with ``path`` a local data file, or ``disk`` with ``path`` a saved dataset.
    """

    src: str = ""
    tgt: str = ""
    path: str = ""
    format: Literal["auto", "text", "tsv", "jsonl", "datasets"] = "auto"
    src_field: str = ""
    tgt_field: str = ""
    dataset: str = ""
    name: str = ""  # the dataset's configuration, e.g. 'de-en' for wmt14
    split: str = "train"
    # training corpora only: pairs drawn per epoch = weight x pairs kept (2 = every pair twice,
    # 0.5 = a random half, redrawn each epoch)
    weight: float = 1.0
    # training corpora only: false = leave this corpus out of the tokenizer's sample (synthetic data such
    # as back-translations or a teacher's translations, which should not shape the vocabulary)
    train_tokenizer: bool = True

    def kind(self) -> str:
        """The source type, with 'auto' decided from what is set."""
        if self.format != "auto":
            return self.format
        if self.dataset:
            return "datasets"
        name = self.path.removesuffix(".gz")
        if name.endswith(".tsv"):
            return "tsv"
        if name.endswith((".jsonl", ".json")):
            return "jsonl"
        return "text"

    def is_set(self) -> bool:
        return bool(self.src or self.tgt or self.path or self.dataset)


@dataclass
class CleanConfig:
    """Cleaning of the training data (never of validation or test data, whose BLEU must stay comparable)."""

    enabled: bool = True  # off: invalid UTF-8 is an error, and nothing below is applied
    normalize: Literal["none", "nfkc"] = "none"  # Unicode normalisation
    whitespace: bool = True  # collapse runs of whitespace, strip both ends
    dedup: bool = False  # drop exact duplicate pairs


@dataclass
class DataConfig:
    root: str = "."  # relative corpus paths start here; relative to the config file; $MT_DATA_ROOT overrides
    src_lang: str = "de"
    tgt_lang: str = "en"
    # one corpus, or a list of corpora mixed by their ``weight`` (e.g. real + back-translated)
    train: Union[Corpus, list[Corpus]] = field(default_factory=Corpus)
    valid: Corpus = field(default_factory=Corpus)
    test: Optional[Corpus] = None  # used by scripts/demo.sh and docs, not by training
    max_len: int = 128  # drop training pairs longer than this (subword tokens, either side)
    max_len_ratio: float = 3.0  # drop training pairs whose token lengths differ more than this factor
    clean: CleanConfig = field(default_factory=CleanConfig)
    # encoded training corpora and trained tokenizers, shared between runs;
    # "" = $MT_CACHE_DIR, else $XDG_CACHE_HOME/mt or ~/.cache/mt
    cache_dir: str = ""

    def train_corpora(self) -> list[Corpus]:
        return self.train if isinstance(self.train, list) else [self.train]


@dataclass
class TokenizerConfig:
    vocab_size: int = 8000
    joint: bool = True  # one SentencePiece model (and vocabulary) for both languages
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    character_coverage: float = 1.0
    sample_sentences: int = 1_000_000  # train on a random sample of this many pairs (each side); 0 = all
    byte_fallback: bool = False  # characters outside the vocabulary become UTF-8 byte pieces instead of <unk>
    user_symbols: list = field(default_factory=list)  # always one piece each, e.g. language tags ["<2de>", "<2fr>"]


@dataclass
class ModelConfig:
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_model: int = 256
    heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1  # on embeddings and every residual branch
    attention_dropout: float = 0.1  # on attention weights
    activation_dropout: float = 0.0  # inside the feed-forward block
    # how dropout draws its masks: "bernoulli" is nn.Dropout (one random number an element, drawn on one
    # core on a CPU); "fast" draws 16 bits an element, four a 64-bit number: ~6x faster, other random numbers.
    # On a CPU "fast" also drops attention weights with its own masks (in bf16 under autocast, where the fused
    # kernel's dropout computes in fp32)
    dropout_masks: Literal["bernoulli", "fast"] = "bernoulli"
    norm: Literal["pre", "post"] = "pre"  # pre-norm trains stably with a short warmup
    activation: Literal["relu", "gelu"] = "relu"
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = 1024  # learned positions only
    # auto: "all" with a joint vocabulary (source emb = target emb = output), else "decoder"
    tie_embeddings: Literal["auto", "all", "decoder", "none"] = "auto"


@dataclass
class TrainConfig:
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads; 0 = every core
    precision: Literal[PRECISIONS] = "auto"
    compile: bool = False  # torch.compile the model for the training step (see docs/performance.md for when it pays)
    batch_tokens: int = 4096  # per batch: sentences x longest side, padding included
    max_steps: int = 0  # 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_time: str = ""  # wall-clock budget like "25m", "2h", "1h30m"; "" = no limit
    # torchrun jobs: how long a rank waits for the others at a collective before it fails, naming the
    # rank that stopped answering (rank 0 preparing a large corpus counts: raise it for very big data)
    dist_timeout: str = "10m"
    accum_steps: int = 1  # batches whose gradients are summed into one update
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 800
    # inverse_sqrt: peak * sqrt(warmup / step) after warmup; budget: from the peak at the end of
    # warmup, linear decay to zero at max_steps (else when max_time runs out)
    lr_schedule: Literal["inverse_sqrt", "budget"] = "inverse_sqrt"
    patience: int = 0  # stop after this many validations without a better BLEU; 0 = never
    adam_betas: list = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # 0 = no clipping
    label_smoothing: float = 0.1
    valid_every: int = 500  # steps between validations (and checkpoints)
    valid_bleu: bool = True  # greedy-decode the validation set and report BLEU
    keep_last: int = 5  # numbered checkpoints kept besides the best ones
    keep_best: int = 1  # checkpoints kept by validation BLEU: best.pt, plus best_step_N.pt for the top K if K > 1
    log_every: int = 10  # steps between progress-bar / metrics-log updates
    # regularisers (all off by default)
    # subword regularisation: each epoch the training pairs are re-segmented by SentencePiece
    # sampling with this smoothing alpha (unigram: lower = more varied; bpe: the BPE-dropout
    # rate); 0 = off. Validation and translation always use the one best segmentation.
    subword_alpha: float = 0.0
    subword_nbest: int = -1  # unigram: sample from the n best segmentations; -1 = from all of them
    rdrop: float = 0.0  # R-Drop: weight of the symmetric KL between two dropout passes; 0 = off
    word_dropout: float = 0.0  # probability of replacing a source token by <unk> in training; 0 = off
    average_last: int = 0  # at the end, average the last K numbered checkpoints into checkpoints/avg.pt; 0 = off
    # an exponential moving average of the weights, updated after every update with this decay
    # (0.999: about the last 1,000 updates); at the end written to checkpoints/ema.pt; 0 = off
    ema_decay: float = 0.0


DECODE_MODES = ("fp32", "int8", "bf16", "fp16")  # the order `mt tune --modes` measures them in; fp32 first
# CTranslate2's compute types (mt.ctranslate2_engine); decode.mode ctranslate2:TYPE decodes with that engine
ENGINE_COMPUTE_TYPES = ("float32", "int8_float32", "int8", "int16", "bfloat16", "int8_bfloat16", "float16",
                        "int8_float16")
ENGINE_MODES = tuple(f"ctranslate2:{t}" for t in ENGINE_COMPUTE_TYPES)


@dataclass
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # GNMT alpha: score / ((5 + len) / 6) ** alpha
    max_len_a: float = 1.5  # hypotheses stop at max_len_a * source_length + max_len_b tokens
    max_len_b: int = 10
    min_len: int = 0  # no EOS before this many tokens
    no_repeat_ngram: int = 0  # forbid repeating any n-gram of this size (0 = off)
    batch_tokens: int = 6000  # source tokens x beam per decoding batch
    # what `--precision auto` loads: fp32, int8, bf16, fp16 or ctranslate2:TYPE (that engine and compute
    # type), the fastest mode within 0.2 validation BLEU of fp32 as `mt tune RUN --modes` measured it
    # on its machine; null = never measured (fp32)
    mode: Optional[str] = None


@dataclass
class Config:
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (YAML), apply ``key=value`` overrides, validate, resolve data paths."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        raw = read_with_bases(Path(path))
    cli_keys = apply_overrides(raw, overrides)
    config = build(Config, raw, "", source, cli_keys)
    _check_values(config, source)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    resolve_paths(config, base, cli_keys)
    return config


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Rebuild a saved (already resolved) config, e.g. from a run directory or checkpoint."""
    config = build(Config, raw, "", source)
    _check_values(config, source)
    return config


def save_config(config: Config, path: Path) -> None:
    from mt.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------- value checks


def _need(source: str, ok: bool, key: str, what: str, value: Any) -> None:
    """The error every value check raises: ``SOURCE: KEY: WHAT, got VALUE``."""
    if not ok:
        raise MTError(f"{source}: {key}: {what}, got {value!r}")


def _check_values(c: Config, source: str) -> None:
    """Checks that involve a value's range or several keys, section by section; the first that fails raises."""
    _check_data(c.data, source)
    _check_tokenizer(c.tokenizer, source)
    _check_model(c, source)
    _check_train(c.train, source)
    _check_decode(c.decode, source)


def _check_data(d: DataConfig, source: str) -> None:
    _need(source, d.max_len > 0, "data.max_len", "must be a positive integer", d.max_len)
    _need(source, d.max_len_ratio >= 1, "data.max_len_ratio", "must be at least 1 (a ratio of longer to shorter)",
          d.max_len_ratio)
    corpora = [(f"data.train[{i}]" if isinstance(d.train, list) else "data.train", corpus)
               for i, corpus in enumerate(d.train_corpora())]
    corpora += [(f"data.{split}", getattr(d, split)) for split in ("valid", "test")]
    for name, corpus in corpora:
        if corpus is None or (not name.startswith("data.train") and not corpus.is_set()):
            continue
        _check_corpus(name, corpus, source)
    flags = [corpus.train_tokenizer for corpus in d.train_corpora()]
    listed = isinstance(d.train, list)
    _need(source, any(flags), "data.train[*].train_tokenizer" if listed else "data.train.train_tokenizer",
          "at least one training corpus must train the tokenizer", flags if listed else flags[0])


def _check_corpus(name: str, corpus: Corpus, source: str) -> None:
    """One corpus (``name`` is its key, e.g. data.train[1]) has what its kind of source needs."""
    if name.startswith("data.train"):
        _need(source, 0 < corpus.weight < math.inf, f"{name}.weight", "must be a positive number", corpus.weight)
    else:
        _need(source, corpus.weight == 1.0, f"{name}.weight", "only training corpora are weighted", corpus.weight)
        _need(source, corpus.train_tokenizer, f"{name}.train_tokenizer", "only training corpora train the tokenizer",
              corpus.train_tokenizer)
    kind = corpus.kind()
    if kind == "text":
        ok, what = bool(corpus.src and corpus.tgt), "needs both 'src' and 'tgt' file paths (or 'path' or 'dataset')"
    elif kind == "datasets":
        ok, what = bool(corpus.dataset), "needs 'dataset' (a hub name, json/csv/parquet, or disk)"
        if corpus.dataset in ("json", "csv", "parquet", "disk"):
            ok, what = bool(corpus.path), f"dataset '{corpus.dataset}' needs 'path'"
    else:
        ok, what = bool(corpus.path), f"format '{kind}' needs 'path'"
    if kind == "tsv":
        ok = ok and all(f.isdigit() for f in (corpus.src_field, corpus.tgt_field) if f)
        what += "; src_field/tgt_field of a TSV file are column numbers (0-based)"
    shown = {k: v for k, v in dataclasses.asdict(corpus).items()
             if v and k not in ("split", "weight", "train_tokenizer")}
    _need(source, ok, name, what, shown)


def _check_tokenizer(tok: TokenizerConfig, source: str) -> None:
    _need(source, tok.vocab_size >= 16, "tokenizer.vocab_size", "must be at least 16", tok.vocab_size)
    _need(source, 0.9 <= tok.character_coverage <= 1.0, "tokenizer.character_coverage", "must be in [0.9, 1]",
          tok.character_coverage)
    _need(source, tok.sample_sentences >= 0, "tokenizer.sample_sentences", "must be >= 0 (0 = every sentence)",
          tok.sample_sentences)
    _need(source, all(isinstance(s, str) and s and not any(ch.isspace() for ch in s) for s in tok.user_symbols),
          "tokenizer.user_symbols", "must be a list of non-empty strings without spaces", tok.user_symbols)


def _check_model(c: Config, source: str) -> None:
    """The model's sizes and rates, and what they need of the data and the tokenizer."""
    m = c.model
    for key, value in [("model.encoder_layers", m.encoder_layers), ("model.decoder_layers", m.decoder_layers),
                       ("model.d_model", m.d_model), ("model.heads", m.heads), ("model.d_ff", m.d_ff),
                       ("model.max_positions", m.max_positions)]:
        _need(source, value > 0, key, "must be a positive integer", value)
    _need(source, m.d_model % m.heads == 0, "model.heads", f"must divide model.d_model ({m.d_model})", m.heads)
    _need(source, m.positions != "sinusoidal" or m.d_model % 2 == 0, "model.d_model",
          "sinusoidal positions need an even size (a sine and a cosine per frequency)", m.d_model)
    # learned positions: a training source is max_len tokens + EOS, a decoder input BOS + max_len tokens
    _need(source, m.positions != "learned" or c.data.max_len + 1 <= m.max_positions, "model.max_positions",
          f"learned positions must cover data.max_len ({c.data.max_len}) + 1 for BOS/EOS = {c.data.max_len + 1}",
          m.max_positions)
    for key, value in [("model.dropout", m.dropout), ("model.attention_dropout", m.attention_dropout),
                       ("model.activation_dropout", m.activation_dropout)]:
        _need(source, 0.0 <= value < 1.0, key, "must be in [0, 1)", value)
    _need(source, m.tie_embeddings != "all" or c.tokenizer.joint, "model.tie_embeddings",
          "'all' needs a shared vocabulary (tokenizer.joint: true)", m.tie_embeddings)


def _check_train(t: TrainConfig, source: str) -> None:
    for key, value in [("train.batch_tokens", t.batch_tokens), ("train.valid_every", t.valid_every),
                       ("train.log_every", t.log_every)]:
        _need(source, value > 0, key, "must be a positive integer", value)
    _need(source, 0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)", t.label_smoothing)
    _need(source, t.lr > 0, "train.lr", "must be positive", t.lr)
    for key, value in [("train.warmup_steps", t.warmup_steps), ("train.max_steps", t.max_steps),
                       ("train.max_epochs", t.max_epochs)]:
        _need(source, value >= 0, key, "must be >= 0", value)
    for key, value in [("train.keep_last", t.keep_last), ("train.keep_best", t.keep_best),
                       ("train.accum_steps", t.accum_steps)]:
        _need(source, value >= 1, key, "must be >= 1", value)
    _need(source, t.patience >= 0, "train.patience", "must be >= 0 (0 = no early stopping)", t.patience)
    _need(source, t.lr_schedule != "budget" or bool(t.max_time or t.max_steps), "train.lr_schedule",
          "'budget' needs train.max_time or train.max_steps to decay towards", t.lr_schedule)
    _need(source, t.clip_norm >= 0, "train.clip_norm", "must be >= 0", t.clip_norm)
    _check_regularisers(t, source)
    _need(source, len(t.adam_betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in t.adam_betas),
          "train.adam_betas", "must be two numbers in [0, 1)", t.adam_betas)
    _need(source, re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", t.device) is not None, "train.device",
          "must be auto, cpu, cuda, cuda:N or mps", t.device)
    _need(source, t.threads >= 0, "train.threads", "must be >= 0 (0 = every core)", t.threads)
    try:
        parse_duration(t.max_time)
        dist_timeout = parse_duration(t.dist_timeout, "train.dist_timeout")
    except MTError as e:
        raise MTError(f"{source}: {e}") from None
    _need(source, dist_timeout > 0, "train.dist_timeout", "must be positive", t.dist_timeout)


def _check_regularisers(t: TrainConfig, source: str) -> None:
    """Subword sampling, R-Drop, word dropout, EMA and checkpoint averaging (all off by default)."""
    _need(source, 0.0 <= t.subword_alpha <= 1.0, "train.subword_alpha", "must be in [0, 1] (0 = off)",
          t.subword_alpha)
    _need(source, t.subword_nbest == -1 or t.subword_nbest > 1, "train.subword_nbest",
          "must be -1 (all segmentations) or > 1", t.subword_nbest)
    _need(source, t.rdrop >= 0, "train.rdrop", "must be >= 0 (0 = off)", t.rdrop)
    _need(source, 0.0 <= t.word_dropout < 1.0, "train.word_dropout", "must be in [0, 1)", t.word_dropout)
    _need(source, 0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1) (0 = off)", t.ema_decay)
    _need(source, 0 <= t.average_last <= t.keep_last, "train.average_last",
          f"must be in [0, train.keep_last ({t.keep_last})]: only kept checkpoints can be averaged", t.average_last)


def _check_decode(d: DecodeConfig, source: str) -> None:
    for key, value in [("decode.beam_size", d.beam_size), ("decode.batch_tokens", d.batch_tokens)]:
        _need(source, value > 0, key, "must be a positive integer", value)
    _need(source, d.min_len >= 0 and d.no_repeat_ngram >= 0, "decode.min_len",
          "min_len and no_repeat_ngram must be >= 0", (d.min_len, d.no_repeat_ngram))
    _need(source, d.max_len_a >= 0 and d.max_len_b >= 0, "decode.max_len_a", "max_len_a and max_len_b must be >= 0",
          (d.max_len_a, d.max_len_b))
    engine_mode = isinstance(d.mode, str) and d.mode.startswith("ctranslate2:")
    _need(source, d.mode is None or d.mode in DECODE_MODES + ENGINE_MODES, "decode.mode",
          f"ctranslate2:TYPE takes a TYPE from {', '.join(ENGINE_COMPUTE_TYPES)}" if engine_mode else
          f"must be one of {', '.join(DECODE_MODES)} (written by mt tune RUN --modes) or null (never measured)",
          d.mode)
