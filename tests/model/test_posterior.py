import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from helpers import fast_train_kwargs
from mudata import MuData
from scipy import sparse

import myvae as mv
from myvae.module import _base as module_base
from myvae.module import negative_binomial_log_prob
from myvae.module._sparse import as_sparse_csr


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


def _reference_marginal_ll(module, x: torch.Tensor, batch_index, n_draws: int, draws_per_pass: int) -> np.ndarray:
    """Importance-sampled log p(x | l) in double precision, from the elementwise NB formula.

    The draws of z are the module's (single precision, drawn ``draws_per_pass`` at a time); everything else is
    computed again in double precision.
    """
    qz = module.networks.posterior(x)
    draws = torch.cat(
        [qz.sample((min(draws_per_pass, n_draws - first),)) for first in range(0, n_draws, draws_per_pass)]
    )
    networks = module.networks.double()
    try:
        x = x.double()
        qz = networks.posterior(x)
        log_library = x.sum(dim=1, keepdim=True).log()
        log_weights = []
        for draw in draws.double():
            log_mu = log_library + networks.log_rho(draw, batch_index)
            log_px = negative_binomial_log_prob(x, log_mu, networks.log_theta).sum(dim=1)
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(draw).sum(dim=1)
            log_weights.append(log_px + log_pz - qz.log_prob(draw).sum(dim=1))
        return (torch.logsumexp(torch.stack(log_weights), dim=0) - np.log(n_draws)).numpy()
    finally:
        networks.float()


@pytest.mark.parametrize("draws_per_pass", [None, 1, 3])
def test_marginal_ll_is_the_importance_sampled_likelihood(trained, small_adata, monkeypatch, draws_per_pass):
    n_draws, cells = 7, slice(0, 20)
    x = torch.tensor(small_adata.X[cells].toarray())
    if draws_per_pass is not None:  # so many cells × genes per pass that the draws come this many at a time
        monkeypatch.setattr(module_base, "_SCORED_AT_ONCE", draws_per_pass * x.numel())
    module = trained.module
    torch.manual_seed(3)
    with torch.no_grad():
        expected = _reference_marginal_ll(module, x, None, n_draws, draws_per_pass or n_draws)
    torch.manual_seed(3)
    tensors = {scvi.REGISTRY_KEYS.X_KEY: as_sparse_csr(x)}
    estimate = module.marginal_ll(tensors, n_mc_samples=n_draws)
    assert estimate.dtype == torch.float64 and estimate.shape == (20,)
    np.testing.assert_allclose(estimate.numpy(), expected, rtol=1e-5)


def test_marginal_ll_of_a_model_with_batches(two_batch_adata):
    model = mv.tl.myvae(two_batch_adata, batch_key="sample", return_model=True, **fast_train_kwargs(max_epochs=3))
    x = torch.tensor(two_batch_adata.X[:10].toarray())
    batch_index = torch.tensor(model.adata.obs["_scvi_batch"].to_numpy()[:10]).reshape(-1, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        expected = _reference_marginal_ll(model.module, x, batch_index, 5, 5)
    torch.manual_seed(0)
    tensors = {scvi.REGISTRY_KEYS.X_KEY: as_sparse_csr(x), scvi.REGISTRY_KEYS.BATCH_KEY: batch_index}
    np.testing.assert_allclose(model.module.marginal_ll(tensors, n_mc_samples=5).numpy(), expected, rtol=1e-5)


def test_get_marginal_ll_is_per_cell_and_above_the_elbo(trained, small_adata):
    scvi.settings.seed = 2
    per_cell = trained.get_marginal_ll(n_mc_samples=50, return_mean=False, batch_size=32)
    scvi.settings.seed = 2
    mean = trained.get_marginal_ll(n_mc_samples=50, batch_size=32)
    assert isinstance(per_cell, np.ndarray) and per_cell.shape == (small_adata.n_obs,)
    # the mean over cells, not over minibatches (80 cells: 32 + 32 + 16)
    assert mean == pytest.approx(per_cell.mean(), rel=1e-12)
    assert mean > trained.get_elbo()  # 50 importance-weighted draws bound log p(x) more tightly than the ELBO
    with pytest.raises(mv.InputError, match="n_mc_samples must be a positive integer, got 0"):
        trained.get_marginal_ll(n_mc_samples=0)


def test_normalized_expression_at_each_cells_library_and_for_some_genes(trained, small_adata):
    scvi.settings.seed = 4
    proportions = trained.get_normalized_expression(library_size=1.0, n_samples=3)
    scvi.settings.seed = 4
    expected_counts = trained.get_normalized_expression(library_size="latent", n_samples=3)
    library = np.asarray(small_adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(expected_counts.sum(axis=1), library, rtol=1e-4)
    np.testing.assert_allclose(expected_counts, proportions * library[:, None], rtol=1e-5)

    genes = [small_adata.var_names[5], small_adata.var_names[0]]
    scvi.settings.seed = 4
    chosen = trained.get_normalized_expression(library_size=1.0, n_samples=3, gene_list=genes)
    assert list(chosen.columns) == genes
    np.testing.assert_array_equal(chosen.to_numpy(), proportions[genes].to_numpy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gene_list": ["no-such-gene"]}, r"gene_list: 1 of its genes are not among the model's 230 genes \('no-such"),
        ({"gene_list": "CD3E"}, r"gene_list takes a list of gene names, got the string 'CD3E'; pass \['CD3E'\]"),
        ({"library_size": "observed"}, 'library_size \\(a number, or "latent"\\) must be a finite number'),
        ({"n_samples": 0}, "n_samples must be a positive integer, got 0"),
        ({"indices": [0, 80]}, r"indices: 80 is out of range for 80 cells \(positions 0 to 79\)"),
        ({"indices": np.ones(5, dtype=bool)}, r"a boolean mask needs one entry per cell \(80\), got \(5,\)"),
        ({"indices": [0.5]}, "indices takes cell positions"),
    ],
)
def test_normalized_expression_refuses_bad_arguments(trained, kwargs, message):
    with pytest.raises(mv.InputError, match=message):
        trained.get_normalized_expression(**kwargs)


def test_queries_take_indices_as_positions_from_either_end_or_as_a_mask(trained):
    latent = trained.get_latent_representation()
    np.testing.assert_allclose(trained.get_latent_representation(indices=[-1, 0]), latent[[-1, 0]], atol=1e-6)
    mask = np.arange(len(latent)) % 3 == 0
    np.testing.assert_allclose(trained.get_latent_representation(indices=mask), latent[mask], atol=1e-6)
    with pytest.raises(mv.InputError, match="indices: -81 is out of range for 80 cells"):
        trained.get_latent_representation(indices=[-81])


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_differential_abundance_of_a_model_from_anndata(two_batch_adata, unchanged, backend):
    mv.tl.myvae(two_batch_adata, backend=backend, **fast_train_kwargs(max_epochs=3))
    with unchanged(two_batch_adata):
        model = mv.MyVAE.from_anndata(two_batch_adata)  # carries a copy of obs: sample_key needs no adata=
        log_probs = model.differential_abundance(sample_key="sample")
    assert log_probs.shape == (two_batch_adata.n_obs, 2)
    assert set(log_probs.columns) == {"donor_a", "donor_b"} and np.isfinite(log_probs.to_numpy()).all()
    with pytest.raises(mv.InputError, match="needs sample_key=, the adata.obs column"):
        model.differential_abundance()
    with pytest.raises(
        mv.InputError, match=r"sample_key='donor' is not a column of the model's AnnData's obs .*'sample'"
    ):
        model.differential_abundance(sample_key="donor")


def test_gene_list_of_a_model_with_repeated_gene_names(small_adata):
    small_adata.var_names = [small_adata.var_names[1], *small_adata.var_names[1:]]  # genes 0 and 1 share a name
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=2))
    chosen = model.get_normalized_expression(gene_list=[small_adata.var_names[2]], n_samples=1)
    assert chosen.shape == (small_adata.n_obs, 1)
    with pytest.raises(mv.InputError, match="the model has '.*' more than once, so the name does not say which"):
        model.get_normalized_expression(gene_list=[small_adata.var_names[0]])


def test_posterior_predictive_sample_of_some_genes(trained, small_adata):
    genes = [small_adata.var_names[7], small_adata.var_names[2]]
    scvi.settings.seed = 5
    every_gene = trained.posterior_predictive_sample(indices=range(6), n_samples=2)
    scvi.settings.seed = 5
    chosen = trained.posterior_predictive_sample(indices=range(6), n_samples=2, gene_list=genes)
    assert chosen.shape == (6, 2, 2)
    np.testing.assert_array_equal(chosen, every_gene[:, [7, 2]])
    with pytest.raises(mv.InputError, match="n_samples must be a positive integer, got 0"):
        trained.posterior_predictive_sample(n_samples=0)


def test_queries_read_the_counts_of_an_anndata_given_to_them(lognormalised_adata, unchanged):
    adata = lognormalised_adata  # counts in layers["counts"], log-normalised values in X
    model = mv.tl.myvae(adata, layer="counts", return_model=True, **fast_train_kwargs(max_epochs=3))
    scvi.settings.seed = 6
    on_own_data = model.get_elbo()
    with unchanged(adata):  # scvi-tools would write its registration into it, and read X
        scvi.settings.seed = 6
        on_given = model.get_elbo(adata=adata)
        latent = model.get_latent_representation(adata=adata)
        expression = model.get_normalized_expression(adata=adata, indices=[0, 3], n_samples=2)
    assert on_given == pytest.approx(on_own_data, rel=1e-6)
    np.testing.assert_allclose(latent, model.get_latent_representation(), rtol=1e-6)
    assert list(expression.index) == list(adata.obs_names[[0, 3]])

    wider = ad.concat([adata, adata[:, :5]], axis=1, merge="first")  # the model's genes and five more after them
    wider.var_names_make_unique()
    wider.layers["counts"] = sparse.hstack([adata.layers["counts"], adata.layers["counts"][:, :5]]).tocsr()
    mv.pp.setup_counts(wider, layer="counts")  # without tl.myvae's record, the setup record says where counts are
    scvi.settings.seed = 6
    assert model.get_elbo(adata=wider) == pytest.approx(on_own_data, rel=1e-6)

    unrecorded = ad.AnnData(adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    with pytest.raises(mv.InputError, match="To use the model on these cells, record where their raw counts are"):
        model.get_elbo(adata=unrecorded)
    with pytest.raises(
        mv.InputError, match=r"adata= takes an AnnData; for a MuData pass its modality, e.g. mdata\['rna'\]"
    ):
        model.get_elbo(adata=MuData({"rna": adata}))


def test_a_query_of_a_model_with_batches_needs_their_column(two_batch_adata):
    model = mv.tl.myvae(two_batch_adata, batch_key="sample", return_model=True, **fast_train_kwargs(max_epochs=2))
    without = two_batch_adata.copy()
    del without.obs["sample"]
    message = r"trained with batches from obs\['sample'\], and these cells' obs has no such column. Add each cell's"
    with pytest.raises(mv.InputError, match=message):
        model.get_elbo(adata=without)
    with pytest.raises(mv.InputError, match=r"mdata\['rna'\].obs\['sample'\] = mdata.obs\['sample'\].reindex"):
        mv.MyVAE.from_anndata(without)  # e.g. a MuData's modality, the batches a column of mdata.obs


def test_normalized_expression_of_each_draw_averages_to_the_mean(trained, small_adata):
    genes = list(small_adata.var_names[[3, 1]])
    torch.manual_seed(0)
    draws = trained.get_normalized_expression(n_samples=4, return_mean=False, gene_list=genes)
    torch.manual_seed(0)
    mean = trained.get_normalized_expression(n_samples=4, gene_list=genes)
    assert isinstance(draws, np.ndarray) and draws.shape == (4, small_adata.n_obs, 2)
    assert not np.allclose(draws[0], draws[1])
    np.testing.assert_allclose(draws.mean(axis=0), mean.to_numpy(), rtol=1e-5, atol=1e-7)
    at_library = trained.get_normalized_expression(n_samples=3, return_mean=False, library_size="latent")
    totals = np.asarray(small_adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(at_library.sum(axis=-1), np.broadcast_to(totals, (3, len(totals))), rtol=1e-4)
    assert trained.get_normalized_expression(n_samples=1, return_mean=False).shape == small_adata.shape
