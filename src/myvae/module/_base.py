"""What the PyTorch and the Pyro module share: how a minibatch is read and how cells are encoded."""

from __future__ import annotations

import math

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import auto_move_data

from ._networks import VAENetworks, cell_log_likelihood
from ._sparse import repeat_rows, row_sums

__all__ = ["SharedNetworksMixin", "batch_of", "observed_library"]

_SCORED_AT_ONCE = 2**23
"""Cells × genes scored per pass of :meth:`SharedNetworksMixin.marginal_ll` (the draws of z for a minibatch are
decoded a few at a time, as many as keep each cells × genes array within this size)."""


def batch_of(tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The batch code of each cell of a minibatch (cells × 1), or ``None`` if the data have no batches."""
    return tensors.get(REGISTRY_KEYS.BATCH_KEY)


def observed_library(x: torch.Tensor) -> torch.Tensor:
    """The observed library size :math:`l_n`, the total count of each cell, as a column (cells × 1)."""
    return row_sums(x)


class SharedNetworksMixin:
    """Builds a module's :class:`VAENetworks` and gives it scvi-tools' ``inference`` interface on top of them.

    scvi-tools' :meth:`~scvi.model.base.VAEMixin.get_latent_representation` calls
    ``module.inference(**module._get_inference_input(tensors))`` and reads ``qz`` (a distribution) and ``z``.
    """

    def __init__(self, n_input: int, n_latent: int = 10, n_hidden: int = 128, n_batch: int = 1):
        super().__init__()
        self.networks = VAENetworks(n_input, n_latent=n_latent, n_hidden=n_hidden, n_batch=n_batch)

    def likelihood(
        self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> torch.distributions.Distribution:
        r"""The observation model :math:`p(x \mid z, l, s)`; override it to write a variant of the model.

        The default is :meth:`~myvae.module.VAENetworks.likelihood`, the negative binomial. Every use of the
        likelihood — the loss, Pyro's ``model``, posterior-predictive samples, :meth:`~myvae.MyVAE.get_elbo` — goes
        through here. ``batch_index`` (cells × 1) is given when the model has several batches.
        """
        return self.networks.likelihood(z, library, batch_index)

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
        outputs = self.inference(**self._get_inference_input(tensors), n_samples=n_samples)
        counts = self.likelihood(outputs["z"], outputs["library"], batch_of(tensors)).sample()
        return counts if n_samples == 1 else counts.permute(1, 2, 0)

    @torch.inference_mode()
    def negative_elbo_terms(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell reconstruction loss and KL divergence of a minibatch, with one draw of :math:`z`."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        outputs = self.inference(x)
        px = self.likelihood(outputs["z"], outputs["library"], batch_of(tensors))
        return self.networks.negative_elbo_terms(x, outputs["qz"], px)

    @torch.inference_mode()
    def marginal_ll(
        self, tensors: dict[str, torch.Tensor], n_mc_samples: int = 1000, return_mean: bool = False
    ) -> torch.Tensor | float:
        r"""Each cell's marginal log-likelihood :math:`\log p(x_n \mid l_n)`, by importance sampling from the encoder.

        With :math:`K` = ``n_mc_samples`` draws :math:`z_k \sim q(z \mid x_n)`, the estimate is
        :math:`\log \frac1K \sum_k p(x_n \mid z_k, l_n)\, p(z_k) / q(z_k \mid x_n)`, added up in double precision.
        Its expectation is a lower bound on :math:`\log p(x_n \mid l_n)` that is at least the ELBO and rises towards
        it as :math:`K` grows (the importance-weighted bound); with :math:`K = 1` it is a one-draw ELBO. The draws are
        decoded several at a time, the counts stacked once per draw.

        Parameters
        ----------
        tensors
            A minibatch as scvi-tools' data loaders give it.
        n_mc_samples
            Draws of :math:`z` per cell.
        return_mean
            Return the mean over the minibatch's cells (a float), as scvi-tools' modules do, instead of one value per
            cell.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        n_cells, n_genes = x.shape
        qz = self.networks.posterior(x)
        prior = self.networks.prior(qz.loc)
        library, batch_index = observed_library(x), batch_of(tensors)
        per_pass = max(1, min(n_mc_samples, _SCORED_AT_ONCE // max(1, n_cells * n_genes)))
        log_weights = []
        for first in range(0, n_mc_samples, per_pass):
            draws = min(per_pass, n_mc_samples - first)
            z = qz.sample((draws,))
            px = self.likelihood(
                z.reshape(draws * n_cells, -1),
                library.repeat(draws, 1),
                None if batch_index is None else batch_index.repeat(draws, 1),
            )
            log_px = cell_log_likelihood(px, repeat_rows(x, draws)).reshape(draws, n_cells)
            log_weights.append((log_px + prior.log_prob(z).sum(-1) - qz.log_prob(z).sum(-1)).double())
        estimate = torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(n_mc_samples)
        return estimate.mean().item() if return_mean else estimate

    @torch.inference_mode()
    def normalized_expression(
        self, tensors: dict[str, torch.Tensor], n_samples: int = 1, transform_batch: int | None = None
    ) -> torch.Tensor:
        r"""Posterior mean of the expression proportions :math:`\rho`, averaged over ``n_samples`` draws of z.

        With ``transform_batch`` (a batch code), every cell is decoded as if it came from that batch.
        """
        rho = self.expression_draws(tensors, n_samples=n_samples, transform_batch=transform_batch)
        return rho if n_samples == 1 else rho.mean(dim=0)

    @torch.inference_mode()
    def expression_draws(
        self, tensors: dict[str, torch.Tensor], n_samples: int = 1, transform_batch: int | None = None
    ) -> torch.Tensor:
        r"""The expression proportions :math:`\rho` for ``n_samples`` draws of z (a leading sample dimension if > 1).

        With ``transform_batch`` (a batch code), every cell is decoded as if it came from that batch.
        """
        outputs = self.inference(**self._get_inference_input(tensors), n_samples=n_samples)
        batch_index = batch_of(tensors)
        if transform_batch is not None and batch_index is not None:
            batch_index = torch.full_like(batch_index, transform_batch)
        return self.networks.log_rho(outputs["z"], batch_index).exp()

    @torch.inference_mode()
    def likelihood_parameters(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> dict[str, torch.Tensor]:
        r"""The mean :math:`l\rho` and inverse dispersion :math:`\theta` of :math:`p(x \mid z, l, s)` for draws of z.

        Both are cells × genes (with a leading sample dimension when ``n_samples > 1``), :math:`\theta` repeated for
        every cell. They are read from :meth:`likelihood` (its ``mean`` and ``log_theta``), so a module that
        overrides it gives its own.
        """
        outputs = self.inference(**self._get_inference_input(tensors), n_samples=n_samples)
        px = self.likelihood(outputs["z"], outputs["library"], batch_of(tensors))
        mean = px.mean
        return {"mean": mean, "dispersions": px.log_theta.exp().expand_as(mean)}
