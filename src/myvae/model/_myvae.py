"""The model class: the advanced interface behind :func:`myvae.tl.myvae`."""

from __future__ import annotations

import logging
from typing import Literal

import pyro
from anndata import AnnData
from pyro.infer import TraceMeanField_ELBO
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField
from scvi.model.base import BaseModelClass, PyroSviTrainMixin, UnsupervisedTrainingMixin, VAEMixin
from scvi.train import TrainingPlan

from myvae.module import PyroVAEModule, TorchVAEModule

from ._pyro_training_plan import ValidatedPyroTrainingPlan
from ._quiet import quiet_lightning

__all__ = ["BACKENDS", "MyVAE", "check_backend", "default_max_epochs"]

logger = logging.getLogger(__name__)

Backend = Literal["torch", "pyro"]
BACKENDS: dict[str, type] = {"torch": TorchVAEModule, "pyro": PyroVAEModule}
"""The inference backends and the module each one trains."""


def check_backend(backend: str) -> None:
    """Raise a :class:`ValueError` listing the choices if ``backend`` is not one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        choices = ", ".join(repr(name) for name in BACKENDS)
        raise ValueError(f"Unknown backend {backend!r}; choose one of {choices}.")


def default_max_epochs(n_obs: int) -> int:
    """A number of epochs that gives about 8 million cell passes, between 20 and 400 epochs.

    Small data sets need many passes for the networks to converge; large ones converge within few epochs.
    """
    return min(400, max(20, round(8_000_000 / max(n_obs, 1))))


class MyVAE(VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """The simple scVI model, trained with the PyTorch or the Pyro backend.

    This is the advanced interface; :func:`myvae.tl.myvae` wraps it in one call. Both backends share the networks
    and the likelihood (:class:`~myvae.module.VAENetworks`) and optimise the same ELBO: the PyTorch backend
    trains :class:`~myvae.module.TorchVAEModule` with scvi-tools' :class:`~scvi.train.TrainingPlan`, the Pyro
    backend trains :class:`~myvae.module.PyroVAEModule` with Pyro's SVI and its mean-field ELBO.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of the hidden layer of every network.
    backend
        ``"torch"`` or ``"pyro"``.

    Examples
    --------
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()[:300, :500].copy()
    >>> mv.model.MyVAE.setup_anndata(adata)
    >>> model = mv.model.MyVAE(adata, backend="pyro")
    >>> model.train(max_epochs=2, progress=False)
    >>> model.get_latent_representation().shape
    (300, 10)
    """

    _module_cls = TorchVAEModule

    def __init__(
        self, adata: AnnData | None = None, n_latent: int = 10, n_hidden: int = 128, backend: Backend = "torch"
    ):
        check_backend(backend)
        super().__init__(adata)
        self.backend = backend
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.module = BACKENDS[backend](self.summary_stats.n_vars, n_latent=n_latent, n_hidden=n_hidden)
        self._model_summary_string = (
            f"MyVAE ({backend} backend) with n_latent={n_latent}, n_hidden={n_hidden}, "
            f"{self.summary_stats.n_vars} genes"
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def _training_plan_cls(self) -> type:
        return ValidatedPyroTrainingPlan if self.backend == "pyro" else TrainingPlan

    @classmethod
    def setup_anndata(cls, adata: AnnData, layer: str | None = None, **kwargs) -> None:
        """Register an AnnData whose ``X`` (or ``layers[layer]``) holds raw counts.

        Parameters
        ----------
        adata
            Cells × genes counts.
        layer
            Layer holding the counts; ``None`` uses ``X``.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True)]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float = 1e-3,
        batch_size: int = 128,
        train_size: float = 0.9,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = True,
        early_stopping_patience: int = 20,
        progress: bool = True,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with the model's backend, keeping ``train_size`` of the cells and scoring the rest every epoch.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None`` picks :func:`default_max_epochs` of the number of cells.
        lr
            Adam's learning rate.
        batch_size
            Cells per minibatch.
        train_size
            Fraction of the cells to train on; the others give the held-out ELBO (``elbo_validation``).
        accelerator
            Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``, …).
        devices
            Lightning devices.
        early_stopping
            Stop once the held-out ELBO has not improved for ``early_stopping_patience`` epochs (scvi-tools' early
            stopping on ``elbo_validation``): past that point the model only overfits the training cells.
        early_stopping_patience
            Epochs without improvement of the held-out ELBO before training stops.
        progress
            Show a progress bar.
        plan_kwargs
            Passed to the training plan (:class:`~scvi.train.TrainingPlan` for the PyTorch backend,
            :class:`~scvi.train.PyroTrainingPlan` for the Pyro backend).
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (Lightning).
        """
        if max_epochs is None:
            max_epochs = default_max_epochs(self.adata.n_obs)
        plan_kwargs = {"n_epochs_kl_warmup": None, **(plan_kwargs or {})}
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        common = {
            "max_epochs": max_epochs,
            "accelerator": accelerator,
            "train_size": train_size,
            "batch_size": batch_size,
            "early_stopping": early_stopping,
            "early_stopping_patience": early_stopping_patience,
            "enable_progress_bar": progress,
            **trainer_kwargs,
        }
        with quiet_lightning():
            if self.backend == "pyro":
                pyro.clear_param_store()
                plan_kwargs.setdefault("loss_fn", TraceMeanField_ELBO())
                PyroSviTrainMixin.train(self, lr=lr, device=devices, plan_kwargs=plan_kwargs, **common)
            else:
                plan_kwargs.setdefault("lr", lr)
                UnsupervisedTrainingMixin.train(self, devices=devices, plan_kwargs=plan_kwargs, **common)
