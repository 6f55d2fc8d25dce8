import numpy as np

import myvae as mv


def test_pbmc3k_is_bundled_raw_counts_with_cell_types():
    adata = mv.datasets.pbmc3k()
    assert adata.shape == (2700, 32738)
    values = adata.X.data
    assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    counts = adata.obs["cell_type"].value_counts()
    assert counts["Naive CD4 T"] == 697 and counts["Platelet"] == 14
    assert adata.obs["cell_type"].notna().sum() == 2638


def test_pbmc3k_returns_a_new_object_each_call():
    first = mv.datasets.pbmc3k()
    first.obs["x"] = 1
    assert "x" not in mv.datasets.pbmc3k().obs
