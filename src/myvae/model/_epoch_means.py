"""The per-epoch history both backends' training plans log: per-cell means of the loss over each epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._guards import check_finite_loss

__all__ = ["EpochMeansMixin", "EpochTotals"]


class EpochTotals:
    """Running sums, over the cells of one epoch, of the terms whose sum is the negative ELBO.

    The sums stay tensors on the device of the values added (no device synchronisation per step). Their means are
    per cell: every minibatch counts for the cells it holds, so a last minibatch smaller than the others is weighted
    correctly.

    Parameters
    ----------
    terms
        Names of the per-cell terms that add up to the negative ELBO, e.g. ``("reconstruction_loss", "kl_local")``;
        by default the negative ELBO alone, named ``"elbo"``.
    """

    def __init__(self, terms: Sequence[str] = ("elbo",)):
        self.terms = tuple(terms)
        self.reset()

    def reset(self) -> None:
        """Start a new epoch."""
        self.sums = {term: torch.zeros(()) for term in self.terms}
        self.n_obs = 0

    def add(self, n_obs: int, **sums: torch.Tensor | float) -> None:
        """Add one minibatch: its number of cells and each term summed over its cells."""
        for term, value in sums.items():
            value = torch.as_tensor(value).detach()
            self.sums[term] = self.sums[term].to(value.device) + value
        self.n_obs += n_obs

    def sum_over_processes(self, strategy, device: torch.device) -> None:
        """Replace the sums by those over every process training together (distributed training)."""
        totals = [*self.sums.values(), torch.tensor(float(self.n_obs))]
        stacked = torch.stack([total.to(device) for total in totals])
        *sums, n_obs = strategy.reduce(stacked, reduce_op="sum").cpu()
        self.sums = dict(zip(self.terms, sums, strict=True))
        self.n_obs = int(n_obs)

    def means(self) -> dict[str, torch.Tensor]:
        """Per-cell mean of each term, and of their sum under ``"elbo"``."""
        means = {term: total / self.n_obs for term, total in self.sums.items()}
        return {"elbo": sum(means.values()), **means}


class EpochMeansMixin:
    """Logs a Lightning training plan's history as per-cell means over each epoch.

    The plan calls :meth:`_init_epoch_totals` in its ``__init__`` and adds every minibatch to ``_train_totals``
    or ``_validation_totals``; at each epoch's end this logs ``elbo_<stage>`` and each term as ``<term>_<stage>``
    (the same keys as scvi-tools' :class:`~scvi.train.TrainingPlan`), plus ``validation_loss``, and raises
    :class:`~myvae.TrainingDivergedError` if the ELBO is not finite. Under distributed training the sums are taken
    over every process first.
    """

    def _init_epoch_totals(self, terms: Sequence[str] = ("elbo",)) -> None:
        self._train_totals = EpochTotals(terms)
        self._validation_totals = EpochTotals(terms)

    @property
    def _learning_rate(self) -> float | None:
        """The learning rate quoted when training diverges."""
        raise NotImplementedError

    @property
    def _distributed(self) -> bool:
        return self.trainer.world_size > 1

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training terms."""
        self._log_epoch(self._train_totals, "train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's mean held-out terms (``elbo_validation`` is what early stopping watches)."""
        if self._validation_totals.n_obs:
            means = self._validation_totals.means()
            self.log("validation_loss", means["elbo"], on_epoch=True, sync_dist=self._distributed)
        self._log_epoch(self._validation_totals, "validation")

    def _log_epoch(self, totals: EpochTotals, stage: str) -> None:
        if self._distributed:
            totals.sum_over_processes(self.trainer.strategy, self.device)
        if totals.n_obs:
            means = totals.means()
            check_finite_loss(
                float(means["elbo"]),
                stage="training" if stage == "train" else stage,
                epoch=self.current_epoch,
                lr=self._learning_rate,
            )
            for name, value in means.items():
                # already summed over processes: syncing averages equal values and silences Lightning's warning
                self.log(f"{name}_{stage}", value, on_epoch=True, prog_bar=name == "elbo", sync_dist=self._distributed)
        totals.reset()
