import platform

import numpy as np

from myvae.model._allocator import OPT_IN_VARIABLE, reuse_freed_memory


def test_glibc_takes_the_training_thresholds_when_opted_in_and_memory_still_works(monkeypatch):
    monkeypatch.setenv(OPT_IN_VARIABLE, "1")
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    with reuse_freed_memory() as applied:
        assert applied == on_glibc
        blocks = [np.ones(2**20) for _ in range(8)]  # 8 MiB blocks: above glibc's default mmap threshold
        assert sum(block.sum() for block in blocks) == 8 * 2**20
        del blocks
    # afterwards allocation behaves as before
    assert np.ones(2**20).sum() == 2**20


def test_without_opting_in_nothing_is_set(monkeypatch):
    monkeypatch.delenv(OPT_IN_VARIABLE, raising=False)
    with reuse_freed_memory() as applied:
        assert applied is False
