"""Hand back the best epoch's model: a copy of the weights at each new best held-out ELBO, restored at the end.

Early stopping ends training some epochs past the best held-out ELBO; :class:`BestEpoch` makes the returned model
the best one rather than the last. Both backends keep every parameter in the module (Pyro's in the networks that
the module holds, not in Pyro's parameter store), so the module's state dict is the whole model.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from myvae import _logging

from ._early_stopping import MONITOR

__all__ = ["BestEpoch"]


class BestEpoch(Callback):
    """Keep the module's weights of the epoch with the best held-out ELBO and put them back when training ends.

    The copy stays on the module's device; it is taken only when the held-out ELBO beats every earlier epoch.

    Attributes
    ----------
    epoch
        The best epoch, counting from 1 (``None`` before any epoch was scored).
    value
        Its held-out negative ELBO per cell.
    """

    def __init__(self):
        self.epoch: int | None = None
        self.value = math.inf
        self._state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Copy the weights if this epoch's held-out ELBO is the best yet."""
        current = trainer.callback_metrics.get(MONITOR)
        if trainer.sanity_checking or current is None or not float(current) < self.value:
            return
        self.epoch, self.value = trainer.current_epoch + 1, float(current)
        self._state = {name: tensor.detach().clone() for name, tensor in pl_module.module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Load the best epoch's weights into the module (in place: optimisers and Pyro keep their references)."""
        if self._state is None:
            return
        pl_module.module.load_state_dict(self._state)
        self._state = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str | None = None) -> None:
        """Say which epoch the model is (after the progress bar is gone, and after why training stopped)."""
        if self.epoch is not None:
            _logging.info(
                f"    kept the weights of epoch {self.epoch}, the best held-out ELBO ({-self.value:.2f} per cell)"
            )
