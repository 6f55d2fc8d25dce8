"""Training raises glibc's dynamic ``mmap`` threshold the way glibc itself does, and leaves the adjustment on.

Each check runs in a fresh process, whose allocator state no other test has touched. What it observes is glibc's
dynamic ``mmap`` threshold through ``mallinfo2().hblks`` (the number of blocks served by their own ``mmap``): a block
of 31 MiB is mapped as long as no block that large has been freed; freeing one raises the threshold, and the next
comes from the heap. Any ``mallopt`` of the thresholds would switch that adjustment off for good.
"""

import platform
import subprocess
import sys
import textwrap

import pytest
from helpers import SMALL_DATA

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or platform.libc_ver()[1] < "2.33",
    reason="observes glibc's allocator through mallinfo2 (glibc >= 2.33)",
)

_PROBE = textwrap.dedent(
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")


    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
        )]


    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]


    def mapped(mib):
        # whether glibc serves a block of this size with its own mmap
        before = libc.mallinfo2().hblks
        block = libc.malloc(mib * 2**20)
        after = libc.mallinfo2().hblks
        libc.free(block)
        return after > before
    """
)


def _run(script: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", _PROBE + script], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_a_fresh_process_maps_large_blocks_until_one_is_freed():
    # glibc's own behaviour, which training reproduces: the first 31 MiB block is mapped, the next is not
    assert _run("print(mapped(31), mapped(31))") == ["True", "False"]


def test_within_training_large_blocks_come_from_the_heap_and_glibc_keeps_adjusting():
    script = textwrap.dedent(
        f"""
        import anndata as ad
        import myvae as mv
        from myvae.model._allocator import reuse_freed_memory

        with reuse_freed_memory() as applied:
            during = mapped(16)
        adata = ad.read_h5ad({str(SMALL_DATA)!r})
        mv.tl.myvae(adata, max_epochs=2, batch_size=32, progress=False, accelerator="cpu")
        # blocks above glibc's 32 MiB bound are always mapped; below it, the raised threshold serves them from the heap
        print(applied, during, mapped(31), mapped(40))
        """
    )
    applied, during, after, above_bound = _run(script)[-4:]
    assert (applied, during, after, above_bound) == ("True", "False", "False", "True")
