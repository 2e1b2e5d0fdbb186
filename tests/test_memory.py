"""The allocator setting of the ``mt`` command: large freed blocks go back to the system."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mt import memory

PROBE = """
import ctypes, sys
from mt.memory import tune_allocator
if sys.argv[1] == "tuned":
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
print(round(rss_mb() - before))
"""


def _held_mb(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.skipif(memory._glibc() is None, reason="glibc's mallopt only")
def test_tuned_allocator_returns_freed_large_blocks():
    assert _held_mb("default") >= 100  # the freed 117 MB stay resident below the live block
    assert _held_mb("tuned") <= 10  # each block was mapped and is unmapped when freed


def test_environment_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.tune_allocator() is False


def test_the_mt_command_tunes_the_allocator(monkeypatch, tmp_path):
    import mt.cli

    calls = []
    monkeypatch.setattr(mt.cli, "tune_allocator", lambda: calls.append(1))
    with pytest.raises(SystemExit):  # the files do not exist: the verb fails after the setting was made
        mt.cli.main(["evaluate", "-r", str(tmp_path / "ref"), "-i", str(tmp_path / "hyp")])
    assert calls == [1]
