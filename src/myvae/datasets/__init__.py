"""Data sets bundled with the package, read offline."""

from ._bundled import pbmc3k, pbmc_cite

__all__ = ["pbmc3k", "pbmc_cite"]
