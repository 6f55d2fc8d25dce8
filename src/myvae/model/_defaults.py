"""The training policy: every default of a training run, and the one place where those left open are filled in.

:meth:`myvae.MyVAE.train` resolves its arguments here (:meth:`TrainingSettings.resolve`) and keeps the result as
``model.training_settings_``, which :func:`myvae.tl.myvae` records; the parameter descriptions below are shared by
both docstrings. The measurements behind these values are in ``benchmarks/`` and on the performance page.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "ADAM_SETTINGS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT",
    "DEFAULT_EARLY_STOPPING_PATIENCE",
    "DEFAULT_TRAIN_SIZE",
    "ENCODING_BATCH_SIZE",
    "TrainingSettings",
    "default_learning_rate",
    "default_max_epochs",
]

DEFAULT_BATCH_SIZE = 512
"""Cells per minibatch unless told otherwise: large enough to keep the matrix products efficient."""
ENCODING_BATCH_SIZE = 2048
"""Cells per minibatch when :func:`myvae.tl.myvae` embeds the cells: only the encoder runs, so a large minibatch costs
little memory (a few MiB) and saves the per-minibatch work."""
DEFAULT_TRAIN_SIZE = 0.9
"""Fraction of the cells trained on; the others give the held-out ELBO."""
REFERENCE_LEARNING_RATE, REFERENCE_BATCH_SIZE = 3e-3, 128
"""Adam's learning rate at 128 cells per batch, from which :func:`default_learning_rate` scales: three times
scvi-tools' 1e-3, which reaches the same held-out ELBO in about half the epochs or fewer (``benchmarks/quality.py``).
"""
ADAM_SETTINGS = {"eps": 0.01, "weight_decay": 1e-6}
"""The rest of Adam's settings for both backends: scvi-tools' :class:`~scvi.train.TrainingPlan` defaults.

The large ``eps`` damps the steps of parameters whose gradients are small; Pyro's optimiser would otherwise use
torch's ``eps=1e-8`` and train the same model along a different path.
"""
DEFAULT_EARLY_STOPPING_PATIENCE = 10
"""Epochs without an improvement of the held-out ELBO (by ``DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT``) before
training stops."""
DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT = 0.003
"""Least gain over the best held-out ELBO, as a fraction of it, that counts as an improvement: 0.3%.

Past the point where the held-out ELBO comes within 1% of its best, it creeps up by tenths of a percent over tens
of epochs; counting only gains of 0.3% stops training there, at most twice the epochs it took to come within 1%
of the best, and the best epoch's weights are restored. The measurements (``benchmarks/quality.py``) are on the
"Batches" page of the documentation.
"""

MAX_EPOCHS_DOC = """
max_epochs
    Most passes over the training cells; ``None`` picks a number from the data size (400 for up to 20,000 cells,
    fewer for more cells, at least 20; :func:`~myvae.model.default_max_epochs`).
"""
LR_DOC = """
lr
    Adam's learning rate; ``None`` scales 3e-3 at 128 cells per batch (three times scvi-tools' 1e-3) linearly with
    ``batch_size`` (:func:`~myvae.model.default_learning_rate`), i.e. 1.2e-2 at the default 512. Both backends use
    scvi-tools' other Adam settings (``eps=0.01``, ``weight_decay=1e-6``) and raise the learning rate linearly to
    ``lr`` over the first 100 optimiser steps, which keeps the encoders' ReLU units from dying in the first steps
    (``plan_kwargs={"lr_warmup_steps": 0}`` turns that off).
"""
BATCH_SIZE_DOC = """
batch_size
    Cells per minibatch (512 by default: four times scvi-tools' default, for throughput).
"""
EARLY_STOPPING_DOC = """
early_stopping
    Stop once the held-out ELBO (``elbo_validation``) has reached a plateau: when it has not beaten its best by
    ``early_stopping_min_improvement`` of it for ``early_stopping_patience`` epochs. When training ends, stopped
    or at ``max_epochs``, the weights of the epoch with the best held-out ELBO are restored, so the model returned
    (and its embedding and metrics) is the best epoch's, not the last one's; ``False`` trains all ``max_epochs``
    and keeps the last epoch's weights.
early_stopping_patience
    Epochs without an improvement before training stops (10).
early_stopping_min_improvement
    Least gain over the best held-out ELBO, as a fraction of it, that counts as an improvement (0.003: 0.3%;
    0 counts any gain, as scvi-tools does). At least 0 and below 1.
"""
CALLBACKS_DOC = """
callbacks
    Lightning callbacks that watch the training (progress reports, interruptions); they do not shape the result
    and are not recorded.
"""


def default_learning_rate(batch_size: int) -> float:
    """Adam's learning rate for a batch size: 3e-3 at 128 cells, scaled linearly with the batch size.

    A larger batch takes fewer, less noisy steps per epoch; scaling the step size with it keeps the held-out ELBO
    reached in a given number of epochs (measured by ``benchmarks/train_throughput.py``).
    """
    return REFERENCE_LEARNING_RATE * batch_size / REFERENCE_BATCH_SIZE


def default_max_epochs(n_obs: int) -> int:
    """A number of epochs that gives about 8 million cell passes, between 20 and 400 epochs.

    Small data sets need many passes for the networks to converge; large ones converge within few epochs.
    """
    return min(400, max(20, round(8_000_000 / max(n_obs, 1))))


@dataclass(frozen=True)
class TrainingSettings:
    """Every argument of a training run that shapes its result, with the defaults filled in.

    Attributes
    ----------
    max_epochs
        Most passes over the training cells.
    lr
        Adam's learning rate.
    batch_size
        Cells per minibatch.
    train_size
        Fraction of the cells trained on.
    accelerator
        Lightning accelerator.
    devices
        Lightning devices.
    early_stopping
        Whether training stops once the held-out ELBO stops improving (and the best epoch's weights are restored).
    early_stopping_patience
        Epochs without improvement before it stops.
    early_stopping_min_improvement
        Least gain over the best held-out ELBO, as a fraction of it, that counts as an improvement.
    plan_kwargs
        Arguments of the training plan given by the user (``None``: none).
    trainer_kwargs
        Further arguments of the Lightning trainer.
    """

    max_epochs: int
    lr: float
    batch_size: int
    train_size: float
    accelerator: str
    devices: int | list[int] | str
    early_stopping: bool
    early_stopping_patience: int
    early_stopping_min_improvement: float
    plan_kwargs: dict | None
    trainer_kwargs: dict[str, Any]

    @classmethod
    def resolve(cls, n_obs: int, *, max_epochs: int | None, lr: float | None, **arguments: Any) -> TrainingSettings:
        """The settings of a run on ``n_obs`` cells: ``max_epochs`` and ``lr`` left at ``None`` get their defaults."""
        return cls(
            max_epochs=default_max_epochs(n_obs) if max_epochs is None else max_epochs,
            lr=default_learning_rate(arguments["batch_size"]) if lr is None else lr,
            **arguments,
        )

    def as_record(self) -> dict[str, Any]:
        """The settings as one flat dict, the trainer's arguments beside the others."""
        record = {field.name: getattr(self, field.name) for field in fields(self) if field.name != "trainer_kwargs"}
        return {**record, **self.trainer_kwargs}
