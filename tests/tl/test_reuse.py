import anndata as ad
import numpy as np
import pytest
from helpers import SMALL_DATA, fast_train_kwargs

import myvae as mv


@pytest.fixture(params=["torch", "pyro"])
def trained(request, small_adata) -> mv.MyVAE:
    return mv.tl.myvae(small_adata, backend=request.param, return_model=True, **fast_train_kwargs(max_epochs=4))


def test_embedding_new_cells_matches_the_models_latent_space(trained, small_adata, tmp_path):
    held_out = small_adata[60:].copy()
    expected = trained.get_latent_representation(indices=np.arange(60, 80))

    mv.tl.myvae(held_out, model=trained)
    np.testing.assert_allclose(held_out.obsm["X_myvae"], expected, rtol=1e-5, atol=1e-6)
    params = held_out.uns["myvae"]["params"]
    assert params["pretrained"] is True and params["model"] == "MyVAE object"
    assert params["backend"] == trained.backend
    assert len(held_out.uns["myvae"]["history"]["elbo_validation"]) == 4

    trained.save(tmp_path / "model", save_anndata=False)
    from_disk = small_adata[60:].copy()
    mv.tl.myvae(from_disk, model=tmp_path / "model", layer_added="denoised")
    np.testing.assert_allclose(from_disk.obsm["X_myvae"], expected, rtol=1e-5, atol=1e-6)
    assert from_disk.uns["myvae"]["params"]["model"] == str(tmp_path / "model")
    assert from_disk.uns["myvae"]["params"]["backend"] == trained.backend
    np.testing.assert_allclose(from_disk.layers["denoised"].sum(axis=1), 1e4, rtol=1e-4)


def test_genes_must_match_by_name_and_order(trained, small_adata, unchanged):
    fewer = small_adata[:, 10:].copy()
    with (
        unchanged(fewer),
        pytest.raises(mv.InputError, match=r"differ from the model's: missing 10 \('.*', …\)\. Subset"),
    ):
        mv.tl.myvae(fewer, model=trained)
    shuffled = small_adata[:, ::-1].copy()
    with unchanged(shuffled), pytest.raises(mv.InputError, match="model's genes in another order"):
        mv.tl.myvae(shuffled, model=trained)


def test_reuse_refuses_what_it_cannot_use(small_adata, tmp_path):
    mv.MyVAE.setup_anndata(small_adata)
    untrained = mv.MyVAE(small_adata)
    with pytest.raises(mv.InputError, match="untrained MyVAE"):
        mv.tl.myvae(small_adata, model=untrained)
    with pytest.raises(mv.InputError, match="folder written by `model.save"):
        mv.tl.myvae(small_adata, model=tmp_path / "nothing-here")
    with pytest.raises(mv.InputError, match=r"Training arguments \(early_stopping\) do nothing"):
        mv.tl.myvae(small_adata, model=tmp_path, early_stopping=False)


def test_reuse_refuses_model_arguments_it_would_ignore(small_adata):
    trained = mv.tl.myvae(small_adata.copy(), n_latent=4, return_model=True, **fast_train_kwargs(max_epochs=2))
    new_cells = small_adata.copy()
    before = (dict(new_cells.obsm), dict(new_cells.uns))
    with pytest.raises(mv.InputError, match=r"Training arguments \(n_latent, lr\) do nothing when model="):
        mv.tl.myvae(new_cells, model=trained, n_latent=5, lr=1e-3)
    with pytest.raises(mv.InputError, match=r"Training arguments \(backend\) do nothing"):
        mv.tl.myvae(new_cells, model=trained, backend="pyro")
    assert (dict(new_cells.obsm), dict(new_cells.uns)) == before
    # the defaults are not arguments given: the model's own settings apply
    mv.tl.myvae(new_cells, model=trained, n_latent=10)
    assert new_cells.obsm["X_myvae"].shape == (new_cells.n_obs, 4)


@pytest.fixture(scope="module")
def batched_model() -> tuple[mv.MyVAE, ad.AnnData]:
    """A model trained with batch_key='sample' (donor_a, donor_b) on 60 cells, and the AnnData that carries it."""
    reference = ad.read_h5ad(SMALL_DATA)[:60].copy()
    reference.obs["sample"] = np.where(np.arange(60) % 2, "donor_b", "donor_a")
    model = mv.tl.myvae(reference, batch_key="sample", return_model=True, **fast_train_kwargs(max_epochs=3))
    return model, reference


@pytest.fixture
def query(small_adata):
    """20 new cells: half of the model's batch donor_a, half of a batch it never saw."""
    cells = small_adata[60:].copy()
    cells.obs["sample"] = np.where(np.arange(20) < 10, "donor_a", "donor_new")
    return cells


def _sources(batched_model, tmp_path):
    model, carrier = batched_model
    folder = tmp_path / "model"
    model.save(folder, save_anndata=False)
    return {"object": model, "folder": folder, "carrier": carrier}


@pytest.mark.parametrize("source", ["object", "folder", "carrier"])
def test_query_cells_of_seen_and_unseen_batches_are_embedded(batched_model, query, tmp_path, source):
    model = _sources(batched_model, tmp_path)[source]
    mv.tl.myvae(query, model=model)
    # the encoder does not read the batch: an unseen batch's cells land where they would as any batch's cells
    relabelled = query.copy()
    relabelled.obs["sample"] = "donor_b"
    mv.tl.myvae(relabelled, model=model)
    np.testing.assert_array_equal(query.obsm["X_myvae"], relabelled.obsm["X_myvae"])
    params = query.uns["myvae"]["params"]
    assert params["batch_key"] == "sample" and list(params["batches"]) == ["donor_a", "donor_b"]
    assert list(params["unseen_batches"]) == ["donor_new"] and params["n_cells_unseen_batches"] == 10
    assert relabelled.uns["myvae"]["params"]["n_cells_unseen_batches"] == 0


def test_query_batches_may_sit_in_another_column(batched_model, query, unchanged):
    model, _ = batched_model
    query.obs = query.obs.rename(columns={"sample": "donor"})
    with unchanged(query), pytest.raises(mv.InputError, match=r"trained with batches from obs\['sample'\].*batch_key="):
        mv.tl.myvae(query, model=model)
    mv.tl.myvae(query, model=model, batch_key="donor")
    assert query.uns["myvae"]["params"]["batch_key"] == "donor"


def test_transform_batch_is_checked_against_the_models_batches(batched_model, query, unchanged):
    model, _ = batched_model
    # donor_b is the model's, although no query cell comes from it
    mv.tl.myvae(query, model=model, layer_added="as_b", transform_batch="donor_b")
    np.testing.assert_allclose(query.layers["as_b"].sum(axis=1), 1e4, rtol=1e-4)
    with unchanged(query), pytest.raises(mv.InputError, match=r"'donor_new' is not a batch of the model"):
        mv.tl.myvae(query, model=model, layer_added="x", transform_batch="donor_new")


def test_layer_added_for_unseen_batches_needs_transform_batch(batched_model, query, unchanged):
    model, _ = batched_model
    with unchanged(query), pytest.raises(mv.InputError, match=r"10 cells come from batches the model never saw"):
        mv.tl.myvae(query, model=model, layer_added="denoised")
    mv.tl.myvae(query, model=model, layer_added="denoised", transform_batch="donor_a")
    assert np.isfinite(query.layers["denoised"]).all()


def test_a_list_of_transform_batches_averages_over_them(batched_model, query, tmp_path):
    import torch

    model, _ = batched_model
    cells = query[:10].copy()  # donor_a only
    torch.manual_seed(0)
    averaged = model.get_normalized_expression(cells, transform_batch=["donor_a", "donor_b"], return_numpy=True)
    torch.manual_seed(0)
    as_a = model.get_normalized_expression(cells, transform_batch="donor_a", return_numpy=True)
    as_b = model.get_normalized_expression(cells, transform_batch="donor_b", return_numpy=True)
    np.testing.assert_allclose(averaged, (as_a + as_b) / 2, rtol=1e-5)
    assert not np.allclose(as_a, as_b, rtol=1e-3)

    mv.tl.myvae(query, model=model, layer_added="mixed", transform_batch=["donor_a", "donor_b"])
    np.testing.assert_allclose(query.layers["mixed"].sum(axis=1), 1e4, rtol=1e-4)
    query.write_h5ad(tmp_path / "query.h5ad")


def test_a_model_without_batches_takes_no_batch_key(trained, small_adata, unchanged):
    cells = small_adata[60:].copy()
    cells.obs["sample"] = "x"
    with unchanged(cells), pytest.raises(mv.InputError, match="trained without batches"):
        mv.tl.myvae(cells, model=trained, batch_key="sample")


def test_reuse_respects_mask_var(small_adata, unchanged):
    small_adata.var["highly_variable"] = np.arange(small_adata.n_vars) < 100
    model = mv.tl.myvae(small_adata[:60].copy(), return_model=True, **fast_train_kwargs(max_epochs=2))
    assert model.adata.n_vars == 100
    query = small_adata[60:].copy()
    mv.tl.myvae(query, model=model, layer_added="denoised")
    assert query.uns["myvae"]["params"]["mask_var"] == "highly_variable"
    assert np.isnan(query.layers["denoised"][:, 100:]).all()
    del query.var["highly_variable"]
    with unchanged(query), pytest.raises(mv.InputError, match=r"differ from the model's: extra 130 \("):
        mv.tl.myvae(query, model=model)
    mv.tl.myvae(query, model=model, mask_var=np.arange(query.n_vars) < 100, key_added="masked")
    assert query.obsm["X_masked"].shape == (20, 10)
