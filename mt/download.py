"""``mt data multi30k``: fetch the Multi30k task-1 corpus where the configs look for it.

The files come from the dataset's public home (the multi30k/dataset repository on GitHub),
are checked against their known line counts, and are moved into place only when all of
them are whole, so an interrupted download never leaves a corpus that trains on half a file.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from mt.errors import MTError

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
MULTI30K_HOME = "https://github.com/multi30k/dataset/tree/master/data/task1/raw"
URL_ENV = "MT_MULTI30K_URL"  # a mirror holding the same file names
LANGS = ("en", "de", "fr", "cs")
# our name -> (the file's name upstream, its number of lines)
SPLITS = {"train": ("train", 29000), "val": ("val", 1014), "test2016": ("test_2016_flickr", 1000)}


def default_root() -> Path:
    """Where the configs look: $MT_DATA_ROOT, else ../shared/data beside the repository root."""
    return Path(os.environ.get("MT_DATA_ROOT") or "../shared/data")


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def complete(target: Path) -> bool:
    """True when every file is there with its known number of lines."""
    return all((target / f"{split}.{lang}").is_file() and count_lines(target / f"{split}.{lang}") == n
               for split, (_, n) in SPLITS.items() for lang in LANGS)


def fetch(url: str, dest: Path, timeout: float = 60) -> None:
    """Download a gzipped file and write it uncompressed to ``dest``."""
    with urllib.request.urlopen(url, timeout=timeout) as response, gzip.GzipFile(fileobj=response) as gz:
        with open(dest, "wb") as out:
            shutil.copyfileobj(gz, out)


def how_to(url: str, target: Path) -> str:
    names = ", ".join(f"{upstream}.{{{','.join(LANGS)}}}.gz" for upstream, _ in SPLITS.values())
    return (f"download {names} from {url if url != MULTI30K_URL else MULTI30K_HOME}, gunzip them into "
            f"{target}/ as train.LANG, val.LANG and test2016.LANG (or set {URL_ENV} to a mirror)")


def download_multi30k(root: str | Path | None = None, log=print) -> Path:
    """Fetch Multi30k (train, val, test2016 in en/de/fr/cs) into ROOT/multi30k; returns that directory."""
    target = Path(root if root is not None else default_root()) / "multi30k"
    if complete(target):
        log(f"Multi30k is already in {target}")
        return target
    url = os.environ.get(URL_ENV) or MULTI30K_URL
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MTError(f"cannot create {target}: {e.strerror}") from None
    with tempfile.TemporaryDirectory(prefix=".multi30k-", dir=target) as tmp:
        for split, (upstream, lines) in SPLITS.items():
            for lang in LANGS:
                name, source = f"{split}.{lang}", f"{url.rstrip('/')}/{upstream}.{lang}.gz"
                log(f"downloading {source}")
                try:
                    fetch(source, Path(tmp) / name)
                except (urllib.error.URLError, OSError, EOFError, ValueError) as e:
                    reason = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
                    raise MTError(f"cannot download {source} ({reason}): {how_to(url, target)}") from None
                got = count_lines(Path(tmp) / name)
                if got != lines:
                    raise MTError(f"{source} has {got} lines, Multi30k's {name} has {lines}: "
                                  f"{how_to(url, target)}")
        for name in sorted(os.listdir(tmp)):  # every file is whole: only now replace what was there
            os.replace(Path(tmp) / name, target / name)
    log(f"Multi30k (train, val, test2016 in {', '.join(LANGS)}) is in {target}")
    return target

