import numpy as np
import pytest
import torch
from helpers import assert_finite, fast_train_kwargs

import myvae as mv
from myvae import InputError


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_a_batch_key_conditions_the_decoder_and_is_recorded(two_batch_adata, backend):
    mv.pp.setup_counts(two_batch_adata, batch_key="sample")
    model = mv.tl.myvae(two_batch_adata, backend=backend, return_model=True, **fast_train_kwargs(max_epochs=3))
    assert model.n_batch == 2 and model.batch_categories == ["donor_a", "donor_b"]
    assert model.module.networks.decoder[0].in_features == model.n_latent + 2
    assert two_batch_adata.obsm["X_myvae"].shape == (two_batch_adata.n_obs, 10)
    assert_finite(two_batch_adata.obsm["X_myvae"])
    params = two_batch_adata.uns["myvae"]["params"]
    assert params["batch_key"] == "sample" and list(params["batches"]) == ["donor_a", "donor_b"]
    assert "_scvi_batch" not in two_batch_adata.obs  # scvi-tools' registration happened on a private copy


def test_transform_batch_writes_expression_as_if_from_one_batch(two_batch_adata):
    mv.pp.setup_counts(two_batch_adata, batch_key="sample")
    mv.tl.myvae(two_batch_adata, layer_added="as_a", transform_batch="donor_a", **fast_train_kwargs(max_epochs=3))
    model = mv.tl.myvae(
        two_batch_adata, layer_added="own", key_added="again", return_model=True, **fast_train_kwargs(max_epochs=3)
    )
    assert two_batch_adata.uns["myvae"]["params"]["outputs"]["transform_batch"] == "donor_a"
    np.testing.assert_allclose(two_batch_adata.layers["as_a"].sum(axis=1), 1e4, rtol=1e-4)
    as_b = model.get_normalized_expression(transform_batch="donor_b", return_numpy=True)
    own = model.get_normalized_expression(return_numpy=True)
    in_b = two_batch_adata.obs["sample"].to_numpy() == "donor_b"
    # cells of batch b are decoded as themselves either way (up to the posterior draws); batch a cells are not
    np.testing.assert_allclose(as_b[in_b].mean(axis=0), own[in_b].mean(axis=0), rtol=0.05, atol=1e-2)
    assert not np.allclose(as_b[~in_b], own[~in_b], rtol=0.05)


def test_integer_batch_numbers_are_categories(small_adata):
    small_adata.obs["run"] = np.arange(small_adata.n_obs) % 3
    mv.pp.setup_counts(small_adata, batch_key="run")
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=2))
    assert model.batch_categories == ["0", "1", "2"]
    # a batch of an integer column is named by its number as well as by its label
    mv.tl.myvae(small_adata, model=model, layer_added="as_1", transform_batch=np.int64(1))
    for batch in (1, "1", [1]):
        torch.manual_seed(0)
        as_1 = model.get_normalized_expression(transform_batch=batch, n_samples=1, return_numpy=True)
        torch.manual_seed(0)
        np.testing.assert_array_equal(
            as_1, model.get_normalized_expression(transform_batch="1", n_samples=1, return_numpy=True)
        )
    assert small_adata.layers["as_1"].shape == small_adata.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transform_batch": "donor_a"}, "only shapes layer_added"),
        ({"transform_batch": "donor_z", "layer_added": "x"}, "is not a batch of obs\\['sample'\\]"),
        ({"transform_batch": 1.5, "layer_added": "x"}, "transform_batch takes a batch, e.g."),
        ({"transform_batch": [], "layer_added": "x"}, "transform_batch takes a batch, e.g."),
        ({"transform_batch": {"donor_a"}, "layer_added": "x"}, "transform_batch takes a batch, e.g."),
    ],
)
def test_transform_batch_is_checked_before_training(two_batch_adata, unchanged, kwargs, message):
    mv.pp.setup_counts(two_batch_adata, batch_key="sample")
    with unchanged(two_batch_adata), pytest.raises(InputError, match=message):
        mv.tl.myvae(two_batch_adata, **fast_train_kwargs(), **kwargs)


def test_transform_batch_needs_batches(small_adata, unchanged):
    mv.pp.setup_counts(small_adata)
    with unchanged(small_adata), pytest.raises(InputError, match="needs batches"):
        mv.tl.myvae(small_adata, layer_added="x", transform_batch="a", **fast_train_kwargs())
