"""The inference backends: the module each backend name trains, and how each kind of module is trained.

:data:`BACKENDS` maps a name to a module class. How a module is trained depends only on its kind: a
:class:`~scvi.module.base.PyroBaseModuleClass` with Pyro's SVI, any other
:class:`~scvi.module.base.BaseModuleClass` with scvi-tools' training plan. Each kind has one small
:class:`TrainingRecipe` — the plan class, the plan's default arguments, what to reset before training, whether it
trains on several devices — and :func:`training_recipe` picks it, so the model class holds no branch per backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
from pyro.infer import TraceMeanField_ELBO
from scvi.module.base import BaseModuleClass, PyroBaseModuleClass

from myvae._exceptions import InputError
from myvae.module import PyroVAEModule, TorchVAEModule

from ._defaults import ADAM_SETTINGS
from ._pyro_training_plan import ValidatedPyroTrainingPlan
from ._training_plan import LeanTrainingPlan

__all__ = ["BACKENDS", "TrainingRecipe", "check_backend", "register_backend", "several_processes", "training_recipe"]

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
    """Raise an :class:`~myvae.InputError` listing the choices if ``backend`` is not one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        choices = ", ".join(repr(name) for name in BACKENDS)
        raise InputError(f"Unknown backend {backend!r}; choose one of {choices}.")


def _nothing_to_reset() -> None:
    return None


@dataclass(frozen=True)
class TrainingRecipe:
    """How one kind of module is trained.

    Attributes
    ----------
    plan_cls
        The training plan (a Lightning module) that wraps the module.
    plan_defaults
        The plan's arguments for a learning rate: the optimiser's settings (and, for Pyro, the ELBO). Arguments the
        user gives in ``plan_kwargs`` take precedence, one by one.
    reset
        Called before training: clears state kept outside the module.
    several_devices
        Whether the plan trains on several devices or processes.
    """

    plan_cls: type
    plan_defaults: Callable[[float], dict[str, Any]]
    reset: Callable[[], None] = _nothing_to_reset
    several_devices: bool = True


TORCH_RECIPE = TrainingRecipe(plan_cls=LeanTrainingPlan, plan_defaults=lambda lr: {"lr": lr, **ADAM_SETTINGS})
"""A :class:`~scvi.module.base.BaseModuleClass` writes its loss; scvi-tools' plan (lean) optimises it."""
PYRO_RECIPE = TrainingRecipe(
    plan_cls=ValidatedPyroTrainingPlan,
    plan_defaults=lambda lr: {
        "loss_fn": TraceMeanField_ELBO(),
        "optim_kwargs": {"lr": lr, **ADAM_SETTINGS, "fused": True},
    },
    reset=pyro.clear_param_store,
    several_devices=False,
)
"""A :class:`~scvi.module.base.PyroBaseModuleClass` writes a model and a guide; Pyro's SVI forms the ELBO."""


def training_recipe(module: BaseModuleClass | PyroBaseModuleClass) -> TrainingRecipe:
    """The recipe that trains ``module``."""
    return PYRO_RECIPE if isinstance(module, PyroBaseModuleClass) else TORCH_RECIPE


def several_processes(devices: int | list[int] | str, strategy: object) -> bool:
    """Whether Lightning will train on more than one device or with a distributed strategy."""
    if isinstance(devices, int) and devices > 1 or isinstance(devices, list | tuple) and len(devices) > 1:
        return True
    if isinstance(devices, str) and devices.strip() not in ("auto", "1"):
        return True
    return isinstance(strategy, str) and "ddp" in strategy or strategy is not None and not isinstance(strategy, str)
