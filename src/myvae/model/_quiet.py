"""Keep Lightning's and scvi-tools' routine chatter out of a notebook while leaving real warnings visible."""

from __future__ import annotations

import builtins
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scvi.train import _trainrunner

__all__ = ["quiet_training_logs"]

_CHATTY_LOGGERS = (
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
    "scvi.model.base._base_model",  # "Input AnnData not setup with scvi-tools. attempting to transfer…"
)
_NOISE = (
    r"The number of training batches .* is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*does not have many workers which may be a bottleneck.*",
    # scvi-tools warns for BatchNorm's sake; the networks here have no BatchNorm, so a one-cell batch is fine
    r"Last batch will have a small size of 1 samples",
    # Pyro's notice of a NaN loss: a diverging run ends in TrainingDivergedError, which says so with the fix
    r"Encountered NaN",
)


_SCVI_EXCEPTION_PRINT = "Exception raised during training."
"""What scvi-tools' ``TrainRunner`` prints to stdout before re-raising any error from training."""


def _print_but_scvi_exception_notice(*values: Any, **kwargs: Any) -> None:
    if values and values[0] == _SCVI_EXCEPTION_PRINT:
        return  # the error itself follows, with its own message
    builtins.print(*values, **kwargs)


_PRINTS = {_trainrunner: _print_but_scvi_exception_notice}
"""scvi-tools' modules that print to stdout, and what their ``print`` does instead while training."""


@contextmanager
def quiet_training_logs() -> Iterator[None]:
    """Silence informational messages ("GPU available…", tips, setup transfer) and known harmless warnings.

    Also keeps scvi-tools' ``TrainRunner`` from printing "Exception raised during training. <class 'NameError'> …"
    before an error from training (a divergence, an interrupt) reaches the caller with its own message. (Why
    training stopped early, and which epoch's weights were restored, go to scanpy's logging at info level from
    :mod:`myvae.model._early_stopping` and :mod:`myvae.model._best_epoch`.)
    """
    shadowed = {module: module.__dict__.get("print") for module in _PRINTS}
    for module, replacement in _PRINTS.items():
        module.print = replacement
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for module, previous in shadowed.items():
            if previous is None:
                del module.print
            else:
                module.print = previous
