"""The simple scVI model in Pyro: ``model`` and ``guide``, with the ELBO formed by Pyro's SVI."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from scvi import REGISTRY_KEYS
from scvi.module.base import PyroBaseModuleClass

from myvae._docs import doc_params

from ._base import SharedNetworksMixin, batch_of, observed_library
from ._networks import SIZES_DOC, counts_for, kl_to_standard_normal

__all__ = ["PyroVAEModule"]


@doc_params(sizes=SIZES_DOC)
class PyroVAEModule(SharedNetworksMixin, PyroBaseModuleClass):
    r"""The simple scVI model as an scvi-tools :class:`~scvi.module.base.PyroBaseModuleClass`.

    ``model`` and ``guide`` share the networks of :class:`~myvae.module.TorchVAEModule`. Every site of the cell
    plate is scaled by :math:`1/N` (minibatch size), so Pyro's mean-field ELBO
    (:class:`~pyro.infer.TraceMeanField_ELBO`, analytic KL) equals the PyTorch module's loss for the same weights
    and the same random draw. The latent site is also scaled by the KL weight :math:`w` in both ``model`` and
    ``guide``, which scales the analytic KL term; a guide run with :math:`w \neq 1` keeps that term, unweighted and
    summed over the minibatch's cells, as ``unweighted_kl_sum`` (a tensor), from which the training plan logs the
    full ELBO.

    Parameters
    ----------
    {sizes}
    """

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters (scvi-tools' model methods read it, as on its PyTorch modules)."""
        return next(self.parameters()).device

    @staticmethod
    def _get_fn_args_from_batch(tensor_dict: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], dict]:
        x = tensor_dict[REGISTRY_KEYS.X_KEY]
        return (x, observed_library(x), batch_of(tensor_dict)), {}

    @property
    def model(self) -> Callable[..., None]:
        r"""The generative model :math:`p(x, z \mid l)`."""
        return self._model

    @property
    def guide(self) -> Callable[..., None]:
        r"""The amortised guide :math:`q(z \mid x)`."""
        return self._guide

    def _cell_plate(self, x: torch.Tensor):
        return pyro.plate("cells", size=x.shape[0], dim=-1)

    def _model(
        self, x: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None, kl_weight: float = 1.0
    ) -> None:
        pyro.module("myvae_networks", self.networks)
        n_cells = x.shape[0]
        with self._cell_plate(x), poutine.scale(scale=1.0 / n_cells):
            prior = self.networks.prior(torch.zeros(n_cells, self.networks.n_latent, device=x.device))
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", prior.to_event(1))
            px = self.likelihood(z, library, batch_index)
            pyro.sample("x", px.to_event(1), obs=counts_for(px, x))

    def _guide(
        self, x: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None, kl_weight: float = 1.0
    ) -> None:
        pyro.module("myvae_networks", self.networks)
        posterior = self.networks.posterior(x)
        if kl_weight != 1.0:
            self.unweighted_kl_sum = kl_to_standard_normal(posterior).sum().detach()
        with self._cell_plate(x), poutine.scale(scale=1.0 / x.shape[0]), poutine.scale(scale=kl_weight):
            pyro.sample("z", posterior.to_event(1))

    def on_load(self, model, **kwargs) -> None:
        """Nothing to rebuild on load: every parameter lives in ``networks``, restored from the state dict."""
