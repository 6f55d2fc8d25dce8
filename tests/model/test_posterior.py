import numpy as np
import pandas as pd
import pytest
import scvi
from helpers import fast_train_kwargs

import myvae as mv


@pytest.fixture(params=["torch", "pyro"])
def trained(request, small_adata) -> mv.MyVAE:
    return mv.tl.myvae(small_adata, backend=request.param, return_model=True, **fast_train_kwargs(max_epochs=5))


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


def test_embedding_is_the_posterior_mean_scvi_tools_returns(trained, small_adata):
    # tl.myvae's embedding runs the mean network alone, in large minibatches of sparse counts
    expected = trained.get_latent_representation(give_mean=True, batch_size=7)
    np.testing.assert_allclose(trained._embedding(None, 32), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(small_adata.obsm["X_myvae"], expected, rtol=1e-5, atol=1e-6)
    dense = small_adata.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(trained._embedding(dense, 32), expected, rtol=1e-5, atol=1e-6)
