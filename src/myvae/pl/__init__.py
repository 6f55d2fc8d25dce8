"""Plotting."""

from ._elbo import elbo

__all__ = ["elbo"]
