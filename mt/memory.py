"""How the ``mt`` command has the C allocator hand freed tensor memory back to the system.

glibc serves allocations of 128 KB and more with mmap, but after the first such block is
freed it raises that threshold to the block's size, up to 32 MB. From then on the tensors of
a training step (a few MB each, a new size with every batch shape) come from the heap, whose
free holes are kept, not returned: the Multi30k recipe ends up holding twice the memory it
uses, and more the longer it runs (docs/benchmarks.md, "Memory"). A fixed threshold of 1 MB
(setting it also stops the adjustment) maps every large tensor and unmaps it when freed.

The ``mt`` command calls ``tune_allocator`` once; importing ``mt`` changes nothing, so a
program that uses mt as a library keeps its own allocator settings. ``MALLOC_MMAP_THRESHOLD_``
in the environment wins over ours.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers, from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_allocator() -> bool:
    """Map tensors of 1 MB and more and unmap them when freed; True if the setting was made."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (after a validation's many small tensors)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
