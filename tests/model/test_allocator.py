import ctypes
import platform

import numpy as np

from myvae.model._allocator import reuse_freed_memory

ON_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
BLOCK = 2**20  # float64 values: an 8 MiB block, above glibc's initial mmap threshold of 128 KiB


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


def test_large_blocks_come_from_the_heap_while_training_and_memory_still_works():
    with reuse_freed_memory() as applied:
        assert applied == ON_GLIBC
        if ON_GLIBC:
            assert _mmapped_bytes_of_an_8_mib_block() == 0
        values = np.arange(BLOCK, dtype=np.float64)
        assert values[-1] == BLOCK - 1
