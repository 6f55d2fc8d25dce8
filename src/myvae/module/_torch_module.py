"""The simple scVI model in plain PyTorch: the ELBO is written out, with the analytic KL divergence."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch.distributions import kl_divergence

from ._base import SharedNetworksMixin

__all__ = ["TorchVAEModule"]


class TorchVAEModule(SharedNetworksMixin, BaseModuleClass):
    r"""The simple scVI model as an scvi-tools :class:`~scvi.module.base.BaseModuleClass`.

    The loss of a minibatch is the negative ELBO per cell,

    .. math::

        -\frac{1}{N}\sum_n \Big(\mathbb E_{q(z_n \mid x_n)}[\log p(x_n \mid z_n, l_n)]
        - w\,\mathrm{KL}\big(q(z_n \mid x_n)\,\|\,p(z_n)\big)\Big),

    estimated with one reparameterised draw of :math:`z_n`; :math:`w` is the KL weight (1 for the ELBO).

    Parameters
    ----------
    n_input
        Number of genes.
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of the hidden layer of every network.
    """

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"], "library": inference_outputs["library"]}

    @auto_move_data
    def generative(self, z: torch.Tensor, library: torch.Tensor) -> dict[str, torch.distributions.Distribution]:
        """The likelihood ``px`` of the counts given latent codes and library sizes, and the prior ``pz``."""
        return {"px": self.networks.likelihood(z, library), "pz": self.networks.prior(z)}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.distributions.Distribution],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO per cell, with the per-cell reconstruction loss and KL divergence for logging."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        reconstruction_loss = -generative_outputs["px"].log_prob(x).sum(dim=-1)
        kl_local = kl_divergence(inference_outputs["qz"], generative_outputs["pz"]).sum(dim=-1)
        loss = torch.mean(reconstruction_loss + kl_weight * kl_local)
        return LossOutput(loss=loss, reconstruction_loss=reconstruction_loss, kl_local=kl_local)

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        r"""Posterior-predictive counts: draw :math:`z \sim q(z \mid x)`, then :math:`x' \sim p(x \mid z, l)`.

        Parameters
        ----------
        tensors
            A minibatch as scvi-tools' data loaders give it.
        n_samples
            Number of draws per cell.

        Returns
        -------
        Counts of shape cells × genes (``n_samples == 1``) or cells × genes × ``n_samples``.
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors), n_samples=n_samples)
        generative_outputs = self.generative(**self._get_generative_input(tensors, inference_outputs))
        counts = generative_outputs["px"].sample()
        return counts if n_samples == 1 else counts.permute(1, 2, 0)
