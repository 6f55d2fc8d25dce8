"""scvi-tools' training plan with the per-step bookkeeping cut down to what the history needs."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan

from myvae._docs import doc_params

from ._epoch_means import EpochMeansMixin, EpochTotals
from ._kl_anneal import KL_ANNEAL_DOC, KL_WEIGHT_START, KLAnnealMixin
from ._lr_warmup import LR_WARMUP_STEPS, check_warmup_steps, warm_up_learning_rate

__all__ = ["LeanTrainingPlan"]


@doc_params(kl_anneal=KL_ANNEAL_DOC)
class LeanTrainingPlan(KLAnnealMixin, EpochMeansMixin, TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` that logs epoch means instead of updating metrics at every step.

    It keeps scvi-tools' optimiser, learning-rate schedule and KL warm-up, and logs the same per-epoch history
    keys (``elbo_train``, ``elbo_validation``, ``reconstruction_loss_*``, ``kl_local_*``, ``validation_loss``)
    — the negative ELBO per cell, averaged over the cells of the epoch. The learning rate rises linearly to ``lr``
    over the first ``lr_warmup_steps`` optimiser steps (see ``myvae.model._lr_warmup``), and the KL term's weight
    falls linearly from ``kl_weight_start`` to 1 over the first ``kl_anneal_steps`` (see ``myvae.model._kl_anneal``).

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`~scvi.train.TrainingPlan`.
    lr_warmup_steps
        Optimiser steps over which the learning rate rises linearly to ``lr`` (0: none).
    {kl_anneal}
    """

    def __init__(
        self,
        *args,
        lr_warmup_steps: int = LR_WARMUP_STEPS,
        kl_anneal_steps: int | None = None,
        kl_weight_start: float = KL_WEIGHT_START,
        **kwargs,
    ):
        check_warmup_steps(lr_warmup_steps)  # before any work
        super().__init__(*args, **kwargs)
        self._init_kl_anneal(kl_anneal_steps, kl_weight_start)
        self._init_epoch_totals(("reconstruction_loss", "kl_local"))
        self.lr_warmup_steps = lr_warmup_steps
        self._target_lrs: list[float] | None = None

    @property
    def _learning_rate(self) -> float | None:
        return self.lr

    def _optimizer_creator_fn(self, optimizer_cls: type[torch.optim.Optimizer]):
        """scvi-tools' optimiser and settings, with the fused implementation (one pass per parameter per step)."""
        return lambda params: optimizer_cls(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True
        )

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Lightning's optimiser step, with the learning rate of the warm-up while it lasts."""
        if self.global_step < self.lr_warmup_steps:
            groups = optimizer.param_groups
            if self._target_lrs is None:
                self._target_lrs = [group["lr"] for group in groups]
            warm_up_learning_rate(groups, self._target_lrs, self.global_step, self.lr_warmup_steps)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one minibatch; its per-cell terms go into the epoch's totals."""
        _, _, output = self.forward(batch, loss_kwargs={"kl_weight": self.kl_weight})
        self._add(self._train_totals, output)
        return output.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Score one minibatch of held-out cells."""
        _, _, output = self.forward(batch, loss_kwargs={"kl_weight": self.kl_weight})
        self._add(self._validation_totals, output)

    @staticmethod
    def _add(totals: EpochTotals, output: LossOutput) -> None:
        totals.add(
            output.n_obs_minibatch,
            reconstruction_loss=output.reconstruction_loss_sum,
            kl_local=output.kl_local_sum,
        )
