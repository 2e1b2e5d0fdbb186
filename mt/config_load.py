"""How a config file becomes a typed config: YAML with ``base:`` files, dotted overrides, paths.

The rules of a valid config (its keys, defaults and value checks) live in ``mt.config``;
this module turns text into those dataclasses, naming the file and key on any error.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mt.errors import MTError

DATA_ROOT_ENV = "MT_DATA_ROOT"
BASE_KEY = "base"  # a config file may extend another: base: multi30k_base.yaml (relative to the file)


# ---------------------------------------------------------------- YAML files


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


def read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
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
    return _merge(read_with_bases(base_path, chain + (path.resolve(),)), raw)


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------- overrides, types, paths


def apply_overrides(raw: dict, overrides: list[str]) -> set[str]:
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


def build(cls, raw: Any, prefix: str, source: str, cli_keys: set[str] = frozenset()):
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
        return build(hint, value, key + ".", source, cli_keys)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise MTError(f"{source}: {key}: {value!r} is not allowed; choose one of: {allowed}")
        return value
    return _convert_scalar(value, hint, key, source)


def _convert_scalar(value: Any, hint: Any, key: str, source: str):
    """A bool, int, float, str or untyped list value, checked against its field's type."""
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


def resolve_paths(c, config_dir: Path, cli_keys: set[str]) -> None:
    """Make the corpus paths of ``c`` (a ``mt.config.Config``) absolute.

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
