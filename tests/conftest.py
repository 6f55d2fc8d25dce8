import os
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata.tests.helpers import assert_equal
from helpers import SMALL_DATA

# Scripts that tests run in their own processes (tests/scripts/ddp_train.py): not test modules.
collect_ignore_glob = ["scripts/*"]

# The napari tests run without a screen: Qt draws offscreen.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True, scope="session")
def _mudata_update_as_in_0_4():
    """MuData.update() in the tests keeps modality columns where they are, on mudata 0.3 as on 0.4."""
    from myvae._data import modality_columns_stay

    with modality_columns_stay():
        yield


@pytest.fixture
def small_adata() -> ad.AnnData:
    """80 PBMC 3k cells × 230 genes of raw counts (tests/data/pbmc_small_80.h5ad)."""
    return ad.read_h5ad(SMALL_DATA)


@pytest.fixture
def backed_adata(small_adata, tmp_path) -> ad.AnnData:
    """The same cells written to h5ad and opened with ``backed="r"``."""
    path = tmp_path / "small.h5ad"
    small_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    yield backed
    backed.file.close()


@pytest.fixture
def two_batch_adata(small_adata) -> ad.AnnData:
    """The same cells in two batches, alternating: ``obs["sample"]`` is ``donor_a`` or ``donor_b``."""
    small_adata.obs["sample"] = pd.Categorical(np.where(np.arange(small_adata.n_obs) % 2, "donor_b", "donor_a"))
    return small_adata


@pytest.fixture
def lognormalised_adata(small_adata) -> ad.AnnData:
    """The same cells, with the raw counts in layers['counts'] and log-normalised values in X."""
    import scanpy as sc

    small_adata.layers["counts"] = small_adata.X.copy()
    sc.pp.normalize_total(small_adata, target_sum=1e4)
    sc.pp.log1p(small_adata)
    return small_adata


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (pytest swaps it between a test's phases)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def scanpy_log(capfd):
    """``capfd``, with scanpy's logging (which myvae's messages go through) writing into it.

    scanpy's handler keeps the stream it was given when scanpy was imported; this points it at the captured stderr
    for the test, and puts the stream and ``sc.settings.verbosity`` back afterwards.
    """
    import scanpy as sc

    logfile, verbosity = sc.settings.logfile, sc.settings.verbosity
    sc.settings.logfile = _CurrentStderr()
    yield capfd
    sc.settings.logfile, sc.settings.verbosity = logfile, verbosity


class Unchanged:
    """Context manager asserting that an AnnData is exactly as before, whatever the block raised."""

    def __init__(self, adata: ad.AnnData):
        self.adata = adata
        self.before = adata.copy()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        assert_equal(self.adata, self.before)
        assert set(self.adata.uns) == set(self.before.uns)
        assert set(self.adata.obsm) == set(self.before.obsm)
        return False


@pytest.fixture
def unchanged():
    return Unchanged
