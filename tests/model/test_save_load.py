"""Saving and loading a model: the round trip, the data it needs, and the files and data it refuses."""

import os

import numpy as np
import pandas as pd
import pyro
import pytest
import scvi
import torch
from helpers import fast_train_kwargs

import myvae as mv
from myvae import InputError


class _RunsCodeWhenUnpickled:
    """An object whose unpickling would create a file: what a malicious model file carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def trained(small_adata):
    return mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=2))


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_save_load_round_trip_reproduces_the_latent_space(small_adata, tmp_path, backend):
    mv.MyVAE.setup_anndata(small_adata)
    model = mv.MyVAE(small_adata, n_latent=4, backend=backend)
    model.train(max_epochs=3, batch_size=32, progress=False, accelerator="cpu")
    latent = model.get_latent_representation()
    model.save(tmp_path / "model", save_anndata=False)
    pyro.clear_param_store()  # everything the model needs is in the saved file, nothing in Pyro's global store

    loaded = mv.MyVAE.load(tmp_path / "model", adata=small_adata, accelerator="cpu")
    assert loaded.backend == backend and loaded.is_trained
    np.testing.assert_allclose(loaded.get_latent_representation(), latent, rtol=1e-6, atol=1e-6)


def test_loading_a_file_whose_pickle_runs_code_is_refused_and_runs_nothing(trained, tmp_path):
    folder = tmp_path / "model"
    trained.save(folder)
    marker = tmp_path / "code-ran"
    payload = torch.load(folder / "model.pt", weights_only=True)
    payload["history"] = _RunsCodeWhenUnpickled(marker)
    torch.save(payload, folder / "model.pt")
    with pytest.raises(InputError, match="Refusing to load .*could run as code"):
        mv.MyVAE.load(folder, adata=trained.adata)
    with pytest.raises(InputError, match="Refusing to load"):
        mv.MyVAE.saved_genes(folder)
    assert not marker.exists()


def test_a_model_saved_by_scvi_tools_pickle_is_refused(trained, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    # scvi-tools' own format pickles pandas objects; myvae will not unpickle them
    torch.save({"attr_dict": {"history_": {"elbo": pd.DataFrame({"elbo": [1.0]})}}}, folder / "model.pt")
    with pytest.raises(InputError, match="Refusing to load"):
        mv.MyVAE.load(folder, adata=trained.adata)


def test_a_plain_file_not_written_by_myvae_is_refused(trained, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"weights": torch.zeros(3)}, folder / "model.pt")
    with pytest.raises(InputError, match="was not saved by myvae"):
        mv.MyVAE.load(folder, adata=trained.adata)
    with pytest.raises(InputError, match="No saved model"):
        mv.MyVAE.load(tmp_path / "nowhere", adata=trained.adata)


def test_saving_refuses_an_existing_folder_unless_overwrite(trained, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="already exists; pass overwrite=True"):
        trained.save(folder)
    assert (folder / "notes.txt").read_text() == "keep me" and not (folder / "model.pt").exists()
    trained.save(folder, overwrite=True)
    assert (folder / "model.pt").exists() and not (folder / "notes.txt").exists()


def test_a_model_saved_with_its_data_loads_without_adata(trained, tmp_path):
    trained.save(tmp_path / "model", save_anndata=True)
    loaded = mv.MyVAE.load(tmp_path / "model", accelerator="cpu")
    np.testing.assert_array_equal(loaded.adata.var_names, trained.adata.var_names)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), trained.get_latent_representation(), rtol=1e-6, atol=1e-6
    )
    assert list(loaded.history["elbo_validation"].to_numpy(dtype=float).ravel()) == pytest.approx(
        list(trained.history["elbo_validation"].to_numpy(dtype=float).ravel())
    )
    np.testing.assert_array_equal(loaded.validation_indices, trained.validation_indices)


def test_a_model_saved_without_data_needs_adata(trained, tmp_path):
    trained.save(tmp_path / "model")
    with pytest.raises(InputError, match="saved without its data; pass adata="):
        mv.MyVAE.load(tmp_path / "model")


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_loading_for_different_genes_is_refused(small_adata, tmp_path, unchanged, backend):
    trained = mv.tl.myvae(small_adata, backend=backend, return_model=True, **fast_train_kwargs(max_epochs=4))
    trained.save(tmp_path / "model", save_anndata=False)
    other = small_adata[:, :200].copy()
    with unchanged(other):
        with pytest.raises(mv.InputError, match="genes differ from the model's"):
            mv.MyVAE.load(tmp_path / "model", adata=other)
        with pytest.raises(mv.InputError, match="genes differ from the model's"):
            mv.tl.myvae(other, model=tmp_path / "model")


def test_a_batched_model_saves_loads_and_refuses_unknown_batches(two_batch_adata, tmp_path):
    mv.pp.setup_counts(two_batch_adata, batch_key="sample")
    model = mv.tl.myvae(two_batch_adata, return_model=True, **fast_train_kwargs(max_epochs=2))
    model.save(tmp_path / "model")
    reversed_cells = two_batch_adata[::-1].copy()
    mv.tl.myvae(reversed_cells, model=tmp_path / "model", progress=False)
    np.testing.assert_allclose(
        reversed_cells.obsm["X_myvae"][::-1], two_batch_adata.obsm["X_myvae"], rtol=1e-5, atol=1e-5
    )
    other = two_batch_adata.copy()
    other.obs["sample"] = "donor_c"
    with pytest.raises(InputError, match="batches the model was not trained on \\(donor_c\\)"):
        mv.MyVAE.load(tmp_path / "model", adata=other)


def test_load_attaches_to_the_counts_of_the_given_anndata(lognormalised_adata, tmp_path, unchanged):
    adata = lognormalised_adata  # counts in layers["counts"] (recorded by tl.myvae), log-normalised values in X
    model = mv.tl.myvae(adata, layer="counts", return_model=True, **fast_train_kwargs(max_epochs=3))
    model.save(tmp_path / "model")
    with unchanged(adata):
        loaded = mv.MyVAE.load(tmp_path / "model", adata=adata, accelerator="cpu")
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-6)
    scvi.settings.seed = 7
    expected = model.get_elbo()
    scvi.settings.seed = 7
    assert loaded.get_elbo() == pytest.approx(expected, rel=1e-6)  # the counts, not X's log-normalised values
