"""What keeps a failed training from going unnoticed or leaving the session in a bad state."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from myvae._exceptions import TrainingDivergedError

__all__ = ["check_finite_loss", "interrupts_stay_interrupts"]


def check_finite_loss(value: float, *, stage: str, epoch: int, lr: float | None) -> None:
    """Raise :class:`~myvae.TrainingDivergedError` if an epoch's (or step's) negative ELBO is not finite.

    Parameters
    ----------
    value
        The loss.
    stage
        ``"training"`` or ``"validation"``.
    epoch
        Epoch at which it happened (0-based).
    lr
        The learning rate in use, quoted in the advice.
    """
    if math.isfinite(value):
        return
    advice = f"lower the learning rate (lr={lr:g} now; try {lr / 10:g})" if lr else "lower the learning rate (lr=)"
    raise TrainingDivergedError(
        f"Training diverged in epoch {epoch + 1}: the {stage} ELBO became {value}. To train, {advice}, or check "
        "that the counts are raw counts (mv.pp.setup_counts). Nothing was written to the data."
    )


@contextmanager
def interrupts_stay_interrupts() -> Iterator[None]:
    """Let Ctrl+C during training surface as :class:`KeyboardInterrupt`, and keep Ctrl+C working afterwards.

    Lightning answers a :class:`KeyboardInterrupt` in ``fit`` by ignoring SIGINT from then on and calling
    :func:`sys.exit`; in a notebook that would leave the kernel deaf to later interrupts and report a
    :class:`SystemExit`. This restores the SIGINT handler and re-raises the interrupt.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        yield
    except SystemExit as exit_:
        if isinstance(exit_.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt("Training was interrupted; nothing was written to the data.") from None
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
