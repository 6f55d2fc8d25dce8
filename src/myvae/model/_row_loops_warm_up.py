"""Load the compiled loops of the likelihood and the sparse first layer before the first epoch on the CPU."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from myvae.module import _likelihood, _sparse

__all__ = ["LoadRowLoops"]


class LoadRowLoops(Callback):
    """Before training on the CPU, load the compiled loops training runs.

    They are the row loops of the fused likelihood (see ``load_row_loops``) and the grouping of the sparse first
    layer's backward pass (``load_compiled_grouping``). Otherwise the first training step would pay for initialising
    Numba, and the first epoch would look slower than the others.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type != "cpu":
            return
        if _likelihood._ROW_LOOPS:
            _likelihood.load_row_loops()
        if _sparse._COMPILED_GROUPING:
            _sparse.load_compiled_grouping()
