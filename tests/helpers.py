"""What several test modules share: a tiny parallel corpus, the tiny model's overrides, and
subprocess helpers that fail with what hung. Fixtures stay in conftest.py."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mt.cli import main

SUBJECTS = [("der hund", "the dog"), ("die katze", "the cat"), ("ein mann", "a man"),
            ("eine frau", "a woman"), ("das kind", "the child")]
VERBS = [("läuft", "runs"), ("schläft", "sleeps"), ("springt", "jumps"), ("singt", "sings")]
PLACES = [("im park", "in the park"), ("am strand", "on the beach")]


def tiny_pairs(n: int = 20) -> list[tuple[str, str]]:
    """``n`` German-English pairs built from a small grammar, all different."""
    pairs = [(f"{s} {v} {p} .", f"{se} {ve} {pe} .")
             for (s, se), (v, ve), (p, pe) in itertools.product(SUBJECTS, VERBS, PLACES)]
    return pairs[:n]


def write_corpus(folder: Path, name: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    src, tgt = folder / f"{name}.de", folder / f"{name}.en"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


def cached_ids(data, side: str) -> list[list[int]]:
    """Every pair's ids on one side of a ``mt.cache.TrainingData``, with the special tokens that
    ``mt.data.encode_parallel`` adds (src + EOS, BOS + tgt + EOS), for comparing the two."""
    from mt.tokenizer import BOS, EOS

    rows = data.rows(np.arange(len(data)), side)
    return [r.tolist() + [EOS] if side == "src" else [BOS] + r.tolist() + [EOS] for r in rows]


TINY_OVERRIDES = [
    "tokenizer.vocab_size=60", "tokenizer.model_type=word",
    "model.encoder_layers=2", "model.decoder_layers=2", "model.d_model=64", "model.heads=4",
    "model.d_ff=128", "model.dropout=0.0", "model.attention_dropout=0.0",
    "train.precision=fp32", "train.threads=1", "train.batch_tokens=120", "train.lr=0.003",
    "train.warmup_steps=20", "train.label_smoothing=0.0", "train.log_every=5", "train.valid_every=100",
    "decode.beam_size=3",
]


# ---------------------------------------------------------------- subprocesses in tests
# Generous limits (the machine may be busy: CI, a training run beside), and a failure that says
# what hung instead of a bare TimeoutExpired; never a fixed sleep standing in for an event.


def run_process(args: list, what: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run([str(a) for a in args], timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{what} hung for {timeout:.0f} s; its stderr ended with:\n{tail[-2000:]}")


def wait_for_lines(path: Path, n: int, proc, what: str, timeout: float = 240) -> None:
    """Wait until the process ``proc`` has written ``n`` lines to ``path`` (polls the file it appends to)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().count("\n") >= n):
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the process exited ({proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def interrupt_once_translating(proc: subprocess.Popen) -> bytes:
    """SIGINT to an `mt translate` once its progress bar shows that decoding has begun (the bar
    appears once the sentences are read); its whole stderr once it has stopped."""
    import select
    import signal

    err = b""
    try:
        while b"translate:" not in err:
            assert select.select([proc.stderr], [], [], 120)[0], "no progress bar within 120 s"
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"mt translate ended before translating: {err.decode()[-2000:]}"
            err += chunk
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("mt translate did not stop within 120 s of SIGINT")
    finally:
        proc.kill()
    return err + rest


def pipe_with(data: bytes):
    """A readable file whose descriptor is a real pipe holding ``data`` (then end of input)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    return open(read_fd, "r", encoding="utf-8")


def run_cli(argv, capsys, stdin_bytes=None, monkeypatch=None):
    if stdin_bytes is not None:
        monkeypatch.setattr(sys, "stdin", pipe_with(stdin_bytes))
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
