"""The model class: the advanced interface behind :func:`myvae.tl.myvae`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyro
import scvi
import torch
from anndata import AnnData, read_h5ad
from pyro.infer import TraceMeanField_ELBO
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass, VAEMixin
from scvi.module.base import BaseModuleClass, PyroBaseModuleClass
from scvi.train import TrainRunner

from myvae._checks import InputError, check_same_genes
from myvae.module import PyroVAEModule, TorchVAEModule

from ._allocator import reuse_freed_memory
from ._datamodule import CountsDataModule, batch_codes
from ._guards import interrupts_stay_interrupts
from ._pyro_training_plan import ValidatedPyroTrainingPlan
from ._quiet import quiet_training_logs
from ._save_load import adata_path, prepare_directory, read_model_file, write_model_file
from ._streaming import StreamingCountsDataModule, is_out_of_core, streamed_rows
from ._training_plan import LeanTrainingPlan

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZE",
    "MyVAE",
    "check_backend",
    "default_learning_rate",
    "default_max_epochs",
    "register_backend",
]

logger = logging.getLogger(__name__)

Backend = Literal["torch", "pyro"]
DEFAULT_BATCH_SIZE = 512
"""Cells per minibatch unless told otherwise: large enough to keep the matrix products efficient."""
REFERENCE_LEARNING_RATE, REFERENCE_BATCH_SIZE = 1e-3, 128
"""scvi-tools' defaults, from which :func:`default_learning_rate` scales."""
ADAM_SETTINGS = {"eps": 0.01, "weight_decay": 1e-6}
"""The rest of Adam's settings for both backends: scvi-tools' :class:`~scvi.train.TrainingPlan` defaults.

The large ``eps`` damps the steps of parameters whose gradients are small; Pyro's optimiser would otherwise use
torch's ``eps=1e-8`` and train the same model along a different path.
"""
DEFAULT_EARLY_STOPPING_PATIENCE = 45
"""Epochs without a better held-out ELBO before training stops: scvi-tools' default.

The epochs past the best held-out ELBO cost it little (under 0.3% on PBMC 3k and Kang) and mix batches that differ
strongly better than a patience of 20 (Kang's batch-correction score 0.890 against 0.868; ``benchmarks/quality.py``).
"""


def default_learning_rate(batch_size: int) -> float:
    """Adam's learning rate for a batch size: scvi-tools' 1e-3 at 128 cells, scaled linearly with the batch size.

    A larger batch takes fewer, less noisy steps per epoch; scaling the step size with it keeps the held-out ELBO
    reached in a given number of epochs (measured by ``benchmarks/train_throughput.py``).
    """
    return REFERENCE_LEARNING_RATE * batch_size / REFERENCE_BATCH_SIZE


BACKENDS: dict[str, type[TorchVAEModule] | type[PyroVAEModule]] = {"torch": TorchVAEModule, "pyro": PyroVAEModule}
"""The inference backends and the module each one trains (see :func:`register_backend`)."""


def register_backend(name: str, module_cls: type) -> None:
    """Make a module of your own trainable by name: ``mv.tl.myvae(adata, backend=name)``.

    The module is built as ``module_cls(n_genes, n_latent=..., n_hidden=...)``. A subclass of
    :class:`scvi.module.base.PyroBaseModuleClass` (e.g. of :class:`~myvae.module.PyroVAEModule`) is trained with
    Pyro's SVI, any other :class:`scvi.module.base.BaseModuleClass` (e.g. of :class:`~myvae.module.TorchVAEModule`)
    with scvi-tools' training plan. A saved model of such a backend loads once the backend is registered again.

    Parameters
    ----------
    name
        The backend's name; the built-in ``"torch"`` and ``"pyro"`` cannot be replaced.
    module_cls
        The module class.

    Examples
    --------
    >>> import torch
    >>> import myvae as mv
    >>> class PoissonVAEModule(mv.module.TorchVAEModule):
    ...     def likelihood(self, z, library, batch_index=None):
    ...         return torch.distributions.Poisson(library * self.networks.log_rho(z, batch_index).exp())
    >>> mv.model.register_backend("torch-poisson", PoissonVAEModule)
    >>> "torch-poisson" in mv.model.BACKENDS
    True
    """
    if name in ("torch", "pyro"):
        raise ValueError(f"The built-in backend {name!r} cannot be replaced; register your module under another name.")
    if not (isinstance(module_cls, type) and issubclass(module_cls, BaseModuleClass | PyroBaseModuleClass)):
        raise TypeError(
            f"{module_cls!r} is not an scvi-tools module class; subclass myvae.module.TorchVAEModule or "
            "myvae.module.PyroVAEModule (or scvi-tools' BaseModuleClass / PyroBaseModuleClass)."
        )
    BACKENDS[name] = module_cls


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


def _align_batches(adata: AnnData, batch_key: str, categories: list[str]) -> None:
    """Give ``adata.obs[batch_key]`` the saved batches as categories, refusing batches the model never saw."""
    if batch_key not in adata.obs.columns:
        raise InputError(f"The model was trained with batches from obs[{batch_key!r}]; the data have no such column.")
    labels = adata.obs[batch_key].astype(str)
    unknown = sorted(set(labels) - set(categories))
    if unknown:
        raise InputError(
            f"obs[{batch_key!r}] holds batches the model was not trained on ({', '.join(unknown)}); the model "
            f"knows {categories}. Train a model on these batches."
        )
    adata.obs[batch_key] = pd.Categorical(labels, categories=categories)


def _several_processes(devices: int | list[int] | str, strategy: object) -> bool:
    """Whether Lightning will train on more than one device or with a distributed strategy."""
    if isinstance(devices, int) and devices > 1 or isinstance(devices, list | tuple) and len(devices) > 1:
        return True
    if isinstance(devices, str) and devices.strip() not in ("auto", "1"):
        return True
    return isinstance(strategy, str) and "ddp" in strategy or strategy is not None and not isinstance(strategy, str)


def _as_int_list(indices: Sequence[int] | None) -> list[int]:
    return [] if indices is None else [int(i) for i in indices]


class MyVAE(VAEMixin, BaseModelClass):
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
    _train_runner_cls = TrainRunner

    def __init__(
        self, adata: AnnData | None = None, n_latent: int = 10, n_hidden: int = 128, backend: Backend = "torch"
    ):
        check_backend(backend)
        super().__init__(adata)
        self.backend = backend
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        n_batch = self.summary_stats.n_batch
        # modules registered without batch support are built as before; only a batched model passes n_batch
        batch_kwargs = {"n_batch": n_batch} if n_batch > 1 else {}
        self.module = BACKENDS[backend](self.summary_stats.n_vars, n_latent=n_latent, n_hidden=n_hidden, **batch_kwargs)
        self._model_summary_string = (
            f"MyVAE ({backend} backend) with n_latent={n_latent}, n_hidden={n_hidden}, "
            f"{self.summary_stats.n_vars} genes" + (f", {n_batch} batches" if n_batch > 1 else "")
        )
        self.init_params_ = self._get_init_params(locals())

    @property
    def n_batch(self) -> int:
        """Number of batches the decoder is conditioned on (1 when the data were set up without ``batch_key``)."""
        return self.summary_stats.n_batch

    @property
    def batch_categories(self) -> list[str]:
        """The batches, in the order of their codes (one unnamed batch without ``batch_key``)."""
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        return [str(category) for category in mapping]

    @property
    def _uses_pyro(self) -> bool:
        return isinstance(self.module, PyroBaseModuleClass)

    @property
    def _training_plan_cls(self) -> type:
        return ValidatedPyroTrainingPlan if self._uses_pyro else LeanTrainingPlan

    @classmethod
    def setup_anndata(cls, adata: AnnData, layer: str | None = None, batch_key: str | None = None, **kwargs) -> None:
        """Register an AnnData whose ``X`` (or ``layers[layer]``) holds raw counts.

        Parameters
        ----------
        adata
            Cells × genes counts.
        layer
            Layer holding the counts; ``None`` uses ``X``.
        batch_key
            Column of ``obs`` with each cell's batch; the decoder is then conditioned on it. Its categories, in
            order, define the batch codes (scvi-tools adds the codes as ``obs["_scvi_batch"]``).
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        train_size: float = 0.9,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = True,
        early_stopping_patience: int = DEFAULT_EARLY_STOPPING_PATIENCE,
        progress: bool = True,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with the model's backend, keeping ``train_size`` of the cells and scoring the rest every epoch.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None`` picks a number from the data size (400 up to 20,000 cells,
            fewer above, at least 20).
        lr
            Adam's learning rate; ``None`` scales scvi-tools' 1e-3 (at 128 cells per batch) linearly with
            ``batch_size`` (:func:`~myvae.model.default_learning_rate`). Both backends use scvi-tools' other Adam
            settings (``eps=0.01``, ``weight_decay=1e-6``).
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
            Epochs without improvement of the held-out ELBO before training stops (scvi-tools' 45).
        progress
            Show a progress bar.
        plan_kwargs
            Passed to the training plan (:class:`~myvae.model.LeanTrainingPlan`, an scvi-tools
            :class:`~scvi.train.TrainingPlan`, for a PyTorch module; :class:`~myvae.model.ValidatedPyroTrainingPlan`,
            a :class:`~scvi.train.PyroTrainingPlan`, for a Pyro module).
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (Lightning).
        """
        if self._uses_pyro and _several_processes(devices, trainer_kwargs.get("strategy")):
            raise InputError(
                "The Pyro backend trains on one device; for several devices or processes pass backend='torch', or "
                "leave devices and strategy at their defaults."
            )
        if max_epochs is None:
            max_epochs = default_max_epochs(self.adata.n_obs)
        if lr is None:
            lr = default_learning_rate(batch_size)
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        datamodule_cls = StreamingCountsDataModule if is_out_of_core(counts) else CountsDataModule
        datamodule = datamodule_cls(
            counts,
            batch_index=self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY) if self.n_batch > 1 else None,
            train_size=train_size,
            batch_size=batch_size,
            seed=scvi.settings.seed,
        )
        plan_kwargs = {"n_epochs_kl_warmup": None, **(plan_kwargs or {})}
        if self._uses_pyro:
            plan_kwargs.setdefault("loss_fn", TraceMeanField_ELBO())
            plan_kwargs.setdefault("optim_kwargs", {"lr": lr, **ADAM_SETTINGS, "fused": True})
        else:
            for name, value in {"lr": lr, **ADAM_SETTINGS}.items():
                plan_kwargs.setdefault(name, value)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        with quiet_training_logs(), reuse_freed_memory(), interrupts_stay_interrupts():
            if self._uses_pyro:
                pyro.clear_param_store()
            runner = self._train_runner_cls(
                self,
                training_plan=self._training_plan_cls(self.module, **plan_kwargs),
                data_splitter=datamodule,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                early_stopping_patience=early_stopping_patience,
                enable_progress_bar=progress,
                **trainer_kwargs,
            )
            runner()

    def save(
        self,
        dir_path: str | Path,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the trained model into a folder: weights and settings only, in a format that loads without pickle.

        Parameters
        ----------
        dir_path
            Folder to create.
        prefix
            Prefix of the file names inside the folder.
        overwrite
            Replace the folder if it exists; otherwise an existing folder is an error and nothing is written.
        save_anndata
            Also save the model's AnnData (``adata.h5ad``), so that :meth:`load` needs no ``adata``.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad`.
        """
        path = prepare_directory(dir_path, overwrite)
        history = {key: frame.to_numpy(dtype=float).ravel().tolist() for key, frame in (self.history_ or {}).items()}
        write_model_file(
            {
                "model_state_dict": {key: value.detach().cpu() for key, value in self.module.state_dict().items()},
                "var_names": [str(name) for name in self.adata.var_names],
                "init_params": {"n_latent": self.n_latent, "n_hidden": self.n_hidden, "backend": self.backend},
                "setup": {
                    "layer": self.adata_manager.registry["setup_args"].get("layer"),
                    "batch_key": self.adata_manager.registry["setup_args"].get("batch_key"),
                    "batch_categories": self.batch_categories,
                },
                "is_trained": bool(self.is_trained_),
                "history": history,
                "train_indices": _as_int_list(getattr(self, "train_indices_", None)),
                "validation_indices": _as_int_list(getattr(self, "validation_indices_", None)),
            },
            path,
            prefix,
        )
        if save_anndata:
            self.adata.write_h5ad(adata_path(path, prefix), **anndata_write_kwargs)

    @classmethod
    def saved_genes(cls, dir_path: str | Path, prefix: str | None = None) -> pd.Index:
        """The genes, in order, of a model saved with :meth:`save` in ``dir_path``."""
        return pd.Index(read_model_file(dir_path, prefix)["var_names"])

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        *,
        prefix: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> MyVAE:
        """Load a model saved with :meth:`save`, refusing data with other genes and files that are not plain data.

        The weights file is read with ``torch.load(..., weights_only=True)``: a file that holds anything but
        tensors and plain data — a pickle that could run code — is refused with an :class:`~myvae.InputError`
        before any of it runs. For a model trained with batches, ``adata.obs[batch_key]`` must hold only the
        model's batches; it is made categorical with the model's batches, in the model's order.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Data to attach, with the model's genes in the model's order; ``None`` uses the AnnData saved with the
            model (``save_anndata=True``).
        prefix
            Prefix given to :meth:`save`.
        accelerator
            Lightning accelerator to put the model on (``"cpu"``, ``"gpu"``, ``"auto"``).
        device
            Device index or ``"auto"``.
        """
        saved = read_model_file(dir_path, prefix)
        if adata is None:
            if not adata_path(dir_path, prefix).is_file():
                raise InputError(
                    f"The model in {str(dir_path)!r} was saved without its data; pass adata= with the model's genes."
                )
            adata = read_h5ad(adata_path(dir_path, prefix))
        check_same_genes(pd.Index(saved["var_names"]), adata.var_names)
        backend = saved["init_params"]["backend"]
        if backend not in BACKENDS:
            raise InputError(
                f"The model was trained with backend {backend!r}, which is not registered in this session; "
                "register it with myvae.model.register_backend before loading."
            )
        batch_key = saved["setup"].get("batch_key")
        if batch_key is not None:
            _align_batches(adata, batch_key, saved["setup"]["batch_categories"])
        cls.setup_anndata(adata, layer=saved["setup"]["layer"], batch_key=batch_key)
        model = cls(adata, **saved["init_params"])
        model.module.load_state_dict(saved["model_state_dict"])
        model.is_trained_ = saved["is_trained"]
        model.history_ = {key: pd.DataFrame({key: values}) for key, values in saved["history"].items()}
        model.train_indices_ = np.asarray(saved["train_indices"], dtype=int)
        model.validation_indices_ = np.asarray(saved["validation_indices"], dtype=int)
        _, _, device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
        model.to_device(device)
        model.module.eval()
        return model

    def _make_data_loader(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        data_loader_class: type | None = None,
        **data_loader_kwargs,
    ):
        """scvi-tools' data loader, or, for counts on disk, minibatches read a chunk of rows at a time.

        On disk, the cells come in increasing order, so ``indices`` must increase (an error says so otherwise).
        """
        adata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        counts = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if not is_out_of_core(counts) or shuffle or data_loader_class is not None:
            return super()._make_data_loader(
                adata, indices, batch_size, shuffle, data_loader_class, **data_loader_kwargs
            )
        batch_index = batch_codes(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)) if self.n_batch > 1 else None
        return streamed_rows(counts, indices, batch_size or scvi.settings.batch_size, batch_index=batch_index)

    def _minibatches(self, adata: AnnData | None, indices: Sequence[int] | None, batch_size: int | None):
        if adata is not None:
            check_same_genes(self.adata.var_names, adata.var_names)
        adata = self._validate_anndata(adata)
        return self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)

    def _per_cell(self, compute, adata, indices, batch_size) -> np.ndarray:
        self.module.eval()
        with torch.inference_mode():
            parts = [compute(tensors).cpu().numpy() for tensors in self._minibatches(adata, indices, batch_size)]
        return np.concatenate(parts, axis=0)

    def _batch_code(self, batch: str | None) -> int | None:
        """The code of batch ``batch``; an :class:`~myvae.InputError` listing the batches if it is not one."""
        if batch is None:
            return None
        if self.n_batch == 1:
            raise InputError(
                "transform_batch= needs a model trained with batches; set up the data with "
                "mv.pp.setup_counts(adata, batch_key=...) and train again."
            )
        categories = self.batch_categories
        if str(batch) not in categories:
            raise InputError(f"transform_batch={batch!r} is not one of the model's batches: {categories}.")
        return categories.index(str(batch))

    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        library_size: float = 1e4,
        n_samples: int = 25,
        transform_batch: str | None = None,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        r"""Denoised, normalised expression: the posterior mean of :math:`\rho`, scaled to ``library_size``.

        Parameters
        ----------
        adata
            Cells with the model's genes; ``None`` uses the training data.
        indices
            Cells to use; ``None`` uses all.
        library_size
            Counts per cell that each row sums to.
        n_samples
            Draws of :math:`z \sim q(z \mid x)` averaged per cell.
        transform_batch
            A batch (one of :attr:`batch_categories`): express every cell as if it came from that batch, which
            removes the batch effect from the expression. ``None`` decodes each cell with its own batch.
        batch_size
            Cells per minibatch; ``None`` uses scvi-tools' default.
        return_numpy
            Return an array instead of a :class:`~pandas.DataFrame` indexed by cells and genes.

        Returns
        -------
        Cells × genes, ``float32``, every row summing to ``library_size``.
        """
        code = self._batch_code(transform_batch)
        expression = library_size * self._per_cell(
            lambda tensors: self.module.normalized_expression(tensors, n_samples=n_samples, transform_batch=code),
            adata,
            indices,
            batch_size,
        )
        if return_numpy:
            return expression
        cells = self._validate_anndata(adata).obs_names
        cells = cells if indices is None else cells[indices]
        return pd.DataFrame(expression, index=cells, columns=self.adata.var_names)

    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        *,
        n_samples: int = 1,
        batch_size: int | None = None,
    ) -> np.ndarray:
        r"""Counts drawn from the posterior predictive: :math:`z \sim q(z \mid x)`, then :math:`x' \sim p(x \mid z, l)`.

        Parameters
        ----------
        adata
            Cells with the model's genes; ``None`` uses the training data.
        indices
            Cells to use; ``None`` uses all.
        n_samples
            Draws per cell.
        batch_size
            Cells per minibatch; ``None`` uses scvi-tools' default.

        Returns
        -------
        Integer-valued counts, cells × genes, or cells × genes × ``n_samples`` when ``n_samples > 1``.
        """
        return self._per_cell(
            lambda tensors: self.module.sample(tensors, n_samples=n_samples), adata, indices, batch_size
        )

    def get_elbo(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, *, batch_size: int | None = None
    ) -> float:
        """The ELBO per cell on the given cells (higher is better), as scvi-tools' ``get_elbo`` returns it.

        Parameters
        ----------
        adata
            Cells with the model's genes; ``None`` uses the training data.
        indices
            Cells to use; ``None`` uses all.
        batch_size
            Cells per minibatch; ``None`` uses scvi-tools' default.
        """
        terms = self._per_cell(
            lambda tensors: sum(self.module.negative_elbo_terms(tensors)), adata, indices, batch_size
        )
        return -float(np.mean(terms))

    def get_reconstruction_error(
        self, adata: AnnData | None = None, indices: Sequence[int] | None = None, *, batch_size: int | None = None
    ) -> dict[str, float]:
        r"""The reconstruction error :math:`-\mathbb E_q[\log p(x \mid z)]` per cell (lower is better).

        Parameters
        ----------
        adata
            Cells with the model's genes; ``None`` uses the training data.
        indices
            Cells to use; ``None`` uses all.
        batch_size
            Cells per minibatch; ``None`` uses scvi-tools' default.

        Returns
        -------
        ``{"reconstruction_loss": value}``, as scvi-tools returns it.
        """

        def reconstruction_loss(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.module.negative_elbo_terms(tensors)[0]

        return {"reconstruction_loss": float(np.mean(self._per_cell(reconstruction_loss, adata, indices, batch_size)))}
