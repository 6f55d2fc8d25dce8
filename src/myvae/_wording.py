"""Counts of things in messages, in the right number: ``1 cell``, ``2 cells``."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str) -> str:
    """``n`` followed by ``noun``, or by its plural (``noun + "s"``) when ``n`` is not 1."""
    return f"{n} {noun if n == 1 else noun + 's'}"
