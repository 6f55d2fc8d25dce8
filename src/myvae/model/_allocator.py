"""Optionally keep glibc's allocator from handing freed tensor memory back to the system between training steps.

Every training step allocates and frees the same few cells × genes tensors (a few MiB each). By default glibc
serves blocks that large with ``mmap`` and unmaps them when they are freed, or trims the top of its heap, so each
step can fault the same memory in again, page by page. With ``MYVAE_REUSE_FREED_MEMORY=1`` in the environment,
:func:`reuse_freed_memory` raises glibc's ``mmap`` and trim thresholds (``mallopt``) while training, so freed blocks
are reused, and afterwards sets them back to glibc's initial values and returns the free memory to the system
(``malloc_trim``).

It is opt-in because ``mallopt`` cannot be undone exactly: glibc has no call that reads the thresholds, and setting
any of them switches off glibc's dynamic ``mmap`` threshold for the rest of the process (by default glibc raises
the threshold to the size of each large block freed). Without the variable the allocator is left alone. The same
tuning for a whole process, without myvae: ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432`` (or
``MALLOC_MMAP_THRESHOLD_``). Elsewhere than glibc (macOS, Windows, musl) nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

__all__ = ["reuse_freed_memory"]

OPT_IN_VARIABLE = "MYVAE_REUSE_FREED_MEMORY"
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
    """Within the block, glibc keeps freed memory for reuse, if ``MYVAE_REUSE_FREED_MEMORY=1``.

    Yields whether glibc took the setting (``False`` without the variable, or without glibc).
    """
    libc = _glibc() if os.environ.get(OPT_IN_VARIABLE) == "1" else None
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
