import numpy as np
import pandas as pd
from helpers import fast_train_kwargs, fingerprint

import myvae as mv


def _rich(adata):
    """The small data with something in every slot a user might have filled."""
    adata.layers["counts"] = adata.X.copy()
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 5)).astype(np.float32)
    adata.obs["score"] = np.linspace(0, 1, adata.n_obs)
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 2 == 0
    adata.uns["note"] = {"analysis": "mine", "values": np.arange(3)}
    adata.obsp["connectivities"] = adata.X[:, : adata.n_obs].T @ adata.X[:, : adata.n_obs]  # any matrix
    return adata


def test_setup_counts_adds_only_its_record(small_adata):
    adata = _rich(small_adata)
    before = fingerprint(adata)
    mv.pp.setup_counts(adata, layer="counts")
    after = fingerprint(adata)
    assert set(after) - set(before) == {"uns/myvae_setup"}
    assert {key: after[key] for key in before} == before


def test_myvae_adds_only_the_documented_keys(small_adata):
    adata = _rich(small_adata)
    mv.pp.setup_counts(adata, layer="counts")
    before = fingerprint(adata)
    obsp_before = adata.obsp["connectivities"].copy()
    mv.tl.myvae(adata, **fast_train_kwargs(max_epochs=2))
    after = fingerprint(adata)
    assert set(after) - set(before) == {"obsm/X_myvae", "uns/myvae"}
    assert {key: after[key] for key in before} == before
    assert (adata.obsp["connectivities"] != obsp_before).nnz == 0
    assert isinstance(adata.obs, pd.DataFrame) and adata.obs_names.equals(small_adata.obs_names)


def test_layer_added_is_the_only_extra_key_when_asked_for(small_adata):
    adata = _rich(small_adata)
    mv.pp.setup_counts(adata, layer="counts")
    before = fingerprint(adata)
    mv.tl.myvae(adata, layer_added="myvae_normalized", **fast_train_kwargs(max_epochs=2))
    after = fingerprint(adata)
    assert set(after) - set(before) == {"obsm/X_myvae", "uns/myvae", "layers/myvae_normalized"}
    assert {key: after[key] for key in before} == before
