import numpy as np
import pytest
from helpers import fast_train_kwargs

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
    with unchanged(fewer), pytest.raises(mv.InputError, match=r"missing 10 \('.*', …\), extra 0"):
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
