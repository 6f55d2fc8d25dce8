"""Counts on disk through the public calls: backed h5ad and lazily read zarr/dask counts are checked, trained on
and embedded without loading the matrix, give the in-memory embedding for the same seed, and are refused with the
fix where a call would need them in memory."""

import hashlib

import anndata as ad
import numpy as np
import pytest
from helpers import fast_train_kwargs

import myvae as mv


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def on_disk(small_adata, tmp_path):
    """The small data written to h5ad and opened backed, with its path."""
    path = tmp_path / "small.h5ad"
    small_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    yield backed, path
    backed.file.close()


def lazily_read(small_adata, tmp_path):
    """The small data with X a dask array over a zarr store (obs and var in memory)."""
    pytest.importorskip("dask")
    import zarr
    from anndata.experimental import read_elem_lazy

    small_adata.write_zarr(tmp_path / "small.zarr")
    lazy_x = read_elem_lazy(zarr.open(tmp_path / "small.zarr", mode="r")["X"])
    return ad.AnnData(X=lazy_x, obs=small_adata.obs.copy(), var=small_adata.var.copy())


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_backed_h5ad_trains_from_disk_to_the_in_memory_embedding(small_adata, on_disk, backend):
    backed, path = on_disk
    before = file_digest(path)
    mv.pp.setup_counts(backed)
    mv.tl.myvae(backed, backend=backend, **fast_train_kwargs())
    assert backed.isbacked and backed.obsm["X_myvae"].shape == (80, 10)

    mv.pp.setup_counts(small_adata)
    mv.tl.myvae(small_adata, backend=backend, **fast_train_kwargs())
    np.testing.assert_allclose(backed.obsm["X_myvae"], small_adata.obsm["X_myvae"], atol=1e-5)
    np.testing.assert_allclose(
        backed.uns["myvae"]["history"]["elbo_validation"], small_adata.uns["myvae"]["history"]["elbo_validation"]
    )
    assert file_digest(path) == before  # results are written in memory, the file is left as it was


def test_lazily_read_zarr_counts_train_to_the_in_memory_embedding(small_adata, tmp_path):
    lazy = lazily_read(small_adata, tmp_path)
    mv.pp.setup_counts(lazy)
    mv.tl.myvae(lazy, **fast_train_kwargs())
    assert type(lazy.X).__module__.startswith("dask")  # never loaded
    mv.tl.myvae(small_adata, **fast_train_kwargs())
    np.testing.assert_allclose(lazy.obsm["X_myvae"], small_adata.obsm["X_myvae"], atol=1e-5)


def test_backed_data_with_batches(small_adata, on_disk):
    backed, _ = on_disk
    backed.obs["sample"] = np.where(np.arange(80) % 2, "a", "b")
    small_adata.obs["sample"] = backed.obs["sample"].to_numpy()
    mv.pp.setup_counts(backed, batch_key="sample")
    mv.pp.setup_counts(small_adata, batch_key="sample")
    model = mv.tl.myvae(backed, return_model=True, **fast_train_kwargs())
    mv.tl.myvae(small_adata, **fast_train_kwargs())
    assert model.n_batch == 2
    np.testing.assert_allclose(backed.obsm["X_myvae"], small_adata.obsm["X_myvae"], atol=1e-5)


def test_backed_data_with_the_tools_batch_key_and_mask_var(small_adata, on_disk):
    backed, path = on_disk
    before = file_digest(path)
    hvg = np.arange(small_adata.n_vars) % 3 == 0
    for data in (backed, small_adata):
        data.obs["sample"] = np.where(np.arange(80) % 2, "a", "b")
        data.var["highly_variable"] = hvg
    model = mv.tl.myvae(backed, batch_key="sample", return_model=True, **fast_train_kwargs())
    mv.tl.myvae(small_adata, batch_key="sample", **fast_train_kwargs())
    assert model.n_batch == 2 and model.adata.n_vars == hvg.sum()
    assert type(model.adata.X).__module__.startswith("dask")  # the selected genes are read from disk in chunks
    np.testing.assert_allclose(backed.obsm["X_myvae"], small_adata.obsm["X_myvae"], atol=1e-5)
    assert backed.uns["myvae"]["params"]["mask_var"] == "highly_variable"

    query = ad.read_h5ad(path, backed="r")
    query.obs["sample"] = np.where(np.arange(80) % 2, "a", "new")
    query.var["highly_variable"] = hvg
    mv.tl.myvae(query, model=model)
    np.testing.assert_allclose(query.obsm["X_myvae"], backed.obsm["X_myvae"], atol=1e-5)
    assert query.uns["myvae"]["params"]["n_cells_unseen_batches"] == 40
    query.file.close()
    assert file_digest(path) == before


def test_a_model_trained_on_disk_answers_for_increasing_indices_and_says_so_otherwise(on_disk):
    backed, _ = on_disk
    model = mv.tl.myvae(backed, return_model=True, **fast_train_kwargs())
    latent = model.get_latent_representation(indices=[3, 10, 50])
    np.testing.assert_allclose(latent, backed.obsm["X_myvae"][[3, 10, 50]], atol=1e-6)
    with pytest.raises(mv.InputError, match="increasing order without repeats"):
        model.get_latent_representation(indices=[50, 3])


def test_counts_on_disk_are_checked_in_chunks_with_the_in_memory_messages(small_adata, tmp_path, unchanged):
    small_adata.X = np.log1p(small_adata.X.toarray())
    small_adata.write_h5ad(tmp_path / "lognormalised.h5ad")
    backed = ad.read_h5ad(tmp_path / "lognormalised.h5ad", backed="r")
    uns_before = dict(backed.uns)
    for function in (mv.pp.setup_counts, mv.tl.myvae):
        with pytest.raises(mv.InputError, match="non-integer values"):
            function(backed)
    assert dict(backed.uns) == uns_before and not backed.obsm
    backed.file.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda data: mv.pp.setup_counts(data, copy=True), r"setup_counts\(copy=True\) cannot copy.*to_memory"),
        (lambda data: mv.tl.myvae(data, copy=True), r"myvae\(copy=True\) cannot copy.*leave copy=False"),
        (lambda data: mv.tl.myvae(data, layer_added="denoised"), "dense cells × genes matrix in memory"),
    ],
)
def test_calls_that_need_the_counts_in_memory_are_refused_with_the_fix(on_disk, call, message):
    backed, path = on_disk
    before = file_digest(path)
    with pytest.raises(mv.InputError, match=message):
        call(backed)
    assert "myvae_setup" not in backed.uns and not backed.obsm and not backed.layers
    assert file_digest(path) == before
