"""Random states: the seed a ``random_state`` argument stands for, and a block that leaves the caller's state alone.

scvi-tools seeds through ``scvi.settings.seed``, whose setter seeds every generator of the session (NumPy's global
state, :mod:`random`, torch on the CPU and every GPU) and sets a few environment variables and cuDNN flags.
:func:`seeded` gives a block that seed and puts everything back afterwards (:func:`preserved_random_state`), so
that a call's results depend only on its ``random_state`` and the caller's draws after the call are those they
would have been without it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scvi
import torch

from myvae._exceptions import InputError

__all__ = ["MAX_SEED", "RandomState", "preserved_random_state", "seed_from", "seeded"]

RandomState = int | np.random.Generator | np.random.RandomState | None
"""What a ``random_state`` argument takes, as in scanpy's tools."""
MAX_SEED = 2**32 - 1
"""Largest seed Lightning's ``seed_everything`` takes."""
_ENVIRONMENT = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "XLA_FLAGS")
"""Environment variables that seeding sets."""


def seed_from(random_state: Any) -> int:
    """The integer seed a ``random_state`` argument stands for.

    Parameters
    ----------
    random_state
        An integer (the seed itself, 0 to 2³² − 1), a :class:`numpy.random.Generator` or
        :class:`numpy.random.RandomState` (one seed is drawn from it, advancing it as scanpy's tools do), or
        ``None`` (a fresh seed from the operating system; the caller's global state is not drawn from).
    """
    if isinstance(random_state, bool):
        raise InputError(f"random_state must be None, an integer or a NumPy random generator, got {random_state!r}.")
    if isinstance(random_state, int | np.integer):
        if not 0 <= random_state <= MAX_SEED:
            raise InputError(f"random_state must be between 0 and {MAX_SEED} (2**32 - 1), got {random_state}.")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, MAX_SEED, endpoint=True))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, MAX_SEED, dtype=np.int64))
    if random_state is None:
        return int(np.random.default_rng().integers(0, MAX_SEED, endpoint=True))
    raise InputError(
        f"random_state must be None, an integer or a NumPy random generator (np.random.default_rng(0)), got "
        f"{type(random_state).__name__}."
    )


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Put the caller's random state back after the block, whatever the block drew or seeded.

    Restored: NumPy's global state, :mod:`random`'s, torch's CPU generator and every GPU's generator,
    ``scvi.settings.seed``, cuDNN's ``deterministic``/``benchmark`` flags and the environment variables that
    seeding sets.
    """
    numpy_state, python_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    scvi_seed = scvi.settings._seed
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    environment = {name: os.environ.get(name) for name in _ENVIRONMENT}
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        scvi.settings._seed = scvi_seed
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed everything with ``seed`` (through ``scvi.settings.seed``) for the block, then restore what was there.

    See :func:`preserved_random_state` for what is restored.
    """
    from myvae.model._quiet import quiet_training_logs  # "Seed set to …" is Lightning's chatter

    with preserved_random_state():
        with quiet_training_logs():
            scvi.settings.seed = seed
        yield
