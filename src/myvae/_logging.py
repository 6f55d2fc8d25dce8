"""Messages through scanpy's logging, so that ``sc.settings.verbosity`` governs them as it governs scanpy's own.

scanpy is imported when the first message is sent, not with :mod:`myvae`.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["info", "warning"]


def info(message: str, deep: str | None = None, *, time: datetime | None = None) -> datetime:
    """An info message (shown at ``sc.settings.verbosity >= 2``); ``time`` adds the time taken since then.

    ``deep`` adds details shown from ``verbosity >= 3`` (hint); ``{time_passed}`` in ``message`` places the time.

    Returns
    -------
    The time now, to pass as ``time`` to a later message.
    """
    from scanpy import logging as logg

    return logg.info(message, time=time, deep=deep)


def warning(message: str) -> datetime:
    """A warning (shown at ``sc.settings.verbosity >= 1``, scanpy's default)."""
    from scanpy import logging as logg

    return logg.warning(message)
