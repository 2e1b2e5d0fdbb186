"""The allocator setting of the ``mt`` command: large freed blocks go back to the system."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mt import memory

PROBE = """
import ctypes, os, sys
from mt.memory import release_free_memory, tune_allocator
if sys.argv[1] != "untuned":
    os.environ["MT_ALLOCATOR"] = sys.argv[1]
    assert tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
def touched(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p
libc.free(touched(8 << 20))  # glibc now serves blocks below 8 MB from the heap
before = rss_mb()
blocks = [touched(3 << 20) for _ in range(40)]  # 120 MB, like a training step's activations
for p in blocks[:-1]:  # the newest block stays alive, as tensors do across steps
    libc.free(p)
if sys.argv[2:] == ["release"]:
    release_free_memory()  # what training does after a validation
print(round(rss_mb() - before))
"""


def _held_mb(*mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROBE, *mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.skipif(memory._glibc() is None, reason="glibc's mallopt only")
def test_allocator_modes_keep_or_return_freed_large_blocks():
    assert _held_mb("untuned") >= 100  # the freed 117 MB stay resident below the live block
    assert _held_mb("mmap1m") <= 10  # each block was mapped and is unmapped when freed
    assert _held_mb("heap") >= 100  # kept for the next step: reused without page faults
    assert _held_mb("heap", "release") <= 10  # ... until the trim after a validation


def test_environment_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.tune_allocator() is False


@pytest.mark.parametrize("argv, tuned", [
    (["train", "missing.yaml"], True), (["translate", "missing_run"], True), (["tune", "missing_run", "--modes"], True),
    (["serve", "missing_run"], True), (["evaluate", "-r", "ref", "-i", "hyp"], False), (["plot", "missing_run"], False),
    (["average", "missing_run", "-o", "avg.pt"], False), (["export", "missing_run", "-o", "out"], False)])
def test_the_mt_command_tunes_the_allocator_for_the_verbs_that_train_or_decode(monkeypatch, tmp_path, argv, tuned):
    import mt.cli

    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mt.cli, "tune_allocator", lambda: calls.append(argv[0]))
    with pytest.raises(SystemExit):  # the files do not exist: the verb fails after the setting was made
        mt.cli.main(argv)
    assert calls == ([argv[0]] if tuned else [])


def test_unknown_allocator_mode_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import mt.cli

    monkeypatch.setenv("MT_ALLOCATOR", "jemalloc")
    with pytest.raises(SystemExit) as exit_info:
        mt.cli.main(["translate", str(tmp_path / "missing_run")])
    assert exit_info.value.code == 2
    assert "MT_ALLOCATOR='jemalloc': expected one of heap, mmap1m, mmap1m+thp, glibc" in capsys.readouterr().err



def test_allocator_modes(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "")  # so that teardown restores its absence
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    monkeypatch.setenv("MT_ALLOCATOR", "glibc")
    assert memory.tune_allocator() is False  # glibc's own thresholds: nothing set
    monkeypatch.setenv("MT_ALLOCATOR", "mmap1m")
    assert memory.tune_allocator() is True
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ
    monkeypatch.setenv("MT_ALLOCATOR", "mmap1m+thp")
    assert memory.tune_allocator() is True
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"  # read by torch at its first allocation


def test_the_primitive_caches_are_capped_and_the_environment_wins(monkeypatch):
    for name in memory.PRIMITIVE_CACHES:
        monkeypatch.setenv(name, "")  # so that teardown restores what was there
        monkeypatch.delenv(name)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    memory.tune_allocator()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "32"  # read by oneDNN at its first primitive
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"


def test_importing_mt_leaves_the_primitive_caches_alone():
    env = {k: v for k, v in os.environ.items() if k not in memory.PRIMITIVE_CACHES}
    probe = "import os, mt, mt.cli, mt.model, mt.memory; print(any(k in os.environ for k in mt.memory.PRIMITIVE_CACHES))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
