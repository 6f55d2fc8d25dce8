"""The model class: the advanced interface behind :func:`myvae.tl.myvae`.

:class:`MyVAE` is composed as scvi-tools composes its models: the backends and how each trains
(:mod:`myvae.model._backends`), the training defaults (:mod:`myvae.model._defaults`), the posterior queries
(:class:`~myvae.model._posterior.PosteriorMixin`) and save/load (:class:`~myvae.model._save_load.SaveLoadMixin`)
live in their own modules; this one holds set-up and training.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Literal

import lightning.pytorch as pl
import scvi
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.model.base import BaseModelClass, VAEMixin
from scvi.train import Trainer, TrainRunner

from myvae._checks import (
    check_accelerator,
    check_anndata,
    check_keywords,
    check_positive_float,
    check_positive_int,
)
from myvae._counts import is_out_of_core
from myvae._docs import doc_params
from myvae._exceptions import InputError
from myvae._setup import check_setup, is_counts_copy
from myvae.module import TorchVAEModule

from ._allocator import reuse_freed_memory
from ._backends import BACKENDS, check_backend, several_processes, training_recipe
from ._best_epoch import BestEpoch
from ._datamodule import CountsDataModule, resolve_train_size
from ._defaults import (
    BATCH_SIZE_DOC,
    CALLBACKS_DOC,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT,
    DEFAULT_EARLY_STOPPING_PATIENCE,
    EARLY_STOPPING_DOC,
    LR_DOC,
    MAX_EPOCHS_DOC,
    TrainingSettings,
)
from ._differential_method import DifferentialExpressionMixin
from ._early_stopping import PlateauStopping, check_early_stopping
from ._generative import GenerativeQueriesMixin
from ._guards import interrupts_stay_interrupts
from ._posterior import PosteriorMixin
from ._query import FrozenReference, QueryMixin
from ._quiet import quiet_training_logs
from ._row_loops_warm_up import LoadRowLoops
from ._save_load import SaveLoadMixin
from ._scvi_keywords import SCVI_MODEL_KEYWORDS, SCVI_SETUP_KEYWORDS, SCVI_TRAIN_KEYWORDS
from ._streaming import StreamingCountsDataModule

__all__ = ["MyVAE", "train_keywords", "trainer_keywords"]

Backend = Literal["torch", "pyro"]

_SET_BY_TRAIN = frozenset(
    {"max_epochs", "accelerator", "devices", "early_stopping", "early_stopping_patience", "enable_progress_bar"}
    | {"callbacks", "model", "training_plan", "data_splitter", "trainer_config"}
    # scvi-tools' early stopping is replaced by the relative rule of ``early_stopping_min_improvement``
    | {"early_stopping_monitor", "early_stopping_min_delta", "early_stopping_mode", "early_stopping_warmup_epochs"}
)
"""Keywords of the trainer that :meth:`MyVAE.train` sets from its own arguments, or refuses."""

_REGISTER_KEYWORDS = frozenset({"layer", "batch_key", "source_registry", "extend_categories"})
"""What :meth:`MyVAE.setup_anndata` takes: its own arguments and those it passes to scvi-tools' registration."""


@cache
def trainer_keywords() -> frozenset[str]:
    """The keywords :meth:`MyVAE.train` passes on to the trainer: Lightning's and scvi-tools' ``Trainer``'s.

    Those that ``train`` sets from its own arguments (``max_epochs``, ``enable_progress_bar``, …) are left out.
    """
    names = set()
    for trainer in (pl.Trainer, Trainer):
        parameters = inspect.signature(trainer.__init__).parameters.values()
        names.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return frozenset(names - _SET_BY_TRAIN - {"self"})


@cache
def train_keywords() -> frozenset[str]:
    """Every keyword :meth:`MyVAE.train` takes: its own and those it passes on to the trainer."""
    parameters = inspect.signature(MyVAE.train).parameters.values()
    own = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    return frozenset(own) | trainer_keywords()


class MyVAE(
    PosteriorMixin,
    GenerativeQueriesMixin,
    DifferentialExpressionMixin,
    SaveLoadMixin,
    QueryMixin,
    VAEMixin,
    BaseModelClass,
):
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
        self,
        adata: AnnData | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        backend: Backend = "torch",
        **model_kwargs,
    ):
        check_keywords(model_kwargs, ("adata", "n_latent", "n_hidden", "backend"), "MyVAE", known=SCVI_MODEL_KEYWORDS)
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
        self.restored_epoch_: int | None = None
        self.frozen_: dict[str, torch.Tensor] | None = None  # a query model's frozen weights (load_query_data)

    @property
    def n_batch(self) -> int:
        """Number of batches the decoder is conditioned on (1 when the data were set up without ``batch_key``)."""
        return self.summary_stats.n_batch

    @property
    def batch_categories(self) -> list[str]:
        """The batches, in the order of their codes (one unnamed batch without ``batch_key``)."""
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        return [str(category) for category in mapping]

    @classmethod
    def setup_anndata(cls, adata: AnnData, layer: str | None = None, batch_key: str | None = None, **kwargs) -> None:
        """Register an AnnData whose ``X`` (or ``layers[layer]``) holds raw counts, after checking them.

        The counts and the batch column get the checks of :func:`myvae.pp.setup_counts` first: values that are not
        counts (e.g. log-normalised), cells without counts, a missing layer or column, or a numeric batch column
        that looks continuous are an :class:`~myvae.InputError` that says what to pass, before anything is
        registered. scvi-tools' other covariates (``categorical_covariate_keys``, ``labels_key``, ...) are refused
        with what this model does instead.

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
            ``source_registry`` and ``extend_categories``, passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        check_keywords(kwargs, _REGISTER_KEYWORDS, "MyVAE.setup_anndata", known=SCVI_SETUP_KEYWORDS)
        if not is_counts_copy(adata):  # the package's own copies were checked when they were made
            check_setup(check_anndata(adata, "MyVAE.setup_anndata", takes_mudata=False), layer, batch_key)
        cls._register_anndata(adata, layer=layer, batch_key=batch_key, **kwargs)

    @classmethod
    def _register_anndata(
        cls, adata: AnnData, layer: str | None = None, batch_key: str | None = None, **kwargs
    ) -> None:
        """Register ``adata`` with scvi-tools (:meth:`setup_anndata` without its checks)."""
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @doc_params(
        max_epochs=MAX_EPOCHS_DOC,
        lr=LR_DOC,
        batch_size=BATCH_SIZE_DOC,
        early_stopping=EARLY_STOPPING_DOC,
        callbacks=CALLBACKS_DOC,
    )
    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        train_size: float | None = None,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = True,
        early_stopping_patience: int = DEFAULT_EARLY_STOPPING_PATIENCE,
        early_stopping_min_improvement: float = DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT,
        progress: bool = True,
        callbacks: list[Callback] | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with the model's backend, keeping ``train_size`` of the cells and scoring the rest every epoch.

        The arguments that shape the result, defaults filled in, are kept as ``training_settings_``
        (a :class:`~myvae.model.TrainingSettings`). With early stopping, the model ends with the weights of the
        epoch with the best held-out ELBO, and ``restored_epoch_`` says which (counting from 1; ``None`` without
        early stopping, when the last epoch's weights are kept); :meth:`save` and :meth:`load` keep it.

        Parameters
        ----------
        {max_epochs}
        {lr}
        {batch_size}
        train_size
            Fraction of the cells to train on; the others give the held-out ELBO (``elbo_validation``). ``None``:
            ``1 - validation_size``, else 0.9.
        validation_size
            Fraction of the cells held out (scvi-tools' name); with ``train_size`` the two must add up to 1, as no
            test set is kept.
        accelerator
            Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``, …).
        devices
            Lightning devices.
        {early_stopping}
        progress
            Show a progress bar (``enable_progress_bar``, scvi-tools' name for it, is taken too).
        {callbacks}
        plan_kwargs
            Passed to the training plan (:class:`~myvae.model.LeanTrainingPlan`, an scvi-tools
            :class:`~scvi.train.TrainingPlan`, for a PyTorch module; :class:`~myvae.model.ValidatedPyroTrainingPlan`,
            a :class:`~scvi.train.PyroTrainingPlan`, for a Pyro module). Both weight the KL term 20 times at the
            first step and lower the weight linearly to 1 over the first 300 steps, which keeps the batch out of
            the latent code (``{"kl_anneal_steps": 0}`` turns that off; scvi-tools' ``n_epochs_kl_warmup``
            replaces it).
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer` (Lightning); an unknown keyword is an
            :class:`~myvae.InputError` naming the valid ones.
        """
        progress = trainer_kwargs.pop("enable_progress_bar", progress)  # scvi-tools' and Lightning's name for it
        check_keywords(trainer_kwargs, train_keywords(), "MyVAE.train", known=SCVI_TRAIN_KEYWORDS)
        check_accelerator(accelerator)
        check_early_stopping(early_stopping, early_stopping_patience, early_stopping_min_improvement)
        check_positive_int(max_epochs, "max_epochs", allow_none=True)
        check_positive_int(batch_size, "batch_size")
        if lr is not None:
            check_positive_float(lr, "lr")
        train_size = resolve_train_size(self.adata.n_obs, train_size, validation_size, early_stopping=early_stopping)
        recipe = training_recipe(self.module)
        if not recipe.several_devices and several_processes(devices, trainer_kwargs.get("strategy")):
            raise InputError(
                "The Pyro backend trains on one device; for several devices or processes pass backend='torch', or "
                "leave devices and strategy at their defaults."
            )
        settings = TrainingSettings.resolve(
            self.adata.n_obs,
            max_epochs=max_epochs,
            lr=lr,
            batch_size=batch_size,
            train_size=train_size,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            early_stopping_min_improvement=early_stopping_min_improvement,
            plan_kwargs=plan_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        self.training_settings_ = settings
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        datamodule_cls = StreamingCountsDataModule if is_out_of_core(counts) else CountsDataModule
        datamodule = datamodule_cls(
            counts,
            batch_index=self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY) if self.n_batch > 1 else None,
            train_size=settings.train_size,
            batch_size=settings.batch_size,
            seed=scvi.settings.seed,
        )
        plan_kwargs = {"n_epochs_kl_warmup": None, **recipe.plan_defaults(settings.lr), **(settings.plan_kwargs or {})}
        best_epoch = BestEpoch() if settings.early_stopping else None
        stopping = (
            [PlateauStopping(settings.early_stopping_patience, settings.early_stopping_min_improvement), best_epoch]
            if best_epoch is not None
            else []
        )
        with quiet_training_logs(), reuse_freed_memory(), interrupts_stay_interrupts():
            recipe.reset()
            self.module.train()  # a trained model is in evaluation mode; Lightning would warn and keep it so
            runner = self._train_runner_cls(
                self,
                training_plan=recipe.plan_cls(self.module, **plan_kwargs),
                data_splitter=datamodule,
                max_epochs=settings.max_epochs,
                accelerator=settings.accelerator,
                devices=settings.devices,
                early_stopping=False,  # the rule of PlateauStopping instead
                enable_progress_bar=progress,
                callbacks=[LoadRowLoops(), *self._frozen_reference(), *stopping, *(callbacks or [])],
                **{"check_val_every_n_epoch": 1, **settings.trainer_kwargs},
            )
            runner()
        self.restored_epoch_ = None if best_epoch is None else best_epoch.epoch

    def _frozen_reference(self) -> list[Callback]:
        """For a query model (:meth:`load_query_data`), the callback that keeps its frozen weights; else none."""
        return [] if self.frozen_ is None else [FrozenReference(self.module, self.frozen_)]
