"""The networks of the simple scVI model, written once and shared by both modules."""

from __future__ import annotations

import torch
from pyro.distributions import Normal
from torch import nn
from torch.nn import functional as F

from myvae._docs import doc_params

from ._likelihood import NegativeBinomialSoftmax
from ._sparse import is_sparse_csr, sparse_linear

__all__ = [
    "SIZES_DOC",
    "InputLayer",
    "VAENetworks",
    "cell_log_likelihood",
    "counts_for",
    "kl_to_standard_normal",
    "one_hidden_layer_mlp",
]

SIZES_DOC = """
n_input
    Number of genes.
n_latent
    Dimension of the latent space.
n_hidden
    Width of the hidden layer of every network.
n_batch
    Number of batches the decoder is conditioned on; with one, it reads :math:`z` alone.
"""
"""The sizes every module and its networks are built with."""

VARIANCE_FLOOR = 1e-4
"""Added to the encoder's variance so that a collapsed ``exp`` never yields a zero scale."""


def one_hidden_layer_mlp(n_input: int, n_output: int, n_hidden: int, *, reads_counts: bool = False) -> nn.Sequential:
    """A fully connected network with one hidden ReLU layer (``Linear → ReLU → Linear``).

    Parameters
    ----------
    n_input
        Input size.
    n_output
        Output size.
    n_hidden
        Width of the hidden layer.
    reads_counts
        Whether the first layer reads the counts (an encoder's): it is then an :class:`~myvae.module.InputLayer`,
        which holds its weight gene by gene for the sparse product.
    """
    first = InputLayer(n_input, n_hidden) if reads_counts else nn.Linear(n_input, n_hidden)
    return nn.Sequential(first, nn.ReLU(), nn.Linear(n_hidden, n_output))


class InputLayer(nn.Module):
    r"""An encoder's first layer, :math:`x W^\top + b`, with its weight held gene by gene.

    It has :class:`~torch.nn.Linear`'s initialisation, ``weight`` (outputs × inputs, a view), ``bias`` and state
    dict, but its parameter is the transpose ``weight_t`` (inputs × outputs), contiguous: the sparse product reads
    one row of it per non-zero count (an ``embedding_bag``), its gradient comes out in
    the same layout, and neither the forward pass, the gradient accumulation nor the fused Adam step copies it.

    Parameters
    ----------
    in_features
        Number of inputs (genes).
    out_features
        Number of outputs.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        linear = nn.Linear(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight_t = nn.Parameter(linear.weight.detach().T.contiguous())
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The weight as :class:`~torch.nn.Linear` holds it, outputs × inputs (a view of ``weight_t``)."""
        return self.weight_t.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer applied to ``x`` (dense, or a sparse CSR tensor whose non-zero values alone are read)."""
        return _first_layer(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name, tensor in (("weight", self.weight), ("bias", self.bias)):
            destination[prefix + name] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        if prefix + "weight" in state_dict:  # load_state_dict hands each module its own copy of the dict
            state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").T
        super()._load_from_state_dict(state_dict, prefix, *args)


def counts_for(px: torch.distributions.Distribution, x: torch.Tensor) -> torch.Tensor:
    """The counts ``x`` in a form ``px`` can score: sparse CSR only for :class:`NegativeBinomialSoftmax`."""
    return x.to_dense() if is_sparse_csr(x) and not isinstance(px, NegativeBinomialSoftmax) else x


def cell_log_likelihood(px: torch.distributions.Distribution, x: torch.Tensor) -> torch.Tensor:
    r"""Log-likelihood of each cell's counts, :math:`\log p(x_n \mid z_n)`, with the genes as one event.

    Parameters
    ----------
    px
        The observation model: elementwise over cells × genes (as :meth:`VAENetworks.likelihood` and
        ``torch.distributions.Poisson`` are), or with the genes already as its event.
    x
        Counts, cells × genes, dense or a sparse CSR tensor.
    """
    x = counts_for(px, x)
    if px.event_shape:
        return px.log_prob(x)
    per_cell = px.to_event(1) if hasattr(px, "to_event") else torch.distributions.Independent(px, 1)
    return per_cell.log_prob(x)


def kl_to_standard_normal(qz: Normal) -> torch.Tensor:
    r"""KL divergence of a diagonal normal :math:`q(z)` from :math:`\mathcal N(0, I)`, summed over the last dimension.

    In closed form, :math:`\tfrac12 \sum_d (\mu_d^2 + \sigma_d^2 - 1 - \log\sigma_d^2)`: the same value as
    ``kl_divergence(qz, Normal(0, 1))``, in a few operations instead of a dozen.
    """
    variance = qz.scale.square()
    return (qz.loc.square() + variance - variance.log() - 1.0).sum(dim=-1).mul_(0.5)


def _first_layer(x: torch.Tensor, *layers: InputLayer) -> torch.Tensor:
    r"""The first layers of encoders that read the same counts, side by side: :math:`\log(1 + x) W^\top + b`.

    ``x`` is dense or a sparse CSR tensor; for the latter only its non-zero counts are read, once for all layers.
    """
    weights = [layer.weight_t for layer in layers]
    biases = [layer.bias for layer in layers]
    if is_sparse_csr(x):
        return sparse_linear(x, weights, biases, values=torch.log1p(x.values()))
    return torch.addmm(torch.cat(biases), torch.log1p(x), torch.cat(weights, dim=1))


@doc_params(sizes=SIZES_DOC)
class VAENetworks(nn.Module):
    r"""Encoder, decoder and gene-wise inverse dispersion of the simple scVI model.

    - :meth:`posterior`: :math:`q(z_n \mid x_n) = \mathcal N(\mu(\log(1 + x_n)), \sigma^2(\log(1 + x_n)))`,
      with one network for the mean and one (through ``exp``) for the variance;
    - :meth:`likelihood`: :math:`p(x_n \mid z_n, s_n) = \mathrm{NB}(l_n \rho_n, \theta)` with
      :math:`\rho_n = \mathrm{softmax}(f(z_n, s_n))` and :math:`\theta = \exp(\log\theta)` per gene.

    With several batches, the decoder :math:`f` also reads the cell's batch :math:`s_n` (one-hot), as in scVI, so
    the latent state need not encode it; the encoder does not see the batch.

    Parameters
    ----------
    {sizes}
    """

    def __init__(self, n_input: int, n_latent: int = 10, n_hidden: int = 128, n_batch: int = 1):
        super().__init__()
        self.n_input = n_input
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.z_mean_encoder = one_hidden_layer_mlp(n_input, n_latent, n_hidden, reads_counts=True)
        self.z_var_encoder = one_hidden_layer_mlp(n_input, n_latent, n_hidden, reads_counts=True)
        self.decoder = one_hidden_layer_mlp(n_latent + (n_batch if n_batch > 1 else 0), n_input, n_hidden)
        self.log_theta = nn.Parameter(torch.randn(n_input))

    def posterior(self, x: torch.Tensor) -> Normal:
        r"""The approximate posterior :math:`q(z \mid x)` of a minibatch of counts ``x`` (cells × genes).

        ``x`` may be dense or a sparse CSR tensor; for the latter the first layer reads only the non-zero counts.
        """
        mean_network, var_network = self.z_mean_encoder, self.z_var_encoder
        # the first layers of the two networks read the same input: one pass over its non-zero counts serves both
        hidden = _first_layer(x, mean_network[0], var_network[0]).relu()
        hidden_mean, hidden_var = hidden.split([mean_network[0].out_features, var_network[0].out_features], dim=-1)
        qz_m = mean_network[2](hidden_mean)
        qz_v = var_network[2](hidden_var).exp() + VARIANCE_FLOOR
        return Normal(qz_m, qz_v.sqrt(), validate_args=False)

    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        r"""The mean of :math:`q(z \mid x)` alone, as :meth:`posterior` computes it, without the variance network."""
        return self.z_mean_encoder[2](_first_layer(x, self.z_mean_encoder[0]).relu())

    def decode(self, z: torch.Tensor, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output (logits over genes) for latent codes ``z`` and, with several batches, their batch.

        Parameters
        ----------
        z
            Latent codes, cells × latent (with any leading sample dimensions).
        batch_index
            Batch code of each cell, cells × 1 (or cells); needed when there are several batches.
        """
        if self.n_batch == 1:
            return self.decoder(z)
        if batch_index is None:
            raise ValueError(f"The decoder was built for {self.n_batch} batches; pass each cell's batch_index.")
        one_hot = F.one_hot(batch_index.reshape(-1).long(), self.n_batch).to(z.dtype)
        return self.decoder(torch.cat([z, one_hot.expand(*z.shape[:-1], self.n_batch)], dim=-1))

    def log_rho(self, z: torch.Tensor, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        r"""Log of the expression proportions :math:`\rho = \mathrm{softmax}(f(z, s))` over genes."""
        return torch.log_softmax(self.decode(z, batch_index), dim=-1)

    def likelihood(
        self, z: torch.Tensor, library: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> NegativeBinomialSoftmax:
        r"""The observation model :math:`p(x \mid z, l, s)` for latent codes, observed library sizes and batches."""
        return NegativeBinomialSoftmax(
            self.decode(z, batch_index), torch.log(library), self.log_theta, validate_args=False
        )

    def prior(self, like: torch.Tensor) -> Normal:
        """The standard normal prior :math:`p(z)`, shaped like ``like``."""
        return Normal(torch.zeros_like(like), torch.ones_like(like), validate_args=False)

    def negative_elbo_terms(
        self, x: torch.Tensor, qz: Normal, px: torch.distributions.Distribution
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Per-cell reconstruction loss :math:`-\log p(x \mid z)` and analytic KL divergence to the prior."""
        reconstruction_loss = -cell_log_likelihood(px, x)
        return reconstruction_loss, kl_to_standard_normal(qz)
