"""The private scvi-tools hooks myvae overrides or calls, pinned: a change in scvi-tools fails here, by name.

myvae subclasses scvi-tools' model, training plans and train runner and relies on a few of their private parts:
``BaseModelClass._make_data_loader`` (streams counts from disk), ``TrainingPlan._optimizer_creator_fn`` (fused
Adam), ``scvi.model._utils.parse_device_args`` (``MyVAE.load``), ``TrainRunner`` taking a Lightning data module as
its data splitter, ``PyroTrainingPlan``'s ``optim``/``loss_fn`` and ``PyroBaseModuleClass._get_fn_args_from_batch``
(the Pyro validation step), and the name of scvi-tools' model logger (silenced while training).
"""

import importlib
import inspect
import logging

import numpy as np
import pytest
import scvi
import torch
from pyro.infer import TraceMeanField_ELBO
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass
from scvi.train import PyroTrainingPlan, TrainingPlan, TrainRunner

import myvae as mv
from myvae.model._datamodule import CountsDataModule
from myvae.model._quiet import _CHATTY_LOGGERS


def _parameters(function) -> list[tuple[str, inspect._ParameterKind]]:
    return [(name, parameter.kind) for name, parameter in inspect.signature(function).parameters.items()]


@pytest.fixture
def model(small_adata) -> mv.MyVAE:
    mv.MyVAE.setup_anndata(small_adata)
    return mv.MyVAE(small_adata)


def test_make_data_loader_takes_the_arguments_myvae_passes_on_positionally():
    # MyVAE._make_data_loader hands these on to scvi-tools' in this order
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert _parameters(BaseModelClass._make_data_loader) == [
        ("self", positional),
        ("adata", positional),
        ("indices", positional),
        ("batch_size", positional),
        ("shuffle", positional),
        ("data_loader_class", positional),
        ("data_loader_kwargs", inspect.Parameter.VAR_KEYWORD),
    ]


def test_scvi_latent_representation_reads_its_minibatches_through_make_data_loader(model, monkeypatch):
    # the embedding of counts on disk depends on scvi-tools' get_latent_representation calling the hook
    calls = []
    original = model._make_data_loader

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "_make_data_loader", spy)
    model.is_trained_ = True  # untrained weights embed as well; only the data path matters here
    latent = model.get_latent_representation(indices=[0, 3, 5], batch_size=2)
    assert latent.shape == (3, 10)
    assert len(calls) == 1
    assert list(calls[0]["indices"]) == [0, 3, 5] and calls[0]["batch_size"] == 2


def test_optimizer_creator_fn_is_how_scvi_builds_adam(small_adata):
    assert _parameters(TrainingPlan._optimizer_creator_fn) == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("optimizer_cls", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    module = mv.module.TorchVAEModule(small_adata.n_vars)
    plan = mv.model.LeanTrainingPlan(module, lr=3e-3, eps=0.01, weight_decay=1e-6)
    configured = plan.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["fused"] is True
    assert (optimizer.defaults["lr"], optimizer.defaults["eps"], optimizer.defaults["weight_decay"]) == (
        3e-3,
        0.01,
        1e-6,
    )


def test_parse_device_args_gives_a_torch_device_last():
    parsed = parse_device_args(accelerator="cpu", devices="auto", return_device="torch")
    assert len(parsed) == 3
    assert parsed[-1] == torch.device("cpu")


def test_train_runner_takes_a_lightning_data_module_as_data_splitter(model, small_adata):
    datamodule = CountsDataModule(small_adata.X, train_size=0.75, batch_size=32, seed=0)
    plan = mv.model.LeanTrainingPlan(model.module, n_epochs_kl_warmup=None)
    runner = TrainRunner(
        model,
        training_plan=plan,
        data_splitter=datamodule,
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        check_val_every_n_epoch=1,
    )
    runner()
    assert plan.n_obs_training == datamodule.n_train == 60
    assert plan.n_obs_validation == datamodule.n_val == 20
    np.testing.assert_array_equal(model.train_indices_, datamodule.train_idx)
    np.testing.assert_array_equal(model.validation_indices_, datamodule.val_idx)
    assert model.is_trained_
    assert len(model.history_["elbo_validation"]) == 2


def test_pyro_plan_keeps_optimiser_arguments_and_loss_and_module_splits_a_batch(small_adata):
    module = mv.module.PyroVAEModule(small_adata.n_vars)
    loss = TraceMeanField_ELBO()
    plan = mv.model.ValidatedPyroTrainingPlan(module, loss_fn=loss, optim_kwargs={"lr": 0.02, "eps": 0.01})
    assert isinstance(plan, PyroTrainingPlan)
    assert plan.loss_fn is loss
    assert plan._learning_rate == 0.02
    counts = torch.as_tensor(small_adata.X[:4].toarray())
    args, kwargs = module._get_fn_args_from_batch({scvi.REGISTRY_KEYS.X_KEY: counts})
    torch.testing.assert_close(args[0], counts)
    assert loss.loss(module.model, module.guide, *args, **kwargs) > 0


def test_silenced_logger_is_scvi_tools_model_logger():
    (name,) = [name for name in _CHATTY_LOGGERS if name.startswith("scvi.")]
    base_model = importlib.import_module(name)
    assert base_model.logger is logging.getLogger(name)
