r"""Adam's learning rate rises linearly over the first steps of training, in both backends.

The encoders read :math:`\log(1 + x)`, which is never negative. Early in training the gradient of one hidden unit's
weights has the same sign for nearly every gene, and Adam's first steps move every weight by about the learning rate
in that direction, so a single step can shift the unit's input by the learning rate times the sum of a cell's
:math:`\log(1 + x)` (hundreds) and leave it below zero for every cell: the ReLU unit is dead for good. At the
default learning rate (1.2e-2 at 512 cells per batch) the first step killed about half of the mean encoder's 128
units and the first two epochs nearly all of them: on PBMC 3k split into two batches 2 of the 128 survived, a third
of the cells (857 of 2,700) had none active, so they all got one and the same embedding, and the embedding had rank
2. Rising from a small step over the first 100 steps, the gradients lose that common sign before the steps grow: no
cell lost all its units and the embedding kept its 10 dimensions (the *Batches* page of the documentation has the
scores and held-out ELBOs).
"""

from __future__ import annotations

from collections.abc import Iterable

from myvae._checks import check_non_negative_int

__all__ = ["LR_WARMUP_STEPS", "check_warmup_steps", "warm_up_learning_rate"]

LR_WARMUP_STEPS = 100
"""Optimiser steps over which the learning rate rises linearly to its value (the training plans' default)."""


def check_warmup_steps(warmup_steps: object) -> None:
    """Refuse, with an :class:`~myvae.InputError`, a warm-up that is not a number of optimiser steps of at least 0."""
    check_non_negative_int(warmup_steps, "lr_warmup_steps", " (optimiser steps; 0 turns the warm-up off)")


def warm_up_learning_rate(param_groups: Iterable[dict], target_lrs: list[float], step: int, warmup_steps: int) -> None:
    """Set each parameter group's learning rate for optimiser step ``step`` (counted from 0).

    During the first ``warmup_steps`` steps it is ``(step + 1) / warmup_steps`` of the group's target learning rate
    (the last of them takes the target itself); after that nothing is touched, so that a learning-rate schedule of
    the user's takes over.

    Parameters
    ----------
    param_groups
        The optimiser's parameter groups.
    target_lrs
        The learning rate each group rises to, in the same order.
    step
        Number of optimiser steps taken so far.
    warmup_steps
        Length of the warm-up; 0 leaves the learning rates alone.
    """
    if step >= warmup_steps:
        return
    fraction = (step + 1) / warmup_steps
    for group, target in zip(param_groups, target_lrs, strict=True):
        group["lr"] = target * fraction
