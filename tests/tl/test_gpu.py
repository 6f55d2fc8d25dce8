"""The public calls on a CUDA GPU, as a notebook on a GPU machine runs them (``accelerator="auto"``, the default).

Skipped where torch sees no CUDA device (CI); run on a GPU machine with ``pytest tests/tl/test_gpu.py``.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import myvae as mv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EPOCHS = 30
ARGUMENTS = {"max_epochs": EPOCHS, "early_stopping": False, "progress": False, "random_state": 0}


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """PBMC 3k raw counts in layers['counts'], the 1,000 most variable genes marked, two samples alternating."""
    adata = mv.datasets.pbmc3k()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=1000, flavor="seurat_v3", layer="counts")
    adata.obs["sample"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2, "donor_b", "donor_a"))
    return adata


def heldout_elbo(adata: ad.AnnData) -> float:
    return float(np.asarray(adata.uns["myvae"]["history"]["elbo_validation"], dtype=float).ravel()[-1])


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_the_default_accelerator_trains_on_the_gpu_to_the_cpu_result(pbmc, backend):
    on_gpu, on_cpu = pbmc.copy(), pbmc.copy()
    model = mv.tl.myvae(on_gpu, layer="counts", backend=backend, return_model=True, **ARGUMENTS)
    assert next(model.module.parameters()).device.type == "cuda"
    mv.tl.myvae(on_cpu, layer="counts", backend=backend, accelerator="cpu", **ARGUMENTS)

    embedding = on_gpu.obsm["X_myvae"]
    assert embedding.shape == (pbmc.n_obs, 10) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    # the same model and data on another device: other random draws, the same fit
    assert heldout_elbo(on_gpu) == pytest.approx(heldout_elbo(on_cpu), rel=0.01)
    assert np.array_equal(on_gpu.layers["counts"].toarray(), pbmc.layers["counts"].toarray())


def test_batches_denoised_expression_and_differential_expression_on_the_gpu(pbmc):
    adata = pbmc.copy()
    mv.tl.myvae(adata, layer="counts", batch_key="sample", layer_added="denoised", **ARGUMENTS)
    assert np.isfinite(adata.layers["denoised"][:, adata.var["highly_variable"].to_numpy()]).all()
    labelled = adata[adata.obs["cell_type"].notna()].copy()
    mv.tl.rank_genes_groups(labelled, "cell_type", n_samples=500)
    ranked = sc.get.rank_genes_groups_df(labelled, group="B")
    assert {"MS4A1", "CD79A"} & set(ranked["names"][:20])


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_the_queries_of_a_model_on_the_gpu_agree_with_it_restored_on_the_cpu(pbmc, backend):
    adata = pbmc.copy()
    model = mv.tl.myvae(adata, layer="counts", backend=backend, return_model=True, **ARGUMENTS)
    on_cpu = mv.MyVAE.from_anndata(adata, accelerator="cpu")
    assert next(on_cpu.module.parameters()).device.type == "cpu"

    latent = model.get_latent_representation()
    np.testing.assert_allclose(latent, adata.obsm["X_myvae"], atol=1e-4)
    np.testing.assert_allclose(on_cpu.get_latent_representation(), latent, atol=1e-4)
    # sampled queries: other draws on each device, the same quantities
    assert model.get_elbo() == pytest.approx(on_cpu.get_elbo(), rel=0.01)
    reconstruction = model.get_reconstruction_error()["reconstruction_loss"]
    assert reconstruction == pytest.approx(on_cpu.get_reconstruction_error()["reconstruction_loss"], rel=0.01)
    expression = model.get_normalized_expression(n_samples=5, return_numpy=True)
    np.testing.assert_allclose(expression.sum(axis=1), 1e4, rtol=1e-3)
    counts = model.posterior_predictive_sample(n_samples=2)
    assert counts.shape[:2] == (pbmc.n_obs, int(pbmc.var["highly_variable"].sum()))


def test_new_cells_are_embedded_with_a_model_trained_on_the_gpu(pbmc):
    reference, query = pbmc[::2].copy(), pbmc[1::2].copy()
    model = mv.tl.myvae(reference, layer="counts", return_model=True, **ARGUMENTS)
    mv.tl.myvae(query, layer="counts", model=model, progress=False)
    assert query.obsm["X_myvae"].shape == (query.n_obs, 10) and np.isfinite(query.obsm["X_myvae"]).all()


def test_backed_counts_train_on_the_gpu(pbmc, tmp_path):
    path = tmp_path / "pbmc.h5ad"
    ad.AnnData(pbmc.layers["counts"], obs=pbmc.obs[["sample"]], var=pbmc.var[["highly_variable"]]).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        mv.tl.myvae(backed, batch_key="sample", **ARGUMENTS)
        assert np.isfinite(backed.obsm["X_myvae"]).all()
    finally:
        backed.file.close()
