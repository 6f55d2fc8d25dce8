"""Modules: the simple scVI model's networks, likelihood and its PyTorch and Pyro implementations."""

from ._likelihood import NegativeBinomialMean, negative_binomial_log_prob
from ._networks import VAENetworks
from ._pyro_module import PyroVAEModule
from ._torch_module import TorchVAEModule

__all__ = ["NegativeBinomialMean", "PyroVAEModule", "TorchVAEModule", "VAENetworks", "negative_binomial_log_prob"]
