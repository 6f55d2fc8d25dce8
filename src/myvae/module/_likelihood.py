"""The negative-binomial likelihood shared by the PyTorch and the Pyro modules."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch import Independent
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all, lazy_property
from torch.nn import functional as F

from ._sparse import is_sparse_csr, nonzero_entries

__all__ = [
    "NegativeBinomialMean",
    "NegativeBinomialSoftmax",
    "negative_binomial_log_prob",
    "negative_binomial_softmax_log_prob",
]


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


def negative_binomial_softmax_log_prob(
    x: torch.Tensor, logits: torch.Tensor, log_library: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    r"""Log-probability of each cell's counts, summed over genes, under the model's negative binomial.

    The mean of gene :math:`g` in cell :math:`n` is :math:`\mu_{ng} = l_n \,\mathrm{softmax}(f_n)_g`. The result
    equals ``negative_binomial_log_prob(x, log_library + log_softmax(logits), log_theta).sum(-1)``, but the softmax,
    the likelihood and their gradients are computed together, in fewer passes over the cells × genes arrays: the
    sums over genes are matrix-vector products, and the gradient in ``logits`` is formed directly.

    Parameters
    ----------
    x
        Observed counts, cells × genes, dense or a sparse CSR tensor (no gradient flows to them).
    logits
        Decoder outputs :math:`f_n`, cells × genes.
    log_library
        Log library sizes :math:`\log l_n`, cells × 1 (no gradient flows to them).
    log_theta
        Log inverse dispersion per gene.

    Returns
    -------
    One log-probability per cell.
    """
    return _NegativeBinomialSoftmaxLogProb.apply(x, logits, log_library, log_theta)


def _log_gamma_terms(x_nz: torch.Tensor, theta_nz: torch.Tensor, log_gamma_theta_nz: torch.Tensor) -> torch.Tensor:
    r"""The :math:`\log\Gamma` part of the log-probability at non-zero counts, given :math:`\log\Gamma(\theta)` there.

    With one :math:`\theta` per gene, :math:`\log\Gamma(\theta)` is computed once per gene and gathered.
    """
    return torch.lgamma(x_nz + theta_nz) - log_gamma_theta_nz - torch.lgamma(x_nz + 1.0)


def _digamma_terms(x_nz: torch.Tensor, theta_nz: torch.Tensor, digamma_theta_nz: torch.Tensor) -> torch.Tensor:
    r"""Derivative in :math:`\log\theta` of :func:`_log_gamma_terms`, :math:`\theta(\psi(x+\theta) - \psi(\theta))`."""
    return theta_nz * (torch.digamma(x_nz + theta_nz) - digamma_theta_nz)


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
        out.index_put_(where, _log_gamma_terms(x_nz, theta_nz, torch.lgamma(theta_nz)), accumulate=True)
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
            digamma_terms = _digamma_terms(x_nz, theta_nz, torch.digamma(theta_nz))
            d_log_theta.index_put_(tuple(where), digamma_terms, accumulate=True)
            grad_log_theta = (grad * d_log_theta).sum_to_size(log_theta_shape)
        return None, grad_log_mu, grad_log_theta


class _NegativeBinomialSoftmaxLogProb(torch.autograd.Function):
    r"""Forward and analytic backward of :func:`negative_binomial_softmax_log_prob`.

    With :math:`u = \log\mu - \log\theta` and :math:`p = \sigma(u)` as in :class:`_NegativeBinomialLogProb`,
    a cell's log-probability is :math:`\sum_g \theta_g \log(1 - p_g)` (a matrix-vector product) plus, at its
    non-zero counts only, :math:`x_g \log p_g` and the :math:`\log\Gamma` terms. The gradient in
    :math:`\log\mu` is :math:`g = x(1 - p) - \theta p`, so the gradient in the logits is
    :math:`g - \rho \sum_g g` with :math:`\rho = \mathrm{softmax}(f)`. The counts are only read at their
    non-zero entries, so they may come as a sparse CSR tensor.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, logits: torch.Tensor, log_library: torch.Tensor, log_theta: torch.Tensor
    ) -> torch.Tensor:
        rows, cols, counts = nonzero_entries(x)
        log_rho = torch.log_softmax(logits, dim=-1)
        u = log_rho + log_library
        u.sub_(log_theta)
        theta = log_theta.exp()
        log_1mp = F.softplus(u).neg_()
        log_p = u.add_(log_1mp)
        theta_nz = theta[cols]
        at_counts = counts * log_p[rows, cols] + _log_gamma_terms(counts, theta_nz, torch.lgamma(theta)[cols])
        out = torch.mv(log_1mp, theta).index_add_(0, rows, at_counts)
        ctx.save_for_backward(log_rho, theta, log_1mp, log_p, rows, cols, counts, theta_nz)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, None, torch.Tensor | None]:
        log_rho, theta, log_1mp, log_p, rows, cols, counts, theta_nz = ctx.saved_tensors
        p = log_p.exp()
        p_nz = p[rows, cols]
        d_log_mu = p.mul_(theta.neg())
        d_log_mu.index_put_((rows, cols), counts * (1.0 - p_nz), accumulate=True)
        grad_logits = grad_log_theta = None
        if ctx.needs_input_grad[1]:
            grad_logits = torch.addcmul(d_log_mu, log_rho.exp(), d_log_mu.sum(dim=-1, keepdim=True), value=-1.0)
            grad_logits.mul_(grad.unsqueeze(-1))
        if ctx.needs_input_grad[3]:
            grad_log_theta = theta * torch.mv(log_1mp.T, grad) - torch.mv(d_log_mu.T, grad)
            digamma_terms = _digamma_terms(counts, theta_nz, torch.digamma(theta)[cols])
            grad_log_theta.index_add_(0, cols, digamma_terms * grad[rows])
        return None, grad_logits, None, grad_log_theta


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


class NegativeBinomialSoftmax(NegativeBinomialMean):
    r"""The model's observation model: a negative binomial with mean :math:`l_n \,\mathrm{softmax}(f_n)`.

    A :class:`NegativeBinomialMean` whose log mean, :math:`\log l_n + \mathrm{log\_softmax}(f_n)`, is formed only
    when it is asked for. Scored one cell at a time — :meth:`to_event` with the genes as the event, as both modules
    do — it uses :func:`negative_binomial_softmax_log_prob`, which is faster than summing the elementwise
    log-probabilities.

    Parameters
    ----------
    logits
        Decoder outputs :math:`f_n`, cells × genes.
    log_library
        Log library sizes :math:`\log l_n`, broadcastable against ``logits`` (cells × 1 in the model).
    log_theta
        Log inverse dispersion, broadcastable against ``logits`` (per gene in the model).
    validate_args
        Whether to validate arguments and observed values.
    """

    arg_constraints = {"logits": constraints.real, "log_library": constraints.real, "log_theta": constraints.real}

    def __init__(
        self,
        logits: torch.Tensor,
        log_library: torch.Tensor,
        log_theta: torch.Tensor,
        validate_args: bool | None = None,
    ):
        self.logits, self.log_library, self.log_theta = logits, log_library, log_theta
        batch_shape = torch.broadcast_shapes(logits.shape, log_library.shape, log_theta.shape)
        TorchDistribution.__init__(self, batch_shape, validate_args=validate_args)

    @lazy_property
    def log_mu(self) -> torch.Tensor:
        r"""The log mean :math:`\log l_n + \mathrm{log\_softmax}(f_n)`."""
        return (self.log_library + torch.log_softmax(self.logits, dim=-1)).expand(self.batch_shape)

    def expand(
        self, batch_shape: torch.Size, _instance: NegativeBinomialSoftmax | None = None
    ) -> NegativeBinomialSoftmax:
        """Broadcast the parameters to a larger batch shape (used by Pyro's plates)."""
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(NegativeBinomialSoftmax, _instance)
        # the library sizes and the per-gene dispersion keep their shapes (they broadcast), so that the expanded
        # distribution still scores cells with the fused likelihood
        new.logits = self.logits.expand(batch_shape)
        new.log_library, new.log_theta = self.log_library, self.log_theta
        TorchDistribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def to_event(self, reinterpreted_batch_ndims: int | None = None) -> Independent:
        """Treat the rightmost batch dimensions as one event; with one (the genes), log-probabilities are per cell."""
        if reinterpreted_batch_ndims == 1:
            return _CellCounts(self, 1)
        return super().to_event(reinterpreted_batch_ndims)

    def cell_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-probability of each cell's counts (the last dimension summed); ``value`` may be sparse CSR."""
        if self._validate_args:
            self._validate_sample(value.to_dense() if is_sparse_csr(value) else value)
        fused = (
            value.dim() == 2
            and value.shape == self.logits.shape
            and self.log_library.shape == (value.shape[0], 1)
            and self.log_theta.shape == value.shape[-1:]
        )
        if fused:
            return negative_binomial_softmax_log_prob(value, self.logits, self.log_library, self.log_theta)
        return self.log_prob(value.to_dense() if is_sparse_csr(value) else value).sum(dim=-1)


class _CellCounts(Independent):
    """The genes of a :class:`NegativeBinomialSoftmax` as one event, scored by its ``cell_log_prob``."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base_dist.cell_log_prob(value)
