"""Data sets bundled with the package, read offline."""

from ._pbmc3k import pbmc3k

__all__ = ["pbmc3k"]
