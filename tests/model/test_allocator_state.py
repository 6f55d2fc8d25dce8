"""Training leaves glibc's allocator as it found it, unless the user opted into the tuning.

Each check runs in a fresh process, whose allocator state no other test has touched. What it observes is glibc's
dynamic ``mmap`` threshold: a block of 31 MiB is served by its own ``mmap`` (``mallinfo2().hblks`` counts it) at
most once, since freeing it raises the threshold above that size and the next one comes from the heap. Any
``mallopt`` of the thresholds switches that adjustment off for good, and every such block is mapped again.
"""

import os
import platform
import subprocess
import sys
import textwrap

import pytest
from helpers import SMALL_DATA

from myvae.model._allocator import OPT_IN_VARIABLE

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


    def mapped(size=31 * 2**20):
        # whether glibc serves a block of this size with its own mmap
        before = libc.mallinfo2().hblks
        block = libc.malloc(size)
        after = libc.mallinfo2().hblks
        libc.free(block)
        return after > before
    """
)

_TRAIN = textwrap.dedent(
    """
    import anndata as ad
    import myvae as mv
    from myvae.model._allocator import reuse_freed_memory

    with reuse_freed_memory() as applied:
        during = mapped()
    adata = ad.read_h5ad({path!r})
    mv.tl.myvae(adata, max_epochs=2, batch_size=32, progress=False, accelerator="cpu")
    print(applied, during, mapped(), mapped())
    """
)


def _run(small_adata_path: str, opt_in: bool) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != OPT_IN_VARIABLE}
    if opt_in:
        env[OPT_IN_VARIABLE] = "1"
    script = _PROBE + _TRAIN.format(path=small_adata_path)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return result.stdout.split()[-4:]


@pytest.fixture
def small_adata_path() -> str:
    return str(SMALL_DATA)


def test_training_leaves_glibc_dynamic_threshold_on(small_adata_path):
    applied, _, _, second = _run(small_adata_path, opt_in=False)
    assert applied == "False"
    # glibc still adjusts its threshold: of two large blocks one after the other, the second comes from the heap
    assert second == "False"


def test_opting_in_raises_the_thresholds_while_training_and_leaves_them_fixed(small_adata_path):
    applied, during, first, second = _run(small_adata_path, opt_in=True)
    assert applied == "True" and during == "False"
    # the documented price of opting in: glibc's initial thresholds, no longer adjusted
    assert (first, second) == ("True", "True")
