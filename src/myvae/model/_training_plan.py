"""scvi-tools' training plan with the per-step bookkeeping cut down to what the history needs."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan

from ._guards import check_finite_loss

__all__ = ["LeanTrainingPlan"]


class _EpochTotals:
    """Running sums of the per-cell loss terms over one epoch, kept as tensors (no device sync per step)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.reconstruction_loss = torch.zeros(())
        self.kl_local = torch.zeros(())
        self.n_obs = 0

    def add(self, output: LossOutput) -> None:
        self.reconstruction_loss = self.reconstruction_loss + output.reconstruction_loss_sum.detach().cpu()
        self.kl_local = self.kl_local + output.kl_local_sum.detach().cpu()
        self.n_obs += output.n_obs_minibatch

    def sum_over_processes(self, strategy, device: torch.device) -> None:
        """Replace the sums by those over every process training together (distributed training)."""
        sums = torch.stack([self.reconstruction_loss, self.kl_local, torch.tensor(float(self.n_obs))]).to(device)
        sums = strategy.reduce(sums, reduce_op="sum").cpu()
        self.reconstruction_loss, self.kl_local, self.n_obs = sums[0], sums[1], int(sums[2])

    def means(self) -> dict[str, torch.Tensor]:
        reconstruction_loss = self.reconstruction_loss / self.n_obs
        kl_local = self.kl_local / self.n_obs
        return {
            "elbo": reconstruction_loss + kl_local,
            "reconstruction_loss": reconstruction_loss,
            "kl_local": kl_local,
        }


class LeanTrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` that logs epoch means instead of updating metrics at every step.

    It keeps scvi-tools' optimiser, learning-rate schedule and KL warm-up, and logs the same per-epoch history
    keys (``elbo_train``, ``elbo_validation``, ``reconstruction_loss_*``, ``kl_local_*``, ``validation_loss``)
    — the negative ELBO per cell, averaged over the cells of the epoch.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._train_totals = _EpochTotals()
        self._validation_totals = _EpochTotals()

    def _optimizer_creator_fn(self, optimizer_cls: type[torch.optim.Optimizer]):
        """scvi-tools' optimiser and settings, with the fused implementation (one pass per parameter per step)."""
        return lambda params: optimizer_cls(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=True
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one minibatch; its per-cell terms go into the epoch's totals."""
        _, _, output = self.forward(batch, loss_kwargs={"kl_weight": self.kl_weight})
        self._train_totals.add(output)
        return output.loss

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training terms."""
        self._log_epoch(self._train_totals, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Score one minibatch of held-out cells."""
        _, _, output = self.forward(batch, loss_kwargs={"kl_weight": self.kl_weight})
        self._validation_totals.add(output)

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's mean held-out terms (``elbo_validation`` is what early stopping watches)."""
        if self._validation_totals.n_obs:
            means = self._validation_totals.means()
            self.log("validation_loss", means["elbo"], on_epoch=True, sync_dist=self._distributed)
        self._log_epoch(self._validation_totals, "validation")

    @property
    def _distributed(self) -> bool:
        return self.trainer.world_size > 1

    def _log_epoch(self, totals: _EpochTotals, stage: str) -> None:
        if self._distributed:
            totals.sum_over_processes(self.trainer.strategy, self.device)
        if totals.n_obs:
            means = totals.means()
            check_finite_loss(
                float(means["elbo"]),
                stage="training" if stage == "train" else stage,
                epoch=self.current_epoch,
                lr=self.lr,
            )
            for name, value in means.items():
                # already summed over processes: syncing averages equal values and silences Lightning's warning
                self.log(f"{name}_{stage}", value, on_epoch=True, prog_bar=name == "elbo", sync_dist=self._distributed)
        totals.reset()
