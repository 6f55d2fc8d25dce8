"""The stopping rule: training ends once the held-out ELBO has reached a plateau.

An epoch counts as an improvement only if its held-out ELBO beats the best so far by more than a fraction of the
best (a relative ``min_delta``); training stops after ``patience`` epochs without one. A fixed tolerance would not
fit every data set (the ELBO per cell ranges from a few hundred to thousands), a relative one does; and without a
tolerance, the long tail of tiny gains keeps training going for many epochs that change the model little.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from myvae import _logging
from myvae._checks import check_positive_int
from myvae._exceptions import InputError

__all__ = ["MONITOR", "PlateauStopping", "check_early_stopping"]

MONITOR = "elbo_validation"
"""The held-out negative ELBO per cell, which both training plans log every epoch (lower is better)."""


def check_early_stopping(early_stopping: Any, patience: Any, min_improvement: Any) -> None:
    """Refuse, with the fix, early-stopping settings out of range; before any work."""
    if not isinstance(early_stopping, bool):
        raise InputError(f"early_stopping must be True or False, got {early_stopping!r}.")
    check_positive_int(patience, "early_stopping_patience")
    valid = isinstance(min_improvement, Real) and not isinstance(min_improvement, bool)
    if not (valid and math.isfinite(min_improvement) and 0 <= min_improvement < 1):
        raise InputError(
            "early_stopping_min_improvement is a fraction of the best held-out ELBO, at least 0 and below 1 (e.g. "
            f"0.003 for 0.3%; 0 counts every gain), got {min_improvement!r}."
        )


class PlateauStopping(EarlyStopping):
    """Stop once the held-out ELBO has not improved by ``min_improvement`` of its best for ``patience`` epochs.

    Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` on ``elbo_validation``, its ``min_delta``
    recomputed every epoch as ``min_improvement`` times the best value so far. Why training stopped goes to
    scanpy's logging at info level.

    Parameters
    ----------
    patience
        Epochs without an improvement before training stops.
    min_improvement
        Least gain over the best held-out ELBO, as a fraction of it, that counts as an improvement.
    """

    def __init__(self, patience: int, min_improvement: float):
        super().__init__(monitor=MONITOR, mode="min", patience=patience, min_delta=0.0)
        self.min_improvement = min_improvement

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        best = float(self.best_score)
        # Lightning counts an epoch as better when ``current - min_delta < best``: a negative min_delta asks more
        self.min_delta = -self.min_improvement * abs(best) if math.isfinite(best) else 0.0
        return super()._evaluate_stopping_criteria(current)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str | None = None) -> None:
        """Say why training stopped (after the progress bar is gone)."""
        if self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
            _logging.info(
                f"    stopped after epoch {self.stopped_epoch + 1}: the held-out ELBO did not beat its best "
                f"({-float(self.best_score):.2f} per cell) by {self.min_improvement:.2%} in {self.patience} epochs"
            )
