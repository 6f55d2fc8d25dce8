import os

import numpy as np
import pandas as pd
import pytest
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
