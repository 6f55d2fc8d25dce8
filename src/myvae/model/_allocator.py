"""Keep glibc's allocator from handing freed tensor memory back to the system between training steps.

Every training step allocates and frees the same few cells × genes tensors (a few MiB each). By default glibc
serves blocks that large with ``mmap`` and unmaps them when they are freed, or trims the top of its heap, so each
step faults the same memory in again, page by page (what that costs is measured on the performance page, from
``benchmarks/profile_step.py``). While training, :func:`reuse_freed_memory` raises glibc's ``mmap`` and trim
thresholds so freed blocks are reused; afterwards it puts glibc's default thresholds back and returns the free
memory to the system (``malloc_trim``). Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_TRAINING_MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit systems
_TRAINING_TRIM_THRESHOLD = 512 * 2**20


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, glibc keeps freed memory for reuse; yields whether glibc took the setting."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    applied = libc.mallopt(_M_MMAP_THRESHOLD, _TRAINING_MMAP_THRESHOLD) == 1
    applied &= libc.mallopt(_M_TRIM_THRESHOLD, _TRAINING_TRIM_THRESHOLD) == 1
    try:
        yield applied
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)
