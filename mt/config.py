"""One typed config: YAML file + dotted command-line overrides -> validated dataclasses.

Everything is checked here, once, so the rest of the code can trust the values.
Errors name the file and the dotted key, and suggest the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from mt.errors import MTError

DATA_ROOT_ENV = "MT_DATA_ROOT"
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
    compile: bool = False  # torch.compile the model for the training step (see docs/benchmarks.md for when it pays)
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


class _Plain:
    """An unquoted YAML scalar that YAML 1.1 reads as a non-string (``no``, ``off``, ``1:30``, ``010``,
    ``null``), with the text it was written as: a string field keeps the text, any other field the value."""

    __slots__ = ("value", "text")

    def __init__(self, value: Any, text: str):
        self.value, self.text = value, text


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load`` that wraps every plain non-string scalar in ``_Plain``."""


def _construct_plain(loader: _Loader, node: yaml.ScalarNode) -> Any:
    value = yaml.SafeLoader.yaml_constructors[node.tag](loader, node)
    return _Plain(value, node.value) if node.style is None else value


for _tag in ("bool", "int", "float", "null", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct_plain)


def _plain_keys(node: Any) -> Any:
    """Mapping keys as YAML 1.1 reads them (only values may stay wrapped)."""
    if isinstance(node, dict):
        return {(k.value if isinstance(k, _Plain) else k): _plain_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain_keys(v) for v in node]
    return node


def _yaml_values(node: Any) -> Any:
    """Every ``_Plain`` replaced by its YAML 1.1 value (for untyped lists)."""
    if isinstance(node, _Plain):
        return node.value
    if isinstance(node, dict):
        return {k: _yaml_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_yaml_values(v) for v in node]
    return node


def _parse_yaml(text: str) -> Any:
    return _plain_keys(yaml.load(text, Loader=_Loader))  # noqa: S506 (a SafeLoader)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (YAML), apply ``key=value`` overrides, validate, resolve data paths."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        raw = _read_with_bases(Path(path))
    cli_keys = _apply_overrides(raw, overrides)
    config = _build(Config, raw, "", source, cli_keys)
    _check_values(config, source)
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    _resolve_paths(config, base, cli_keys)
    return config


BASE_KEY = "base"  # a config file may extend another: base: multi30k_base.yaml (relative to the file)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MTError(f"config file '{path}' not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MTError(f"config file '{path}': cannot read: {e}") from None
    try:
        raw = _parse_yaml(text)
        raw = {} if raw is None or (isinstance(raw, _Plain) and raw.value is None) else raw
    except yaml.YAMLError as e:
        raise MTError(f"{path}: invalid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise MTError(f"{path}: expected a mapping of keys at the top level")
    return raw


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The mapping of ``path`` laid over its ``base:`` file's, recursively.

    Mappings merge key by key, the including file winning; lists and other values are
    replaced whole. A relative ``data.root`` or ``data.cache_dir`` stays relative to the
    file that sets it, so a recipe may live in another folder than its base.
    """
    if path.resolve() in chain:
        cycle = " -> ".join(p.name for p in chain + (path.resolve(),))
        raise MTError(f"{chain[-1]}: {BASE_KEY}: config files include each other in a cycle: {cycle}")
    raw = _read_yaml(path)
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "cache_dir"):
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                data[key] = str(path.resolve().parent / value)
    if BASE_KEY not in raw:
        return raw
    base = raw.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise MTError(f"{path}: {BASE_KEY}: expected the path of a config file, got {base!r}")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.resolve().parent / base_path
    if not base_path.exists():
        raise MTError(f"{path}: {BASE_KEY}: config file '{base}' not found (looked for {base_path})")
    return _merge(_read_with_bases(base_path, chain + (path.resolve(),)), raw)


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Rebuild a saved (already resolved) config, e.g. from a run directory or checkpoint."""
    config = _build(Config, raw, "", source)
    _check_values(config, source)
    return config


def save_config(config: Config, path: Path) -> None:
    from mt.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))


def parse_duration(text: str, key: str = "train.max_time") -> float:
    """'90s', '25m', '2h', '1h30m', or a bare number of seconds -> seconds."""
    text = str(text).strip()
    if not text:
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", text).strip():
        raise MTError(f"{key}: '{text}' is not a duration; use e.g. '90s', '25m', '2h', '1h30m'")
    unit = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * unit[u] for n, u in parts)


def _apply_overrides(raw: dict, overrides: list[str]) -> set[str]:
    """Set dotted keys in the raw dict; returns the keys given on the command line."""
    given = set()
    for item in overrides:
        if "=" not in item:
            raise MTError(f"override '{item}' must look like key=value (e.g. train.max_steps=100)")
        key, value = item.split("=", 1)
        key = key.strip()
        try:
            parsed = _parse_yaml(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):  # data.train.1.weight: an item of a list of corpora
                if not part.isdigit() or int(part) >= len(node):
                    raise MTError(f"override '{item}': '{part}' is not an index of a list of {len(node)}")
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        if isinstance(node, list):
            raise MTError(f"override '{item}': set a key of one list item, e.g. data.train.0.src=FILE")
        node[parts[-1]] = parsed
        given.add(key)
    return given


def _build(cls, raw: Any, prefix: str, source: str, cli_keys: set[str] = frozenset()):
    """Turn a raw mapping into dataclass ``cls``, checking keys and types.

    Errors about keys given on the command line say so instead of naming the file.
    """
    where = prefix.rstrip(".") or "top level"
    if isinstance(raw, _Plain):
        raw = raw.value
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        source = "command line" if prefix.rstrip(".") in cli_keys else source
        raise MTError(f"{source}: {where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = prefix + str(key)
            valid = [prefix + n for n in names]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
            where = "command line" if any(k == full or k.startswith(full + ".") for k in cli_keys) else source
            raise MTError(f"{where}: unknown key '{full}'{hint}")
    values = {}
    for name in names:
        if name in raw:
            key = prefix + name
            values[name] = _convert(raw[name], hints[name], key, "command line" if key in cli_keys else source,
                                    cli_keys)
    return cls(**values)


def _convert(value: Any, hint: Any, key: str, source: str, cli_keys: set[str] = frozenset()):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(value, _Plain):  # YAML 1.1 read it as a bool/number/null/date: was a string meant?
        wants_text = hint is str or (origin is Literal and all(isinstance(a, str) for a in args))
        value = value.text if wants_text else value.value
    if origin is typing.Union:  # Optional[X], or X | list[X] (one corpus or several)
        if value is None and type(None) in args:
            return None
        lists = [a for a in args if typing.get_origin(a) is list]
        hint = lists[0] if lists and isinstance(value, list) else next(
            a for a in args if a is not type(None) and typing.get_origin(a) is not list)
        return _convert(value, hint, key, source, cli_keys)
    if origin is list and args:
        if not isinstance(value, list) or not value:
            raise MTError(f"{source}: {key}: expected a non-empty list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]", source, cli_keys) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", source, cli_keys)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise MTError(f"{source}: {key}: {value!r} is not allowed; choose one of: {allowed}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise MTError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MTError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MTError(f"{source}: {key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # no setting means anything at nan or inf
            raise MTError(f"{source}: {key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise MTError(f"{source}: {key}: expected a string, got {value!r}")
        return str(value)
    if hint is list:
        if not isinstance(value, list):
            raise MTError(f"{source}: {key}: expected a list, got {value!r}")
        return _yaml_values(value)
    raise TypeError(f"unsupported config type {hint} for {key}")


def _check_values(c: Config, source: str) -> None:
    """Checks that involve a value's range or several keys."""

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise MTError(f"{source}: {key}: {what}, got {value!r}")

    m, t, d, tok = c.model, c.train, c.decode, c.tokenizer
    for key, value in [("model.encoder_layers", m.encoder_layers), ("model.decoder_layers", m.decoder_layers),
                       ("model.d_model", m.d_model), ("model.heads", m.heads), ("model.d_ff", m.d_ff),
                       ("model.max_positions", m.max_positions), ("train.batch_tokens", t.batch_tokens),
                       ("train.valid_every", t.valid_every), ("train.log_every", t.log_every),
                       ("decode.beam_size", d.beam_size), ("decode.batch_tokens", d.batch_tokens),
                       ("data.max_len", c.data.max_len)]:
        need(value > 0, key, "must be a positive integer", value)
    need(m.d_model % m.heads == 0, "model.heads", f"must divide model.d_model ({m.d_model})", m.heads)
    need(m.positions != "sinusoidal" or m.d_model % 2 == 0, "model.d_model",
         "sinusoidal positions need an even size (a sine and a cosine per frequency)", m.d_model)
    # learned positions: a training source is max_len tokens + EOS, a decoder input BOS + max_len tokens
    need(m.positions != "learned" or c.data.max_len + 1 <= m.max_positions, "model.max_positions",
         f"learned positions must cover data.max_len ({c.data.max_len}) + 1 for BOS/EOS = {c.data.max_len + 1}",
         m.max_positions)
    need(c.data.max_len_ratio >= 1, "data.max_len_ratio", "must be at least 1 (a ratio of longer to shorter)",
         c.data.max_len_ratio)
    for key, value in [("model.dropout", m.dropout), ("model.attention_dropout", m.attention_dropout),
                       ("model.activation_dropout", m.activation_dropout),
                       ("train.label_smoothing", t.label_smoothing)]:
        need(0.0 <= value < 1.0, key, "must be in [0, 1)", value)
    need(tok.vocab_size >= 16, "tokenizer.vocab_size", "must be at least 16", tok.vocab_size)
    need(0.9 <= tok.character_coverage <= 1.0, "tokenizer.character_coverage", "must be in [0.9, 1]",
         tok.character_coverage)
    need(m.tie_embeddings != "all" or tok.joint, "model.tie_embeddings",
         "'all' needs a shared vocabulary (tokenizer.joint: true)", m.tie_embeddings)
    need(t.lr > 0, "train.lr", "must be positive", t.lr)
    need(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", t.warmup_steps)
    need(t.max_steps >= 0, "train.max_steps", "must be >= 0", t.max_steps)
    need(t.max_epochs >= 0, "train.max_epochs", "must be >= 0", t.max_epochs)
    need(t.keep_last >= 1, "train.keep_last", "must be >= 1", t.keep_last)
    need(t.keep_best >= 1, "train.keep_best", "must be >= 1", t.keep_best)
    need(t.accum_steps >= 1, "train.accum_steps", "must be >= 1", t.accum_steps)
    need(t.patience >= 0, "train.patience", "must be >= 0 (0 = no early stopping)", t.patience)
    need(t.lr_schedule != "budget" or bool(t.max_time or t.max_steps), "train.lr_schedule",
         "'budget' needs train.max_time or train.max_steps to decay towards", t.lr_schedule)
    need(t.clip_norm >= 0, "train.clip_norm", "must be >= 0", t.clip_norm)
    need(0.0 <= t.subword_alpha <= 1.0, "train.subword_alpha", "must be in [0, 1] (0 = off)", t.subword_alpha)
    need(t.subword_nbest == -1 or t.subword_nbest > 1, "train.subword_nbest",
         "must be -1 (all segmentations) or > 1", t.subword_nbest)
    need(t.rdrop >= 0, "train.rdrop", "must be >= 0 (0 = off)", t.rdrop)
    need(0.0 <= t.word_dropout < 1.0, "train.word_dropout", "must be in [0, 1)", t.word_dropout)
    need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1) (0 = off)", t.ema_decay)
    need(0 <= t.average_last <= t.keep_last, "train.average_last",
         f"must be in [0, train.keep_last ({t.keep_last})]: only kept checkpoints can be averaged", t.average_last)
    need(len(t.adam_betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in t.adam_betas),
         "train.adam_betas", "must be two numbers in [0, 1)", t.adam_betas)
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", t.device) is not None, "train.device",
         "must be auto, cpu, cuda, cuda:N or mps", t.device)
    need(t.threads >= 0, "train.threads", "must be >= 0 (0 = every core)", t.threads)
    need(d.min_len >= 0 and d.no_repeat_ngram >= 0, "decode.min_len", "min_len and no_repeat_ngram must be >= 0",
         (d.min_len, d.no_repeat_ngram))
    need(d.max_len_a >= 0 and d.max_len_b >= 0, "decode.max_len_a", "max_len_a and max_len_b must be >= 0",
         (d.max_len_a, d.max_len_b))
    engine_mode = isinstance(d.mode, str) and d.mode.startswith("ctranslate2:")
    need(d.mode is None or d.mode in DECODE_MODES + ENGINE_MODES, "decode.mode",
         f"ctranslate2:TYPE takes a TYPE from {', '.join(ENGINE_COMPUTE_TYPES)}" if engine_mode else
         f"must be one of {', '.join(DECODE_MODES)} (written by mt tune RUN --modes) or null (never measured)",
         d.mode)
    try:
        parse_duration(t.max_time)
        dist_timeout = parse_duration(t.dist_timeout, "train.dist_timeout")
    except MTError as e:
        raise MTError(f"{source}: {e}") from None
    need(dist_timeout > 0, "train.dist_timeout", "must be positive", t.dist_timeout)
    need(tok.sample_sentences >= 0, "tokenizer.sample_sentences", "must be >= 0 (0 = every sentence)",
         tok.sample_sentences)
    need(all(isinstance(s, str) and s and not any(ch.isspace() for ch in s) for s in tok.user_symbols),
         "tokenizer.user_symbols", "must be a list of non-empty strings without spaces", tok.user_symbols)
    corpora = [(f"data.train[{i}]" if isinstance(c.data.train, list) else "data.train", corpus)
               for i, corpus in enumerate(c.data.train_corpora())]
    corpora += [(f"data.{split}", getattr(c.data, split)) for split in ("valid", "test")]
    for name, corpus in corpora:
        if corpus is None or (not name.startswith("data.train") and not corpus.is_set()):
            continue
        if name.startswith("data.train"):
            need(0 < corpus.weight < math.inf, f"{name}.weight", "must be a positive number", corpus.weight)
        else:
            need(corpus.weight == 1.0, f"{name}.weight", "only training corpora are weighted", corpus.weight)
            need(corpus.train_tokenizer, f"{name}.train_tokenizer", "only training corpora train the tokenizer",
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
        need(ok, name, what, shown)
    flags = [corpus.train_tokenizer for corpus in c.data.train_corpora()]
    listed = isinstance(c.data.train, list)
    need(any(flags), "data.train[*].train_tokenizer" if listed else "data.train.train_tokenizer",
         "at least one training corpus must train the tokenizer", flags if listed else flags[0])


def _resolve_paths(c: Config, config_dir: Path, cli_keys: set[str]) -> None:
    """Make corpus paths absolute.

    Paths from the YAML file are relative to ``data.root``; a relative ``data.root`` is
    relative to the config file, and ``$MT_DATA_ROOT`` replaces it. Paths typed on the
    command line are relative to the current directory, as a shell user expects.
    """
    if "data.root" in cli_keys:
        root = Path(c.data.root).expanduser()
    elif os.environ.get(DATA_ROOT_ENV):
        root = Path(os.environ[DATA_ROOT_ENV]).expanduser()
    else:
        root = Path(c.data.root).expanduser()
        if not root.is_absolute():
            root = config_dir / root
    root = root.resolve()
    c.data.root = str(root)
    if c.data.cache_dir:
        cache = Path(c.data.cache_dir).expanduser()
        base = Path.cwd() if "data.cache_dir" in cli_keys else config_dir
        c.data.cache_dir = str(cache if cache.is_absolute() else (base / cache).resolve())
    corpora = [(f"train.{i}" if isinstance(c.data.train, list) else "train", corpus)
               for i, corpus in enumerate(c.data.train_corpora())]
    corpora += [(split, getattr(c.data, split)) for split in ("valid", "test")]
    for name, corpus in corpora:
        if corpus is None:
            continue
        for side in ("src", "tgt", "path"):
            value = getattr(corpus, side)
            if not value:
                continue
            keys = (f"data.{name}.{side}", f"data.{name}", f"data.{name.split('.')[0]}")
            from_cli = any(k in cli_keys for k in keys)
            base = Path.cwd() if from_cli else root
            p = Path(value).expanduser()
            setattr(corpus, side, str(p if p.is_absolute() else (base / p).resolve()))
