"""Load the likelihood's compiled row loops before the first epoch when the model trains on the CPU."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from myvae.module import _likelihood

__all__ = ["LoadRowLoops"]


class LoadRowLoops(Callback):
    """Before training on the CPU, load the compiled row loops of the fused likelihood (see ``load_row_loops``).

    Otherwise the first training step would pay for initialising Numba, and the first epoch would look slower than
    the others.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cpu" and _likelihood._ROW_LOOPS:
            _likelihood.load_row_loops()
