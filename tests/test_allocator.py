import platform

import numpy as np

from myvae.model._allocator import reuse_freed_memory


def test_glibc_takes_the_training_thresholds_and_memory_still_works():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    with reuse_freed_memory() as applied:
        assert applied == on_glibc
        blocks = [np.ones(2**20) for _ in range(8)]  # 8 MiB blocks: above glibc's default mmap threshold
        assert sum(block.sum() for block in blocks) == 8 * 2**20
        del blocks
    # afterwards allocation behaves as before
    assert np.ones(2**20).sum() == 2**20
