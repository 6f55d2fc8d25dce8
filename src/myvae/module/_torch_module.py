"""The simple scVI model in plain PyTorch: the ELBO is written out, with the analytic KL divergence."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from myvae._docs import doc_params

from ._base import SharedNetworksMixin, batch_of
from ._networks import SIZES_DOC

__all__ = ["TorchVAEModule"]


@doc_params(sizes=SIZES_DOC)
class TorchVAEModule(SharedNetworksMixin, BaseModuleClass):
    r"""The simple scVI model as an scvi-tools :class:`~scvi.module.base.BaseModuleClass`.

    The loss of a minibatch is the negative ELBO per cell,

    .. math::

        -\frac{1}{N}\sum_n \Big(\mathbb E_{q(z_n \mid x_n)}[\log p(x_n \mid z_n, l_n)]
        - w\,\mathrm{KL}\big(q(z_n \mid x_n)\,\|\,p(z_n)\big)\Big),

    estimated with one reparameterised draw of :math:`z_n`; :math:`w` is the KL weight (1 for the ELBO).

    Parameters
    ----------
    {sizes}
    """

    def __init__(self, n_input: int, n_latent: int = 10, n_hidden: int = 128, n_batch: int = 1):
        super().__init__(n_input, n_latent=n_latent, n_hidden=n_hidden, n_batch=n_batch)

    def _get_generative_input(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"], "library": inference_outputs["library"], "batch_index": batch_of(tensors)}

    @auto_move_data
    def generative(
        self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> dict[str, torch.distributions.Distribution]:
        """The likelihood ``px`` of the counts given latent codes, library sizes and (if any) batches."""
        return {"px": self.likelihood(z, library, batch_index)}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        generative_outputs: dict[str, torch.distributions.Distribution],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO per cell, with the per-cell reconstruction loss and KL divergence for logging."""
        reconstruction_loss, kl_local = self.networks.negative_elbo_terms(
            tensors[REGISTRY_KEYS.X_KEY], inference_outputs["qz"], generative_outputs["px"]
        )
        loss = torch.mean(reconstruction_loss + kl_weight * kl_local)
        return LossOutput(loss=loss, reconstruction_loss=reconstruction_loss, kl_local=kl_local)
