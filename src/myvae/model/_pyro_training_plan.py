"""scvi-tools' Pyro training plan, with the per-cell epoch history and the held-out ELBO of the PyTorch plan."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.train import PyroTrainingPlan

from ._epoch_means import EpochMeansMixin
from ._guards import check_finite_loss
from ._joint_adam import JointAdam
from ._lr_warmup import LR_WARMUP_STEPS, check_warmup_steps

__all__ = ["ValidatedPyroTrainingPlan"]


class ValidatedPyroTrainingPlan(EpochMeansMixin, PyroTrainingPlan):
    """:class:`~scvi.train.PyroTrainingPlan` that logs the history of :class:`~myvae.model.LeanTrainingPlan`.

    ``elbo_train`` and ``elbo_validation`` (and ``validation_loss``, which early stopping can monitor) are the
    negative ELBO per cell, averaged over the cells of the epoch — not, as in scvi-tools' Pyro plan, averaged over
    minibatches — so both backends log the same numbers for the same training. Under a KL warm-up
    (``n_epochs_kl_warmup`` or ``n_steps_kl_warmup`` in ``plan_kwargs``) ``elbo_train`` is the KL-weighted loss
    that SVI optimises, as in scvi-tools; ``elbo_validation`` is always the full ELBO.

    Without an ``optim``, the parameters are optimised by :class:`~myvae.model.JointAdam` with ``optim_kwargs``
    (scvi-tools' default learning rate of 1e-3 where they give none): Pyro's Adam, with one torch optimiser for all
    parameters instead of one per parameter, whose learning rate rises linearly over the first ``lr_warmup_steps``
    steps as in :class:`~myvae.model.LeanTrainingPlan` (an ``optim`` of the caller's is used as it is).
    """

    def __init__(
        self, *args, optim=None, optim_kwargs: dict | None = None, lr_warmup_steps: int = LR_WARMUP_STEPS, **kwargs
    ):
        check_warmup_steps(lr_warmup_steps)
        if optim is None:
            optim = JointAdam({"lr": 1e-3, **(optim_kwargs or {})}, warmup_steps=lr_warmup_steps)
        super().__init__(*args, optim=optim, **kwargs)
        self._init_epoch_totals()

    @property
    def _learning_rate(self) -> float | None:
        return self.optim.pt_optim_args.get("lr") if isinstance(self.optim.pt_optim_args, dict) else None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """One SVI step; stops with :class:`~myvae.TrainingDivergedError` once the ELBO is no longer finite."""
        output = super().training_step(batch, batch_idx)
        # scvi-tools keeps every step's loss for a mean over minibatches; the epoch's totals replace it
        self.training_step_outputs.clear()
        loss = float(output["loss"]) / self.scale_elbo
        check_finite_loss(loss, stage="training", epoch=self.current_epoch, lr=self._learning_rate)
        n_obs = batch[REGISTRY_KEYS.X_KEY].shape[0]
        self._train_totals.add(n_obs, elbo=loss * n_obs)
        return output

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Score one minibatch of held-out cells."""
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        loss = self.loss_fn.loss(self.module.model, self.module.guide, *args, **kwargs)
        check_finite_loss(loss, stage="validation", epoch=self.current_epoch, lr=self._learning_rate)
        n_obs = batch[REGISTRY_KEYS.X_KEY].shape[0]
        self._validation_totals.add(n_obs, elbo=loss * n_obs)
