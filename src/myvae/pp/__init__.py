"""Preprocessing: check and record the count data."""

from ._setup_counts import setup_counts

__all__ = ["setup_counts"]
