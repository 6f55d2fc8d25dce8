"""scvi-tools' Pyro training plan, with the per-cell epoch history and the held-out ELBO of the PyTorch plan."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.train import PyroTrainingPlan

from myvae._docs import doc_params

from ._epoch_means import EpochMeansMixin
from ._guards import check_finite_loss
from ._joint_adam import JointAdam
from ._kl_anneal import KL_ANNEAL_DOC, KL_WEIGHT_START, KLAnnealMixin
from ._lr_warmup import LR_WARMUP_STEPS, check_warmup_steps

__all__ = ["ValidatedPyroTrainingPlan"]


@doc_params(kl_anneal=KL_ANNEAL_DOC)
class ValidatedPyroTrainingPlan(KLAnnealMixin, EpochMeansMixin, PyroTrainingPlan):
    """:class:`~scvi.train.PyroTrainingPlan` that logs the history of :class:`~myvae.model.LeanTrainingPlan`.

    ``elbo_train`` and ``elbo_validation`` (and ``validation_loss``, which early stopping can monitor) are the
    negative ELBO per cell, averaged over the cells of the epoch — not, as in scvi-tools' Pyro plan, averaged over
    minibatches — so both backends log the same numbers for the same training. While the KL term is weighted
    (the annealing of ``kl_anneal_steps``, or scvi-tools' KL warm-up), SVI optimises the weighted loss, and
    ``elbo_train`` is still the full ELBO, as in the PyTorch plan: the step adds back what the weight took off the
    analytic KL term, which the guide of :class:`~myvae.module.PyroVAEModule` keeps (a module of one's own whose
    guide does not keep it as ``unweighted_kl_sum`` logs the weighted loss, as scvi-tools does).

    Without an ``optim``, the parameters are optimised by :class:`~myvae.model.JointAdam` with ``optim_kwargs``
    (scvi-tools' default learning rate of 1e-3 where they give none): Pyro's Adam, with one torch optimiser for all
    parameters instead of one per parameter, whose learning rate rises linearly over the first ``lr_warmup_steps``
    steps as in :class:`~myvae.model.LeanTrainingPlan` (an ``optim`` of the caller's is used as it is). The KL
    term's weight falls from ``kl_weight_start`` to 1 over the first ``kl_anneal_steps`` steps, as there.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`~scvi.train.PyroTrainingPlan`.
    optim, optim_kwargs
        Pyro optimiser and its arguments.
    lr
        The learning rate, in place of ``optim_kwargs``' (as :class:`~scvi.train.TrainingPlan` takes it).
    lr_warmup_steps
        Optimiser steps over which the learning rate rises linearly (0: none).
    {kl_anneal}
    """

    def __init__(
        self,
        *args,
        optim=None,
        optim_kwargs: dict | None = None,
        lr: float | None = None,
        lr_warmup_steps: int = LR_WARMUP_STEPS,
        kl_anneal_steps: int | None = None,
        kl_weight_start: float = KL_WEIGHT_START,
        **kwargs,
    ):
        check_warmup_steps(lr_warmup_steps)
        if lr is not None:  # as scvi-tools' TrainingPlan takes it, so plan_kwargs={"lr": ...} serve either backend
            optim_kwargs = {**(optim_kwargs or {}), "lr": lr}
        if optim is None:
            optim = JointAdam({"lr": 1e-3, **(optim_kwargs or {})}, warmup_steps=lr_warmup_steps)
        super().__init__(*args, optim=optim, **kwargs)
        self._init_kl_anneal(kl_anneal_steps, kl_weight_start)
        self._init_epoch_totals()

    @property
    def _learning_rate(self) -> float | None:
        return self.optim.pt_optim_args.get("lr") if isinstance(self.optim.pt_optim_args, dict) else None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """One SVI step; stops with :class:`~myvae.TrainingDivergedError` once the ELBO is no longer finite."""
        kl_weight = self.kl_weight if self.use_kl_weight else 1.0
        self.module.unweighted_kl_sum = None  # a guide run with a KL weight other than 1 sets it (PyroVAEModule's does)
        output = super().training_step(batch, batch_idx)
        # scvi-tools keeps every step's loss for a mean over minibatches; the epoch's totals replace it
        self.training_step_outputs.clear()
        n_obs = batch[REGISTRY_KEYS.X_KEY].shape[0]
        loss = float(output["loss"]) / self.scale_elbo
        if self.module.unweighted_kl_sum is not None:  # add back what the weight took off the KL term
            loss += (1.0 - kl_weight) * float(self.module.unweighted_kl_sum) / n_obs
        check_finite_loss(loss, stage="training", epoch=self.current_epoch, lr=self._learning_rate)
        self._train_totals.add(n_obs, elbo=loss * n_obs)
        return output

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Score one minibatch of held-out cells."""
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        loss = self.loss_fn.loss(self.module.model, self.module.guide, *args, **kwargs)
        check_finite_loss(loss, stage="validation", epoch=self.current_epoch, lr=self._learning_rate)
        n_obs = batch[REGISTRY_KEYS.X_KEY].shape[0]
        self._validation_totals.add(n_obs, elbo=loss * n_obs)
