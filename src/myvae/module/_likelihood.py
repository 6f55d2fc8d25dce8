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

    Everything is computed in log space: :math:`\log(\theta + \mu)` is a ``logaddexp`` of the two logs,
    so neither a tiny mean nor a huge inverse dispersion loses precision.

    Parameters
    ----------
    x
        Observed counts.
    log_mu
        Log of the mean :math:`\mu > 0`, broadcastable against ``x``.
    log_theta
        Log of the inverse dispersion :math:`\theta > 0`, broadcastable against ``x``.

    Returns
    -------
    The log-probabilities, with the broadcast shape of the inputs.
    """
    theta = log_theta.exp()
    log_theta_plus_mu = torch.logaddexp(log_theta, log_mu)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (log_theta - log_theta_plus_mu)
        + x * (log_mu - log_theta_plus_mu)
    )


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
