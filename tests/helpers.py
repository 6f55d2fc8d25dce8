"""Helpers shared by the tests."""

from pathlib import Path

import numpy as np

TESTS = Path(__file__).parent
DATA = TESTS / "data"
SMALL_DATA = DATA / "pbmc_small_80.h5ad"
"""80 PBMC 3k cells × 230 genes of raw counts."""
SCRIPTS = TESTS / "scripts"
"""Scripts that tests run in their own processes."""


def fast_train_kwargs(**overrides):
    """Arguments that make tl.myvae train in about a second on the small data."""
    return {"max_epochs": 8, "batch_size": 32, "progress": False, "accelerator": "cpu", **overrides}


def assert_finite(array) -> None:
    assert np.isfinite(np.asarray(array)).all()


def fingerprint(adata) -> dict[str, str]:
    """A SHA-256 digest of every part of an AnnData (X, each layer, obs, var, each obsm and uns entry, names).

    Two AnnData objects with the same fingerprint hold byte-identical data in every part.
    """
    import hashlib
    import pickle

    import pandas as pd
    from scipy import sparse

    def digest(value) -> str:
        hasher = hashlib.sha256()
        if sparse.issparse(value):
            for part in (value.data, value.indices, value.indptr, np.asarray(value.shape)):
                hasher.update(np.ascontiguousarray(part).tobytes())
            hasher.update(str((value.format, value.dtype)).encode())
        elif isinstance(value, np.ndarray):
            hasher.update(np.ascontiguousarray(value).tobytes())
            hasher.update(str((value.shape, value.dtype)).encode())
        elif isinstance(value, pd.DataFrame):
            hasher.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
            hasher.update(str((list(value.columns), list(value.dtypes.astype(str)))).encode())
        else:
            hasher.update(pickle.dumps(value))
        return hasher.hexdigest()

    parts = {"X": digest(adata.X), "obs": digest(adata.obs), "var": digest(adata.var)}
    parts.update({f"layers/{key}": digest(value) for key, value in adata.layers.items()})
    parts.update({f"obsm/{key}": digest(value) for key, value in adata.obsm.items()})
    parts.update({f"uns/{key}": digest(value) for key, value in adata.uns.items()})
    return parts
