import numpy as np
import pandas as pd
import pytest
import scvi
from helpers import fast_train_kwargs

import myvae as mv


@pytest.fixture(params=["torch", "pyro"])
def trained(request, small_adata) -> mv.MyVAE:
    return mv.tl.myvae(small_adata, backend=request.param, return_model=True, **fast_train_kwargs(max_epochs=5))


def test_layer_added_is_normalised_expression(small_adata):
    mv.tl.myvae(small_adata, layer_added="denoised", library_size=5000.0, **fast_train_kwargs(max_epochs=3))
    denoised = small_adata.layers["denoised"]
    assert denoised.shape == small_adata.shape and denoised.dtype == np.float32
    assert (denoised >= 0).all()
    np.testing.assert_allclose(denoised.sum(axis=1), 5000.0, rtol=1e-4)
    outputs = small_adata.uns["myvae"]["params"]["outputs"]
    assert outputs["layers"] == "denoised" and outputs["library_size"] == 5000.0


def test_only_what_was_asked_for_is_written(small_adata):
    layers = list(small_adata.layers)  # anndata >= 0.13 lists X here, as the layer None
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=2))
    assert list(small_adata.layers) == layers
    assert dict(small_adata.uns["myvae"]["params"]["outputs"]) == {"obsm": "X_myvae"}


def test_model_posterior_outputs(trained, small_adata):
    expression = trained.get_normalized_expression(library_size=1e4)
    assert isinstance(expression, pd.DataFrame)
    assert list(expression.index) == list(small_adata.obs_names)
    assert list(expression.columns) == list(small_adata.var_names)
    np.testing.assert_allclose(expression.sum(axis=1), 1e4, rtol=1e-4)
    subset = trained.get_normalized_expression(indices=[0, 5], return_numpy=True)
    assert subset.shape == (2, small_adata.n_vars)

    one = trained.posterior_predictive_sample()
    several = trained.posterior_predictive_sample(indices=range(10), n_samples=3)
    assert one.shape == small_adata.shape and several.shape == (10, small_adata.n_vars, 3)
    for draws in (one, several):
        assert (draws >= 0).all() and np.array_equal(draws, np.round(draws))


def test_elbo_and_reconstruction_error(trained, small_adata):
    scvi.settings.seed = 1
    elbo = trained.get_elbo(small_adata)
    scvi.settings.seed = 1
    reconstruction = trained.get_reconstruction_error(small_adata)["reconstruction_loss"]
    assert np.isfinite(elbo) and elbo < 0
    # same draws: -ELBO = reconstruction loss + KL >= reconstruction loss
    assert -elbo >= reconstruction > 0
    with pytest.raises(mv.InputError, match="genes differ from the model's"):
        trained.get_elbo(small_adata[:, :100].copy())
