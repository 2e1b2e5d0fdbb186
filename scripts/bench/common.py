"""What every benchmark here shares: the machine a figure was taken on, timing, and process memory.

A speed figure means little without the CPU, its ISA, whether bf16 is native and the load it ran
under, so every benchmark prints ``machine_line()`` first. Benchmarks import only this module and
``mt``; run them from the repository root as ``python scripts/bench/NAME.py``.
"""
from __future__ import annotations

import os
import socket
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable


def machine_line() -> str:
    """'AMD EPYC 7B13 (AVX2), bf16 native: no, 2 cores, 2 threads, torch 2.x, load average 0.3'.

    The CPU description is ``mt.decode_mode``'s (what ``mt tune`` records), so a benchmark and a
    tuned run name a machine alike; torch is imported only here, when a benchmark asks."""
    from mt.decode_mode import describe, machine

    return f"{describe(machine())}, load average {load_average():.1f}"


def load_average() -> float:
    """The 1-minute load average: speed figures taken under load are ratios at best."""
    return os.getloadavg()[0]


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes (wall time)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile by nearest rank (no interpolation: a latency that was measured)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def status_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (the peak) / RssAnon / RssFile of a process in kB (empty once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory now, MiB."""
    return status_kb(pid).get("VmRSS", float("nan")) / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """The highest resident memory so far (VmHWM), MiB."""
    return status_kb(pid).get("VmHWM", float("nan")) / 1024


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
