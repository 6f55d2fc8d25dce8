"""scvi-tools' Pyro training plan, extended with the held-out ELBO that the PyTorch plan already logs."""

from __future__ import annotations

import torch
from scvi.train import PyroTrainingPlan

from ._guards import check_finite_loss

__all__ = ["ValidatedPyroTrainingPlan"]


class ValidatedPyroTrainingPlan(PyroTrainingPlan):
    """:class:`~scvi.train.PyroTrainingPlan` that also scores the validation cells.

    It logs ``elbo_validation`` (the negative ELBO per cell on held-out cells, the same quantity and name as
    scvi-tools' :class:`~scvi.train.TrainingPlan`), so both backends keep the same history and early stopping
    can monitor it.
    """

    @property
    def _learning_rate(self) -> float | None:
        return self.optim.pt_optim_args.get("lr") if isinstance(self.optim.pt_optim_args, dict) else None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """One SVI step; stops with :class:`~myvae.TrainingDivergedError` once the ELBO is no longer finite."""
        output = super().training_step(batch, batch_idx)
        check_finite_loss(float(output["loss"]), stage="training", epoch=self.current_epoch, lr=self._learning_rate)
        return output

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Negative ELBO per cell of one validation minibatch, averaged over the epoch by Lightning."""
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        loss = self.loss_fn.loss(self.module.model, self.module.guide, *args, **kwargs)
        check_finite_loss(loss, stage="validation", epoch=self.current_epoch, lr=self._learning_rate)
        self.log("elbo_validation", loss, on_epoch=True, prog_bar=True, batch_size=args[0].shape[0])
