"""The errors myvae raises on purpose: each message names the problem and the fix."""

from __future__ import annotations

__all__ = ["InputError", "TrainingDivergedError"]


class InputError(ValueError):
    """Raised when the data or an argument cannot be used; the message names the problem and the fix.

    It is a :class:`ValueError`, so ``except ValueError`` catches it too.
    """


class TrainingDivergedError(RuntimeError):
    """Raised when training diverges (the ELBO becomes NaN or infinite); the message says what to change.

    Nothing is written to the data: :func:`myvae.tl.myvae` writes its results only after training succeeded.
    """
