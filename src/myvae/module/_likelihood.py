"""The negative-binomial likelihood shared by the PyTorch and the Pyro modules."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

__all__ = ["NegativeBinomialMean", "negative_binomial_log_prob"]


def negative_binomial_log_prob(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    r"""Elementwise log-probability of counts under a negative binomial given by its mean.

    .. math::

        \log p(x) = \log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1)
        + \theta \log\frac{\theta}{\theta + \mu} + x \log\frac{\mu}{\theta + \mu}

    Everything is computed in log space: :math:`\log(\theta + \mu)` is a ``logaddexp`` of the two logs, so neither
    a tiny mean nor a huge inverse dispersion loses precision. Single-cell counts are mostly zeros, and at
    :math:`x = 0` the three :math:`\log\Gamma` terms cancel, so they (and, in the gradient, their digamma
    derivatives) are evaluated on the non-zero counts only; the gradient is written out analytically.

    Parameters
    ----------
    x
        Observed counts (no gradient flows to them).
    log_mu
        Log of the mean :math:`\mu > 0`, broadcastable against ``x``.
    log_theta
        Log of the inverse dispersion :math:`\theta > 0`, broadcastable against ``x``.

    Returns
    -------
    The log-probabilities, with the broadcast shape of the inputs.
    """
    return _NegativeBinomialLogProb.apply(x, log_mu, log_theta)


def _log_gamma_terms(x_nz: torch.Tensor, theta_nz: torch.Tensor) -> torch.Tensor:
    r"""The :math:`\log\Gamma` part of the log-probability at non-zero counts."""
    return torch.lgamma(x_nz + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(x_nz + 1.0)


class _NegativeBinomialLogProb(torch.autograd.Function):
    r"""Forward and analytic backward of :func:`negative_binomial_log_prob`.

    With :math:`u = \log\mu - \log\theta` and :math:`p = \mu / (\theta + \mu) = \sigma(u)`:
    :math:`\log p = \log\sigma(u)`, :math:`\log(1 - p) = \log p - u`, the dense part of the
    log-probability is :math:`\theta \log(1 - p) + x \log p`, its derivative in :math:`\log\mu` is
    :math:`g = x - (x + \theta) p` and in :math:`\log\theta` it is :math:`\theta\log(1 - p) - g`, plus
    :math:`\theta(\psi(x + \theta) - \psi(\theta))` at the non-zero counts.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(x.shape, log_mu.shape, log_theta.shape)
        x = x.expand(shape)
        theta = log_theta.exp()
        u = log_mu - log_theta
        log_p = torch.nn.functional.logsigmoid(u)
        theta_log_1mp = theta * (log_p - u)
        out = torch.addcmul(theta_log_1mp, x, log_p)
        where = torch.nonzero(x, as_tuple=True)
        x_nz = x[where]
        theta_full = theta.expand(shape)
        theta_nz = theta_full[where]
        out.index_put_(where, _log_gamma_terms(x_nz, theta_nz), accumulate=True)
        ctx.save_for_backward(x, u, theta, theta_log_1mp, x_nz, theta_nz, *where)
        ctx.shapes = (log_mu.shape, log_theta.shape)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, torch.Tensor | None]:
        x, u, theta, theta_log_1mp, x_nz, theta_nz, *where = ctx.saved_tensors
        log_mu_shape, log_theta_shape = ctx.shapes
        d_log_mu = x - (x + theta) * torch.sigmoid(u)
        grad_log_mu = grad_log_theta = None
        if ctx.needs_input_grad[1]:
            grad_log_mu = (grad * d_log_mu).sum_to_size(log_mu_shape)
        if ctx.needs_input_grad[2]:
            d_log_theta = theta_log_1mp - d_log_mu
            digamma_terms = theta_nz * (torch.digamma(x_nz + theta_nz) - torch.digamma(theta_nz))
            d_log_theta.index_put_(tuple(where), digamma_terms, accumulate=True)
            grad_log_theta = (grad * d_log_theta).sum_to_size(log_theta_shape)
        return None, grad_log_mu, grad_log_theta


class NegativeBinomialMean(TorchDistribution):
    r"""Negative binomial parameterised by the log of its mean and of its inverse dispersion.

    It is a Pyro distribution (usable at a ``pyro.sample`` site) and a :class:`torch.distributions.Distribution`
    (usable in plain PyTorch), so both modules score counts with the same code,
    :func:`negative_binomial_log_prob`. The variance is :math:`\mu + \mu^2 / \theta`.

    Parameters
    ----------
    log_mu
        Log mean, e.g. ``log(library) + log_softmax(decoder(z))``.
    log_theta
        Log inverse dispersion, broadcastable against ``log_mu`` (per gene in the model).
    validate_args
        Whether to validate arguments and observed values.
    """

    arg_constraints = {"log_mu": constraints.real, "log_theta": constraints.real}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, log_mu: torch.Tensor, log_theta: torch.Tensor, validate_args: bool | None = None):
        self.log_mu, self.log_theta = broadcast_all(log_mu, log_theta)
        super().__init__(self.log_mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        r"""The mean :math:`\mu`."""
        return self.log_mu.exp()

    @property
    def variance(self) -> torch.Tensor:
        r"""The variance :math:`\mu + \mu^2/\theta`."""
        mu = self.mean
        return mu + mu.square() / self.log_theta.exp()

    def expand(self, batch_shape: torch.Size, _instance: NegativeBinomialMean | None = None) -> NegativeBinomialMean:
        """Broadcast the parameters to a larger batch shape (used by Pyro's plates)."""
        new = self._get_checked_instance(NegativeBinomialMean, _instance)
        batch_shape = torch.Size(batch_shape)
        new.log_mu = self.log_mu.expand(batch_shape)
        new.log_theta = self.log_theta.expand(batch_shape)
        super(NegativeBinomialMean, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-probability of observed counts, see :func:`negative_binomial_log_prob`."""
        if self._validate_args:
            self._validate_sample(value)
        return negative_binomial_log_prob(value, self.log_mu, self.log_theta)

    @torch.no_grad()
    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        r"""Draw counts as a Gamma-Poisson mixture: :math:`\lambda \sim \Gamma(\theta, \theta/\mu)`, then Poisson."""
        shape = self._extended_shape(sample_shape)
        theta = self.log_theta.exp().expand(shape)
        rate = (self.log_theta - self.log_mu).exp().expand(shape)
        poisson_rate = torch.distributions.Gamma(concentration=theta, rate=rate).sample()
        return torch.poisson(poisson_rate)
