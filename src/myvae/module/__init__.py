"""Modules: the simple scVI model's networks, likelihood and its PyTorch and Pyro implementations."""

from ._likelihood import (
    NegativeBinomialMean,
    NegativeBinomialSoftmax,
    negative_binomial_log_prob,
    negative_binomial_softmax_log_prob,
)
from ._networks import InputLayer, VAENetworks, cell_log_likelihood
from ._pyro_module import PyroVAEModule
from ._torch_module import TorchVAEModule

__all__ = [
    "InputLayer",
    "NegativeBinomialMean",
    "NegativeBinomialSoftmax",
    "PyroVAEModule",
    "TorchVAEModule",
    "VAENetworks",
    "cell_log_likelihood",
    "negative_binomial_log_prob",
    "negative_binomial_softmax_log_prob",
]
