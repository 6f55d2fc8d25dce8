"""What the generative model gives each cell, as scvi-tools' RNASeqMixin reports it."""

import numpy as np
import pytest
import torch
from helpers import fast_train_kwargs

import myvae as mv
from myvae import InputError


@pytest.fixture(scope="module")
def batched_models():
    """A model of each backend, trained on the small data with two batches."""
    import anndata as ad
    from conftest import SMALL_DATA

    adata = ad.read_h5ad(SMALL_DATA)
    adata.obs["sample"] = np.where(np.arange(adata.n_obs) % 2 == 0, "a", "b")
    return adata, {
        backend: mv.tl.myvae(
            adata.copy(), batch_key="sample", backend=backend, return_model=True, **fast_train_kwargs()
        )
        for backend in ("torch", "pyro")
    }


def _totals(adata):
    return np.asarray(adata.X.sum(axis=1), dtype=np.float32).ravel()


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_likelihood_parameters_are_the_negative_binomials_mean_and_inverse_dispersion(batched_models, backend):
    adata, models = batched_models
    model = models[backend]
    parameters = model.get_likelihood_parameters()
    assert set(parameters) == {"mean", "dispersions"}
    mean, dispersions = parameters["mean"], parameters["dispersions"]
    assert mean.shape == dispersions.shape == adata.shape and mean.dtype == np.float32
    np.testing.assert_allclose(mean.sum(axis=1), _totals(adata), rtol=1e-4)  # l_n times a softmax
    theta = model.module.networks.log_theta.detach().exp().numpy()
    np.testing.assert_array_equal(dispersions, np.broadcast_to(theta, adata.shape))

    draws = model.get_likelihood_parameters(indices=[0, 3, 5], n_samples=4)
    assert draws["mean"].shape == (4, 3, adata.n_vars)
    assert not np.allclose(draws["mean"][0], draws["mean"][1])  # separate draws of z
    averaged = model.get_likelihood_parameters(indices=[0, 3, 5], n_samples=4, give_mean=True)
    assert averaged["mean"].shape == (3, adata.n_vars)


def test_the_library_size_is_the_observed_total_of_each_cell(batched_models):
    adata, models = batched_models
    model = models["torch"]
    library = model.get_latent_library_size()
    assert library.shape == (adata.n_obs, 1) and library.dtype == np.float32
    np.testing.assert_array_equal(library.ravel(), _totals(adata))
    np.testing.assert_array_equal(
        model.get_latent_library_size(adata[:7].copy(), give_mean=False).ravel(), _totals(adata[:7])
    )


def test_feature_correlations_average_over_the_batches_asked_for(batched_models):
    adata, models = batched_models
    model = models["torch"]
    torch.manual_seed(0)
    both = model.get_feature_correlation_matrix(n_samples=3, transform_batch=["a", "b"], correlation_type="pearson")
    torch.manual_seed(0)
    a = model.get_feature_correlation_matrix(n_samples=3, transform_batch="a", correlation_type="pearson")
    b = model.get_feature_correlation_matrix(n_samples=3, transform_batch="b", correlation_type="pearson")
    np.testing.assert_allclose(both.to_numpy(), (a.to_numpy() + b.to_numpy()) / 2, rtol=1e-10, atol=1e-12)
    assert both.index.equals(adata.var_names) and both.columns.equals(adata.var_names)

    spearman = model.get_feature_correlation_matrix(n_samples=3).to_numpy()
    np.testing.assert_allclose(spearman, spearman.T)
    np.testing.assert_allclose(np.diag(spearman), 1.0)
    assert np.all(np.abs(spearman) <= 1 + 1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"correlation_type": "kendall"}, "correlation_type takes 'spearman' or 'pearson'"),
        ({"transform_batch": "c"}, "transform_batch='c' is not a batch of the model"),
        ({"n_samples": 0}, "n_samples"),
        ({"rna_size_factor": -1}, "rna_size_factor"),
    ],
)
def test_feature_correlations_refuse_bad_arguments(batched_models, kwargs, message):
    with pytest.raises(InputError, match=message):
        batched_models[1]["torch"].get_feature_correlation_matrix(**kwargs)
