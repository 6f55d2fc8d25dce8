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
