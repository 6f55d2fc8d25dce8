import ctypes
import platform

import numpy as np

from myvae.model._allocator import OPT_IN_VARIABLE, reuse_freed_memory

ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
BLOCK = 2**20  # float64 values: an 8 MiB block, above glibc's default mmap threshold of 128 KiB


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _mmapped_bytes_of_an_8_mib_block() -> int:
    """How much glibc's memory in mmapped blocks grows while an 8 MiB array is held."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    before = libc.mallinfo2().hblkhd
    block = np.ones(BLOCK)
    grown = libc.mallinfo2().hblkhd - before
    assert block.sum() == BLOCK
    del block
    return grown


def test_without_opting_in_the_allocator_is_left_alone(monkeypatch):
    monkeypatch.delenv(OPT_IN_VARIABLE, raising=False)
    with reuse_freed_memory() as applied:
        assert applied is False


def test_glibc_takes_the_training_thresholds_when_opted_in_and_memory_still_works(monkeypatch):
    monkeypatch.setenv(OPT_IN_VARIABLE, "1")
    with reuse_freed_memory() as applied:
        assert applied == ON_GLIBC
        inside = _mmapped_bytes_of_an_8_mib_block() if ON_GLIBC else None
    if ON_GLIBC:
        # while training, a large block comes from the heap, where freed memory is reused ...
        assert inside == 0
        # ... and afterwards glibc's default thresholds are back: it is mapped (and unmapped when freed) again
        assert _mmapped_bytes_of_an_8_mib_block() >= BLOCK * 8
