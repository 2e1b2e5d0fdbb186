"""How the ``mt`` command sets up the C allocator: fast steps, bounded memory.

glibc serves allocations of 128 KB and more with mmap, but after the first such block is
freed it raises that threshold to the block's size, up to 32 MB, and it trims the top of
its heap whenever 64 MB there are free. So a training step's tensors (a few MB each, a new
size with every batch shape) come from the heap, its holes are kept, and the memory held
grows with every new largest batch shape or validation; freed blocks at the top go back to
the system and are faulted in again, page by page, the next step.

Two settings were measured (docs/performance.md, "Memory"):
mapping every block of 1 MB and more (``mmap1m``) keeps the resident set at what is in use,
but then every large tensor of every step is a fresh mapping the kernel faults in and zeroes:
240,000 page faults a step, 29% slower training. ``heap`` (the default) serves everything
from the heap and never trims it, so a warm step reuses memory without a fault, and
``release_free_memory`` hands the free pages back after each validation. ``$MT_ALLOCATOR``
picks another mode (``mmap1m``, ``mmap1m+thp``: the same on transparent huge pages,
``glibc``: its own defaults); ``MALLOC_MMAP_THRESHOLD_`` in the environment wins over both.

The same call caps oneDNN's primitive cache at 32 entries and ideep's (PyTorch's layer over it)
at 16, instead of 1,024 each: bf16 matrix products on a CPU go through oneDNN, which keeps a
primitive and its buffers (1.5-3 MB) per shape, and with a new batch shape nearly every step
torch's 1,024 held twice the memory of fp32 training (docs/performance.md). One step of the recipe
needs some 50 primitives (each linear's forward and two backward products, the attention and
loss products), used again by the next layer: 16 oneDNN entries recreate most of them. On a
Xeon with AMX, 32 trained the recipe 1.11x as fast as 16 for 73 MB more over 160 updates (a whole
run's peak: 979 MiB against 899); 64 gained 1% more for 190 MB. The environment wins here too.

The ``mt`` command calls ``tune_allocator`` once, before the verbs that train or decode at
length (``mt.cli.MEMORY_TUNED_VERBS``); importing ``mt`` changes nothing, so a program that
uses mt as a library keeps its own allocator settings.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20
# $MT_ALLOCATOR: what the mt command sets (scripts/bench/allocator.py measures each)
ALLOCATOR_MODES = ("heap", "mmap1m", "mmap1m+thp", "glibc")
DEFAULT_ALLOCATOR = "heap"
# read by oneDNN and ideep when torch first creates a primitive, so set before any bf16 product runs
PRIMITIVE_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": "16"}


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_allocator() -> bool:
    """Apply ``$MT_ALLOCATOR`` (default ``heap``) to glibc's malloc and cap the primitive caches;
    True if a malloc setting was made."""
    mode = os.environ.get("MT_ALLOCATOR", DEFAULT_ALLOCATOR)
    if mode not in ALLOCATOR_MODES:
        from mt.errors import MTError
        raise MTError(f"MT_ALLOCATOR={mode!r}: expected one of {', '.join(ALLOCATOR_MODES)}")
    for name, capacity in PRIMITIVE_CACHES.items():
        os.environ.setdefault(name, capacity)
    libc = _glibc()
    if libc is None or mode == "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if mode == "heap":  # everything from the heap, never trimmed: no page faults once warm
        return libc.mallopt(M_MMAP_THRESHOLD, 256 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    if mode.endswith("+thp"):  # read by PyTorch at its first allocation, so before torch is imported
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (after a validation's many small tensors)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
