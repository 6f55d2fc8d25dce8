"""scvi-tools' Pyro training plan, extended with the held-out ELBO that the PyTorch plan already logs."""

from __future__ import annotations

import torch
from scvi.train import PyroTrainingPlan

__all__ = ["ValidatedPyroTrainingPlan"]


class ValidatedPyroTrainingPlan(PyroTrainingPlan):
    """:class:`~scvi.train.PyroTrainingPlan` that also scores the validation cells.

    It logs ``elbo_validation`` (the negative ELBO per cell on held-out cells, the same quantity and name as
    scvi-tools' :class:`~scvi.train.TrainingPlan`), so both backends keep the same history and early stopping
    can monitor it.
    """

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Negative ELBO per cell of one validation minibatch, averaged over the epoch by Lightning."""
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        loss = self.loss_fn.loss(self.module.model, self.module.guide, *args, **kwargs)
        self.log("elbo_validation", loss, on_epoch=True, prog_bar=True, batch_size=args[0].shape[0])
