"""myvae: the simple scVI model with PyTorch and Pyro backends, behind scanpy-style calls."""

from importlib.metadata import version

from . import datasets, model, module, pl, pp, tl
from ._exceptions import InputError, TrainingDivergedError
from .model import MyVAE

__all__ = ["InputError", "MyVAE", "TrainingDivergedError", "datasets", "model", "module", "pl", "pp", "tl"]

__version__ = version("myvae")
