"""Tools: train the model and embed cells."""

from ._myvae import myvae

__all__ = ["myvae"]
