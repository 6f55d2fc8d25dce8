"""The negative-binomial likelihood shared by the PyTorch and the Pyro modules."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch import Independent
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all, lazy_property
from torch.nn import functional as F

from . import _row_loops as row_loops
from ._nb_terms import (
    _SMALL_COUNTS,
    _ZERO_COUNT_REFINE_ABOVE,
    _gather,
    _large_means,
    _log_prob_at_counts,
    _logits_gradient_of_means,
    _softmax,
    _zero_count_gap,
)
from ._sparse import as_sparse_csr, is_sparse_csr, nonzero_entries, sums_per_row

__all__ = [
    "NegativeBinomialMean",
    "NegativeBinomialSoftmax",
    "negative_binomial_log_prob",
    "negative_binomial_softmax_log_prob",
]


_LOG_RATIO_LIMIT = 80.0
"""Above this bound on log(mu / theta) the fused likelihood hands over to the elementwise one (e^88 overflows)."""

_ROW_LOOPS = True
"""Whether the fused likelihood runs its passes over the genes as compiled loops on the CPU (``_row_loops``).

Elsewhere (and with this off, as some tests do to check it) it runs them as torch operations, with the same formulas.
"""


def negative_binomial_log_prob(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    r"""Elementwise log-probability of counts under a negative binomial given by its mean.

    .. math::

        \log p(x) = \log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1)
        + \theta \log\frac{\theta}{\theta + \mu} + x \log\frac{\mu}{\theta + \mu}

    Written this way, the terms cancel in floating point once :math:`\theta` is large against the count and the
    mean (near-Poisson genes), and in single precision the result and its gradient in :math:`\log\theta` become
    noise. This function evaluates the terms at the non-zero counts in double precision, with the log-gamma and
    digamma differences taken from Stirling's series where :math:`\theta` is large (see ``_log_prob_at_counts``),
    so in float32 it stays within about :math:`10^{-4}` of the exact value (relative to
    :math:`\max(1, |\log p|)`) for any :math:`\theta`, and so does its gradient. At :math:`x = 0` the
    log-probability is :math:`-\theta\,\mathrm{softplus}(\log\mu - \log\theta)`; the count-dependent terms are
    evaluated on the non-zero counts only, and the gradient is written out analytically.

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
    return _NegativeBinomialLogProb.apply(x, log_mu, log_theta, _wants_gradient(log_mu, log_theta))


def negative_binomial_softmax_log_prob(
    x: torch.Tensor, logits: torch.Tensor, log_library: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    r"""Log-probability of each cell's counts, summed over genes, under the model's negative binomial.

    The mean of gene :math:`g` in cell :math:`n` is :math:`\mu_{ng} = l_n \,\mathrm{softmax}(f_n)_g`. The result
    equals ``negative_binomial_log_prob(x, log_library + log_softmax(logits), log_theta).sum(-1)``, with the same
    precision, but the softmax, the likelihood and their gradients are computed together, in fewer passes over the
    cells × genes arrays: the sums over genes are matrix-vector products, and the gradient in ``logits`` is formed
    directly. It works with :math:`\mu/\theta`, which would overflow single precision for an inverse dispersion
    below about :math:`e^{-80}` times the library size; such inputs take the elementwise path instead.

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
    largest_log_ratio = float(log_library.detach().max()) - float(log_theta.detach().min())
    if largest_log_ratio > _LOG_RATIO_LIMIT:  # mu / theta could overflow
        log_mu = log_library + torch.log_softmax(logits, dim=-1)
        return negative_binomial_log_prob(x.to_dense() if is_sparse_csr(x) else x, log_mu, log_theta).sum(dim=-1)
    wants_gradient = _wants_gradient(logits, log_theta)
    if _ROW_LOOPS and row_loops.applies_to(logits, log_library, log_theta):
        x = as_sparse_csr(x)
        return _RowLoopsNegativeBinomialSoftmaxLogProb.apply(x, logits, log_library, log_theta, wants_gradient)
    return _NegativeBinomialSoftmaxLogProb.apply(x, logits, log_library, log_theta, wants_gradient)


def load_row_loops() -> None:
    """Load the compiled row loops for single precision now (compiling them if they are not cached yet).

    A process's first call of a Numba-compiled function initialises Numba (about 0.1 s here); the model's training
    calls this before its first epoch, so that the cost falls outside the epochs and is paid once per process.
    """
    x = as_sparse_csr(torch.tensor([[1.0, 0.0, 20.0], [0.0, 2.5, 0.0]]))  # each kind of count the loops look up
    logits, log_theta = torch.zeros(2, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    negative_binomial_softmax_log_prob(x, logits, torch.zeros(2, 1), log_theta).sum().backward()


def _wants_gradient(*tensors: torch.Tensor) -> bool:
    """Whether a backward pass may follow, so that the forward pass should keep what it needs."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _NegativeBinomialLogProb(torch.autograd.Function):
    r"""Forward and analytic backward of :func:`negative_binomial_log_prob`.

    With :math:`u = \log\mu - \log\theta` and :math:`p = \mu / (\theta + \mu) = \sigma(u)`, the log-probability at
    a zero count is :math:`-\theta\,\mathrm{softplus}(u)`, its derivative in :math:`\log\mu` is :math:`-\theta p`
    and in :math:`\log\theta` it is :math:`\theta\,(p - \mathrm{softplus}(u))` (see :func:`_zero_count_gap`).
    At the non-zero counts all three come from ``_log_prob_at_counts``.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor, wants_gradient: bool
    ) -> torch.Tensor:
        shape = torch.broadcast_shapes(x.shape, log_mu.shape, log_theta.shape)
        theta = log_theta.exp()
        u = (log_mu - log_theta).expand(shape).contiguous()
        softplus_u = F.softplus(u)
        out = (softplus_u * theta).neg_()
        counts = x.expand(shape).reshape(-1)
        at = torch.nonzero(counts).squeeze(-1)  # the non-zero counts in the flattened arrays
        x_at, log_mu_at = counts.index_select(0, at), _gather(log_mu, shape, at)
        if log_theta.shape == shape[-1:]:  # one inverse dispersion per gene
            at_counts = _log_prob_at_counts(x_at, log_mu_at, log_theta, at % log_theta.numel(), wants_gradient)
        else:
            at_counts = _log_prob_at_counts(x_at, log_mu_at, _gather(log_theta, shape, at), None, wants_gradient)
        out.view(-1).index_copy_(0, at, at_counts.log_prob)
        if wants_gradient:
            ctx.save_for_backward(u, softplus_u, log_mu, theta, at, at_counts.d_log_mu, at_counts.d_log_theta)
            ctx.shapes = (shape, log_mu.shape, log_theta.shape)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, torch.Tensor | None, None]:
        u, softplus_u, log_mu, theta, at, d_log_mu_at, d_log_theta_at = ctx.saved_tensors
        shape, log_mu_shape, log_theta_shape = ctx.shapes
        p = torch.sigmoid(u)
        grad_log_mu = grad_log_theta = None
        if ctx.needs_input_grad[2]:
            d_log_theta = (p - softplus_u).mul_(theta)
            log_mu_2d = log_mu.expand(shape).reshape(-1, shape[-1] if shape else 1)
            refine = _large_means(log_mu_2d, math.log(_ZERO_COUNT_REFINE_ABOVE))
            if refine.numel():
                gap = _zero_count_gap(u.view(-1)[refine].exp())
                d_log_theta.view(-1).index_copy_(0, refine, gap.mul_(_gather(theta, shape, refine)).neg_())
            d_log_theta.view(-1).index_copy_(0, at, d_log_theta_at)
            grad_log_theta = (grad * d_log_theta).sum_to_size(log_theta_shape)
        if ctx.needs_input_grad[1]:
            d_log_mu = (p * theta).neg_()
            d_log_mu.view(-1).index_copy_(0, at, d_log_mu_at)
            grad_log_mu = (grad * d_log_mu).sum_to_size(log_mu_shape)
        return None, grad_log_mu, grad_log_theta, None


class _NegativeBinomialSoftmaxLogProb(torch.autograd.Function):
    r"""Forward and analytic backward of :func:`negative_binomial_softmax_log_prob`.

    With :math:`\rho = \mathrm{softmax}(f)`, :math:`\mu_g = l \rho_g` and :math:`r_g = \mu_g / \theta_g`,
    a cell's log-probability is :math:`-\sum_g \theta_g \log(1 + r_g)` over its zero counts (a matrix-vector
    product, with the non-zero counts' entries set to zero) plus ``_log_prob_at_counts`` over its non-zero counts.
    With :math:`p = r/(1 + r)` and :math:`q = 1/(1 + r)` (both precise, whatever :math:`r`), the derivative in
    :math:`\log\mu_g` is :math:`a_g - \theta_g p_g` with :math:`a_g = x_g \theta_g / (\theta_g + \mu_g)` (zero at
    zero counts), so with :math:`\theta_g p_g = \mu_g q_g` the gradient in the logits is

    .. math::

        a_g - \rho_g \sum_h a_h + l \rho_g \Big(p_g - \sum_h \rho_h p_h\Big)

    (using :math:`\sum_h \rho_h = 1`). Written as :math:`g - \rho \sum g` instead, two terms of the size of the
    library would cancel once :math:`\theta` is large. Beyond the softmax, one ``log1p`` per entry is the only
    transcendental function evaluated on the cells × genes arrays. The counts are only read at their non-zero
    entries, so they may come as a sparse CSR tensor.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        logits: torch.Tensor,
        log_library: torch.Tensor,
        log_theta: torch.Tensor,
        wants_gradient: bool,
    ) -> torch.Tensor:
        rows, cols, counts = nonzero_entries(x)
        at = rows * logits.shape[-1] + cols  # the non-zero counts in the flattened cells x genes arrays
        rho, log_normaliser = _softmax(logits)
        log_mu_at = (
            logits.view(-1).index_select(0, at).add_((log_library - log_normaliser).view(-1).index_select(0, rows))
        )
        theta = log_theta.exp()
        ratio = torch.mul(rho, log_library.exp()).mul_(theta.reciprocal())  # mu / theta
        at_counts = _log_prob_at_counts(counts, log_mu_at, log_theta, cols, wants_gradient)
        # log(1 + mu / theta) at the zero counts, and minus the log-probability over theta at the others
        theta_at = theta.index_select(0, cols)
        terms = torch.log1p(ratio)
        terms.view(-1).index_copy_(0, at, at_counts.log_prob.div_(theta_at).neg_())
        out = torch.mv(terms, theta).neg_()
        if wants_gradient:
            # the backward pass multiplies the derivative in log theta by theta after summing
            d_log_theta_over_theta_at = at_counts.d_log_theta.div_(theta_at)
            count_share_sum = sums_per_row(x, at_counts.count_share)
            saved = (rho, ratio, terms, log_library, theta, rows, at)
            ctx.save_for_backward(*saved, d_log_theta_over_theta_at, at_counts.count_share, count_share_sum)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, None, torch.Tensor | None, None]:
        (
            rho,
            ratio,
            log1p_ratio,
            log_library,
            theta,
            rows,
            at,
            d_log_theta_over_theta_at,
            count_share,
            count_share_sum,
        ) = ctx.saved_tensors  # log1p_ratio is only that at the zero counts
        q = ratio.add(1.0).reciprocal_()
        p = ratio * q
        grad_logits = grad_log_theta = None
        if ctx.needs_input_grad[3]:
            d_log_theta_over_theta = p - log1p_ratio
            refine = _large_means(ratio, _ZERO_COUNT_REFINE_ABOVE / theta)
            if refine.numel():
                gap = _zero_count_gap(ratio.view(-1)[refine])
                d_log_theta_over_theta.view(-1).index_copy_(0, refine, gap.neg_())
            d_log_theta_over_theta.view(-1).index_copy_(0, at, d_log_theta_over_theta_at)
            grad_log_theta = torch.mv(d_log_theta_over_theta.T, grad).mul_(theta)
        if ctx.needs_input_grad[1]:
            grad_library = grad * log_library.squeeze(-1).exp()
            grad_logits = _logits_gradient_of_means(p, q, rho, grad_library, grad * count_share_sum)
            grad_logits.view(-1).index_add_(0, at, count_share * grad.index_select(0, rows))
        return None, grad_logits, None, grad_log_theta, None


class _RowLoopsNegativeBinomialSoftmaxLogProb(torch.autograd.Function):
    r""":class:`_NegativeBinomialSoftmaxLogProb` with its passes over the genes as compiled loops (CPU, CSR counts).

    :mod:`myvae.module._row_loops` forms, one cell at a time, the softmax, :math:`\log(1 + \mu/\theta)` and its
    sum over the zero counts (single precision), reads the logits at the counts, forms the log-gamma and digamma
    terms there (from per-gene tables, or one count at a time beyond them), adds up each cell's log-probability and
    forms both gradients. Torch takes :math:`\mu` and :math:`\log(1 + \mu/\theta)` at the non-zero counts, in
    double precision. The backward pass forms :math:`\mu/\theta` again from the softmax instead of keeping it.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        logits: torch.Tensor,
        log_library: torch.Tensor,
        log_theta: torch.Tensor,
        wants_gradient: bool,
    ) -> torch.Tensor:
        crow, col, counts = x.crow_indices(), x.col_indices(), x.values()
        logits, log_library = logits.contiguous(), log_library.reshape(-1).contiguous()
        view = row_loops.numpy_view
        peak = logits.amax(dim=-1)
        theta = log_theta.exp()
        inverse_theta = theta.reciprocal()
        rho, log1p_ratio = torch.empty_like(logits), torch.empty_like(logits)
        zero_count_sums = logits.new_empty(logits.shape[:1], dtype=torch.float64)
        log_mu_at, log1p_ratio_at, zero_count_derivative_at = (
            counts.new_empty(counts.shape, dtype=torch.float64) for _ in range(3)
        )
        row_loops.softmax_rows(
            view(logits), view(peak), view(log_library), view(inverse_theta), view(theta), view(log_theta),
            view(crow), view(col), _ZERO_COUNT_REFINE_ABOVE,
            view(rho), view(log1p_ratio), view(zero_count_sums), view(log_mu_at), view(log1p_ratio_at),
            view(zero_count_derivative_at),
        )  # fmt: skip
        mu_at = log_mu_at.exp()
        log1p_ratio_at.exp_().log1p_()  # from log(mu / theta)
        theta_wide = log_theta.double().exp()
        log_gamma_table, digamma_table = (theta_wide.new_empty((theta.numel(), _SMALL_COUNTS)) for _ in range(2))
        row_loops.per_gene_tables(view(theta_wide), view(log_gamma_table), view(digamma_table))
        out, count_share_sum = logits.new_empty(logits.shape[:1]), logits.new_empty(logits.shape[:1])
        d_log_theta_at, count_share = (torch.empty_like(log_mu_at, dtype=logits.dtype) for _ in range(2))
        row_loops.count_terms_into_rows(
            view(zero_count_sums), view(theta_wide), view(log_theta), view(crow), view(col), view(counts),
            view(log_mu_at), view(mu_at), view(log1p_ratio_at), view(zero_count_derivative_at),
            view(log_gamma_table), view(digamma_table), wants_gradient,
            view(out), view(d_log_theta_at), view(count_share), view(count_share_sum),
        )  # fmt: skip
        if wants_gradient:
            saved = (rho, log1p_ratio, log_library, inverse_theta, theta, crow, col)
            ctx.save_for_backward(*saved, d_log_theta_at, count_share, count_share_sum)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, None, torch.Tensor | None, None]:
        rho, log1p_ratio, log_library, inverse_theta, theta, crow, col, *at_counts, count_share_sum = ctx.saved_tensors
        view = row_loops.numpy_view
        grad_logits = torch.empty_like(rho)
        grad_log_theta = torch.zeros(theta.shape, dtype=torch.float64)  # over theta, until multiplied below
        row_loops.row_gradients(
            view(rho), view(log1p_ratio), view(log_library), view(inverse_theta), view(theta), view(crow), view(col),
            *(view(t) for t in at_counts), view(grad.contiguous()), view(count_share_sum), _ZERO_COUNT_REFINE_ABOVE,
            view(grad_logits), view(grad_log_theta),
        )  # fmt: skip
        grad_log_theta = grad_log_theta.mul_(theta).to(theta.dtype) if ctx.needs_input_grad[3] else None
        return None, grad_logits if ctx.needs_input_grad[1] else None, None, grad_log_theta, None


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
