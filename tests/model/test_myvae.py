import warnings

import numpy as np
import pytest
from helpers import fast_train_kwargs

import myvae as mv
from myvae.model import default_max_epochs


def test_model_refuses_an_unknown_backend(small_adata):
    mv.MyVAE.setup_anndata(small_adata)
    with pytest.raises(ValueError, match="Unknown backend 'tensorflow'"):
        mv.MyVAE(small_adata, backend="tensorflow")


def test_returned_model_keeps_training_history(small_adata):
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=2))
    assert len(model.history["elbo_validation"]) == 2
    assert model._model_summary_string.startswith("MyVAE (torch backend)")


@pytest.mark.parametrize(("n_obs", "expected"), [(80, 400), (2_700, 400), (20_000, 400), (100_000, 80), (10**7, 20)])
def test_default_max_epochs_shrinks_with_data_size(n_obs, expected):
    assert default_max_epochs(n_obs) == expected


class PoissonVAEModule(mv.module.TorchVAEModule):
    """A variant with a Poisson likelihood, as the 'Inside the model' tutorial writes it."""

    def likelihood(self, z, library, batch_index=None):
        import torch

        return torch.distributions.Poisson(library * self.networks.log_rho(z, batch_index).exp())


def test_a_registered_variant_trains_through_the_same_api(small_adata, monkeypatch):
    monkeypatch.setitem(mv.model.BACKENDS, "poisson-test", None)  # removed again after the test
    mv.model.register_backend("poisson-test", PoissonVAEModule)
    mv.tl.myvae(small_adata, backend="poisson-test", **fast_train_kwargs(max_epochs=3))
    assert small_adata.uns["myvae"]["params"]["backend"] == "poisson-test"
    assert np.isfinite(small_adata.obsm["X_myvae"]).all()
    model = mv.tl.myvae(small_adata, backend="poisson-test", return_model=True, **fast_train_kwargs(max_epochs=2))
    draws = model.posterior_predictive_sample()
    assert np.array_equal(draws, np.round(draws))


def test_register_backend_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="built-in backend 'torch' cannot be replaced"):
        mv.model.register_backend("torch", PoissonVAEModule)
    with pytest.raises(TypeError, match="not an scvi-tools module class"):
        mv.model.register_backend("mine", dict)


def _train_history(adata, backend: str, **train_kwargs) -> np.ndarray:
    import scvi

    scvi.settings.seed = 0
    data = adata.copy()
    mv.MyVAE.setup_anndata(data)
    model = mv.MyVAE(data, n_latent=4, backend=backend)
    model.train(max_epochs=6, batch_size=16, early_stopping=False, progress=False, accelerator="cpu", **train_kwargs)
    return model.history["elbo_validation"].to_numpy(dtype=float).ravel()


def test_both_backends_follow_the_same_training_path(small_adata):
    # same initial weights, minibatches and noise, the same loss and the same optimiser settings: the same path
    torch_path = _train_history(small_adata, "torch")
    np.testing.assert_allclose(_train_history(small_adata, "pyro"), torch_path, rtol=1e-4)
    # Pyro's Adam with torch's default eps=1e-8 instead of scvi-tools' 0.01 leaves that path
    other_eps = {"optim_kwargs": {"lr": mv.model.default_learning_rate(16), "weight_decay": 1e-6}}
    assert not np.allclose(_train_history(small_adata, "pyro", plan_kwargs=other_eps), torch_path, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_train_takes_what_scvi_tools_users_pass(small_adata, capfd, backend):
    mv.MyVAE.setup_anndata(small_adata)
    model = mv.MyVAE(small_adata, backend=backend)
    # enable_progress_bar is scvi-tools' (and Lightning's) name for progress; plan_kwargs' lr serves either backend
    model.train(max_epochs=1, batch_size=32, accelerator="cpu", enable_progress_bar=False, plan_kwargs={"lr": 5e-3})
    assert "Epoch 1/1" not in "".join(capfd.readouterr())
    assert model.training_settings_.plan_kwargs == {"lr": 5e-3}
    with warnings.catch_warnings(record=True) as caught:  # again, on the model left in evaluation mode
        warnings.simplefilter("always")
        model.train(max_epochs=1, batch_size=32, accelerator="cpu", progress=False)
    assert not [w for w in caught if "eval mode" in str(w.message)]
    with pytest.raises(mv.InputError, match="takes no early_stopping_min_delta=: an epoch counts as an improvement"):
        model.train(max_epochs=1, early_stopping_min_delta=1.0)


def test_the_pyro_plan_takes_a_learning_rate_as_scvi_tools_plan_does():
    from myvae.model import ValidatedPyroTrainingPlan

    module = mv.module.PyroVAEModule(20)
    plan = ValidatedPyroTrainingPlan(module, optim_kwargs={"lr": 1e-3, "betas": (0.8, 0.9)}, lr=5e-3)
    assert plan.optim.pt_optim_args == {"lr": 5e-3, "betas": (0.8, 0.9)}


def test_the_model_refuses_scvi_tools_model_options_with_what_it_is(small_adata):
    mv.MyVAE.setup_anndata(small_adata)
    with pytest.raises(mv.InputError, match="MyVAE takes no gene_likelihood=: myvae is the simple scVI model"):
        mv.MyVAE(small_adata, gene_likelihood="nb")
    with pytest.raises(mv.InputError, match="MyVAE takes no n_layers=.*deeper networks"):
        mv.MyVAE(small_adata, n_layers=2)
    with pytest.raises(mv.InputError, match="MyVAE got an unknown keyword argument 'n_latents'; did you mean"):
        mv.MyVAE(small_adata, n_latents=5)
    with pytest.raises(mv.InputError, match="Unknown backend 'numpyro'"):
        mv.MyVAE(small_adata, backend="numpyro")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_size": 1.5}, r"train_size must be a fraction of the cells, a number in \(0, 1\], got 1.5"),
        ({"train_size": 0}, "train_size must be a fraction"),
        ({"train_size": "0.9"}, "train_size must be a fraction"),
        ({"validation_size": 0.0}, "validation_size must be a fraction"),
        ({"train_size": 1.0}, "leaves none of the 80 cells out to score the model, which early stopping needs"),
        ({"train_size": 0.99}, "leaves none of the 80 cells out"),
        ({"train_size": 0.8, "validation_size": 0.1}, "leave 0.1 of the cells for a test set, which myvae does not"),
        ({"max_epochs": 0}, "max_epochs must be a positive integer or None, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"lr": -1.0}, "lr must be a finite number greater than 0, got -1.0"),
        ({"shuffle_set_split": False}, "takes no shuffle_set_split=: the held-out cells are train_size="),
        ({"load_sparse_tensor": True}, "takes no load_sparse_tensor=: minibatches are always read as sparse CSR"),
        ({"datasplitter_kwargs": {}}, "takes no datasplitter_kwargs="),
    ],
)
def test_train_refuses_bad_values_before_any_work(small_adata, kwargs, message):
    mv.MyVAE.setup_anndata(small_adata)
    model = mv.MyVAE(small_adata)
    with pytest.raises(mv.InputError, match=message):
        model.train(**{"max_epochs": 1, "progress": False, **kwargs})
    assert model.history_ is None and not model.is_trained_


def test_train_splits_the_cells_by_validation_size_as_scvi_tools_does(small_adata):
    mv.MyVAE.setup_anndata(small_adata)
    model = mv.MyVAE(small_adata)
    model.train(max_epochs=1, batch_size=32, validation_size=0.25, progress=False, accelerator="cpu")
    assert (len(model.train_indices_), len(model.validation_indices_)) == (60, 20)
    assert model.training_settings_.train_size == 0.75
    model.train(max_epochs=1, batch_size=32, train_size=0.5, validation_size=0.5, progress=False, accelerator="cpu")
    assert len(model.validation_indices_) == 40
    model.train(max_epochs=1, batch_size=32, train_size=1.0, early_stopping=False, progress=False, accelerator="cpu")
    assert len(model.validation_indices_) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"categorical_covariate_keys": ["sample"]},
            "takes no categorical_covariate_keys=: the decoder is conditioned",
        ),
        ({"labels_key": "sample"}, "takes no labels_key=: myvae is unsupervised"),
        ({"size_factor_key": "sample"}, "takes no size_factor_key=: each cell's library size is its observed total"),
        ({"batch_keys": "sample"}, "got an unknown keyword argument 'batch_keys'; did you mean 'batch_key'"),
        ({"batch_key": "no-such-column"}, "batch_key='no-such-column' is not a column of adata.obs"),
        ({"batch_key": "n_counts"}, "batch_key='n_counts' is numeric with 80 distinct values"),
        ({"layer": "counts"}, "Layer 'counts' does not exist"),
    ],
)
def test_setup_anndata_checks_before_it_registers(small_adata, unchanged, kwargs, message):
    small_adata.obs["sample"] = np.where(np.arange(small_adata.n_obs) % 2 == 0, "a", "b")
    small_adata.obs["n_counts"] = np.arange(small_adata.n_obs) * 3
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.MyVAE.setup_anndata(small_adata, **kwargs)


def test_setup_anndata_refuses_values_that_are_not_counts(lognormalised_adata, unchanged):
    with unchanged(lognormalised_adata), pytest.raises(mv.InputError, match="adata.X holds non-integer values"):
        mv.MyVAE.setup_anndata(lognormalised_adata)
    mv.MyVAE.setup_anndata(lognormalised_adata, layer="counts")  # the counts are in the layer
    assert mv.MyVAE(lognormalised_adata).adata_manager.registry["setup_args"]["layer"] == "counts"


def test_setup_anndata_of_a_mudata_says_to_pass_its_modality(small_adata):
    import mudata as md

    with pytest.raises(mv.InputError, match=r"MyVAE.setup_anndata takes an AnnData; for a MuData pass its modality"):
        mv.MyVAE.setup_anndata(md.MuData({"rna": small_adata}))
