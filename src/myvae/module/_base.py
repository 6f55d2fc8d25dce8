"""What the PyTorch and the Pyro module share: how a minibatch is read and how cells are encoded."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import auto_move_data

from ._networks import VAENetworks

__all__ = ["SharedNetworksMixin", "observed_library"]


def observed_library(x: torch.Tensor) -> torch.Tensor:
    """The observed library size :math:`l_n`, the total count of each cell, as a column (cells × 1)."""
    return x.sum(dim=-1, keepdim=True)


class SharedNetworksMixin:
    """Builds a module's :class:`VAENetworks` and gives it scvi-tools' ``inference`` interface on top of them.

    scvi-tools' :meth:`~scvi.model.base.VAEMixin.get_latent_representation` calls
    ``module.inference(**module._get_inference_input(tensors))`` and reads ``qz`` (a distribution) and ``z``.
    """

    def __init__(self, n_input: int, n_latent: int = 10, n_hidden: int = 128):
        super().__init__()
        self.networks = VAENetworks(n_input, n_latent=n_latent, n_hidden=n_hidden)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor | torch.distributions.Normal]:
        """Encode counts: the posterior ``qz``, a reparameterised draw ``z`` and the observed ``library``.

        Parameters
        ----------
        x
            Counts, cells × genes.
        n_samples
            Number of draws of ``z``; with more than one, ``z`` gets a leading sample dimension.
        """
        qz = self.networks.posterior(x)
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        return {"qz": qz, "z": z, "library": observed_library(x)}
