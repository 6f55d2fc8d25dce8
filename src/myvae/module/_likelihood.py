"""The negative-binomial likelihood shared by the PyTorch and the Pyro modules."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch import Independent
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all, lazy_property
from torch.nn import functional as F

from ._sparse import is_sparse_csr, nonzero_entries

RemainderDifferences = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]
"""Given counts ``x``, ``n = x + theta`` and whether the second is wanted: sigma(n) - sigma(theta) and
tau(theta) - tau(n), see :func:`_remainder_differences`."""

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

    Written this way, the terms cancel in floating point once :math:`\theta` is large against the count and the
    mean (near-Poisson genes), and in single precision the result and its gradient in :math:`\log\theta` become
    noise. This function evaluates the same quantity as a sum of terms that are each no larger than the result
    (see :func:`_log_prob_at_counts`), so in float32 it stays within about :math:`10^{-4}` of the exact value
    (relative to :math:`\max(1, |\log p|)`) for any :math:`\theta`, and so does its gradient. At :math:`x = 0`
    the log-probability is :math:`-\theta\,\mathrm{softplus}(\log\mu - \log\theta)`; the count-dependent terms are
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
    directly.

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
    wants_gradient = _wants_gradient(logits, log_theta)
    return _NegativeBinomialSoftmaxLogProb.apply(x, logits, log_library, log_theta, wants_gradient)


def _wants_gradient(*tensors: torch.Tensor) -> bool:
    """Whether a backward pass may follow, so that the forward pass should keep what it needs."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# Below this |e|, e - log1p(e) is summed as a series; above it, the direct difference loses < 5 bits.
_GAP_SERIES_BELOW = 0.1
# From this argument on, the Stirling and digamma remainders are their asymptotic series.
_ASYMPTOTIC_FROM = 15.0
# At a zero count, theta * (p - softplus) cancels to an absolute error of about 2 eps * theta * p <= 2 eps * mu (6e-5
# in single precision at mu = 256); where mu exceeds 256, the backward pass evaluates it through _log1p_gap instead.
_LOG_ZERO_COUNT_REFINE_ABOVE = math.log(256.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Counts below this take their Stirling remainder from a table.
_COUNT_TABLE_SIZE = 2**16
# Series coefficients, enough of them for double precision (relative truncation error below 1e-15 in their
# ranges); single precision uses the first few (below 1e-8).
_GAP_SERIES = (2 / 3, 2 / 5, 2 / 7, 2 / 9, 2 / 11, 2 / 13)  # in w^2, times w^3
_STIRLING_SERIES = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188)  # in 1/z^2, times 1/z
_DIGAMMA_SERIES = (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132)  # in 1/z^2, times 1/z^2
_SINGLE_PRECISION_TERMS = {_GAP_SERIES: 2, _STIRLING_SERIES: 2, _DIGAMMA_SERIES: 3}


def _series(coefficients: tuple[float, ...], y: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_k c_k y^k` by Horner's rule, with as many terms as ``y``'s precision needs."""
    if torch.finfo(y.dtype).eps > 1e-10:
        coefficients = coefficients[: _SINGLE_PRECISION_TERMS[coefficients]]
    result = y * coefficients[-1]
    for c in coefficients[-2:0:-1]:
        result.add_(c).mul_(y)
    return result.add_(coefficients[0])


def _below(z: torch.Tensor, bound: float) -> torch.Tensor:
    """1 where ``z < bound`` and 0 elsewhere, in ``z``'s dtype."""
    return (bound - z).sign_().clamp_(min=0.0)


def _choose(condition: torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor) -> torch.Tensor:
    """``torch.where`` for a condition of ones and zeros and finite values, as arithmetic (faster on the CPU)."""
    return torch.addcmul(if_false, condition, if_true.sub_(if_false))


def _log1p_gap(e: torch.Tensor, log1p_e: torch.Tensor, with_log1p: bool = False):
    r""":math:`e - \log(1 + e) \ge 0` for :math:`e > -1`, precise also where it is tiny.

    ``log1p_e`` is only read where :math:`|e| \ge 0.1`, so it need only be precise there. Below, with
    :math:`w = e / (2 + e)` (so that :math:`\log(1 + e) = 2\,\mathrm{artanh}\,w`), the gap is the series
    :math:`e^2/(2 + e) - 2 (w^3/3 + w^5/5 + \dots)`. With ``with_log1p``, it also returns :math:`\log(1 + e)`,
    precise everywhere.
    """
    small = e.clamp(-_GAP_SERIES_BELOW, _GAP_SERIES_BELOW)
    w = small / (small + 2.0)
    w2 = w * w
    series = (small * w).sub_(w.mul_(w2).mul_(_series(_GAP_SERIES, w2)))  # small * w = small^2 / (2 + small)
    is_small = _below(e.abs(), _GAP_SERIES_BELOW)
    gap = _choose(is_small, series.clone() if with_log1p else series, e - log1p_e)
    if not with_log1p:
        return gap
    return gap, _choose(is_small, series.neg_().add_(e), log1p_e)


def _stirling_series(z: torch.Tensor) -> torch.Tensor:
    """The asymptotic series of :func:`_stirling_remainder`, precise from 15 on (``z`` is clamped there)."""
    r = 1.0 / z.clamp(min=_ASYMPTOTIC_FROM)
    return r * _series(_STIRLING_SERIES, r * r)


def _digamma_series(z: torch.Tensor) -> torch.Tensor:
    """The asymptotic series of :func:`_digamma_remainder`, precise from 15 on (``z`` is clamped there)."""
    r2 = z.clamp(min=_ASYMPTOTIC_FROM).square().reciprocal_()
    return r2 * _series(_DIGAMMA_SERIES, r2)


def _stirling_remainder(z: torch.Tensor) -> torch.Tensor:
    r""":math:`\sigma(z) = \log\Gamma(z + 1) - (z + \tfrac12)\log z + z - \tfrac12\log 2\pi`, about :math:`1/(12z)`."""
    small = z.clamp(max=_ASYMPTOTIC_FROM)
    direct = torch.lgamma(small + 1.0) - (small + 0.5) * torch.log(small) + (small - _HALF_LOG_2PI)
    return _choose(_below(z, _ASYMPTOTIC_FROM), direct, _stirling_series(z))


def _digamma_remainder(z: torch.Tensor) -> torch.Tensor:
    r""":math:`\tau(z) = \log z - 1/(2z) - \psi(z) = -\sigma'(z)`, about :math:`1/(12z^2)`."""
    small = z.clamp(max=_ASYMPTOTIC_FROM)
    direct = torch.log(small) - 0.5 / small - torch.digamma(small)
    return _choose(_below(z, _ASYMPTOTIC_FROM), direct, _digamma_series(z))


def _remainder_differences(theta: torch.Tensor) -> RemainderDifferences:
    r"""For :math:`n = x + \theta`: :math:`\sigma(n) - \sigma(\theta)` and :math:`\tau(\theta) - \tau(n)`."""

    def differences(x: torch.Tensor, n: torch.Tensor, with_digamma: bool):
        stirling = _stirling_remainder(n).sub_(_stirling_remainder(theta))
        return stirling, (_digamma_remainder(theta).sub_(_digamma_remainder(n)) if with_digamma else None)

    return differences


def _remainder_differences_per_gene(
    theta: torch.Tensor, log_theta: torch.Tensor, cols: torch.Tensor
) -> RemainderDifferences:
    r""":func:`_remainder_differences` for whole counts and one :math:`\theta` per gene, without lgamma or digamma.

    Where :math:`n = \theta + k < 15`, the count :math:`k` is below 15 and the differences are looked up in tables
    of :math:`k = 0, \dots, 14` for each gene, from :math:`\log\Gamma(\theta + k + 1) - \log\Gamma(\theta + 1) =
    \sum_{i=1}^k \log(\theta + i)` and :math:`\psi(\theta + k) - \psi(\theta) = \sum_{i<k} 1/(\theta + i)`; elsewhere
    :math:`\sigma(n)` and :math:`\tau(n)` are their asymptotic series. ``cols`` gives the gene of each count.
    """
    size = int(_ASYMPTOTIC_FROM)
    k = torch.arange(size, dtype=theta.dtype, device=theta.device)
    z = theta.unsqueeze(-1) + k
    log_z = z.log()
    log_theta = log_theta.unsqueeze(-1)
    theta_ = theta.unsqueeze(-1)
    stirling_table = (log_z.cumsum(-1) - log_theta).sub_((z + 0.5).mul_(log_z)).add_((theta_ + 0.5) * log_theta + k)
    inverse = z.reciprocal()
    digamma_table = (inverse.cumsum(-1) - inverse).sub_(log_z - log_theta).sub_(k / (2.0 * theta_ * z))
    stirling_theta = _stirling_remainder(theta).index_select(0, cols)
    digamma_theta = _digamma_remainder(theta).index_select(0, cols)

    def differences(x: torch.Tensor, n: torch.Tensor, with_digamma: bool):
        small = _below(n, _ASYMPTOTIC_FROM)
        at = cols * size + x.clamp(max=size - 1).long()
        stirling = _choose(small, stirling_table.view(-1).index_select(0, at), _stirling_series(n).sub_(stirling_theta))
        if not with_digamma:
            return stirling, None
        return stirling, _choose(small, digamma_table.view(-1).index_select(0, at), digamma_theta - _digamma_series(n))

    return differences


@functools.cache
def _stirling_remainder_table(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`_stirling_remainder` of 0, 1, ..., ``size - 1``, computed in double precision (0 at 0)."""
    whole = torch.arange(size, dtype=torch.float64, device=device).clamp_(min=1.0)
    return _stirling_remainder(whole).index_fill_(0, torch.tensor([0], device=device), 0.0).to(dtype)


def _whole_counts(x: torch.Tensor) -> bool:
    """Whether the counts are whole numbers below 65,536 (so that tables can be looked up)."""
    return x.numel() == 0 or (int(x.max()) < _COUNT_TABLE_SIZE and not bool(x.frac().any()))


def _count_stirling_remainder(x: torch.Tensor, whole: bool) -> torch.Tensor:
    """:func:`_stirling_remainder` of positive counts, looked up in a table if they are ``whole``."""
    if not whole:
        return _stirling_remainder(x)
    return _stirling_remainder_table(_COUNT_TABLE_SIZE, x.dtype, x.device).index_select(0, x.long())


def _log_prob_at_counts(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    theta: torch.Tensor,
    remainder_differences: RemainderDifferences,
    whole: bool,
    wants_gradient: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    r"""Log-probability at non-zero counts and, if wanted, what its gradient needs there.

    Stirling's formula :math:`\log\Gamma(z + 1) = (z + \tfrac12)\log z - z + \tfrac12\log 2\pi + \sigma(z)`, applied
    to the three :math:`\log\Gamma` terms with :math:`n = x + \theta`, turns the log-probability into

    .. math::

        \log p = -D(x, \hat x) - D(\theta, \hat\theta) + \tfrac12 \log\frac{\theta}{2\pi x n}
        + \sigma(n) - \sigma(\theta) - \sigma(x)

    with the deviances :math:`D(a, b) = a \log(a/b) + b - a \ge 0` of the count and of :math:`\theta` from their
    shares of :math:`n`, :math:`\hat x = n\mu/(\theta + \mu)` and :math:`\hat\theta = n\theta/(\theta + \mu)`.
    With :math:`e = (x - \mu)/(\theta + \mu)` and :math:`t = \log(\hat x / x) = \log(1 + e) + \log\mu - \log x`,
    :math:`D(\theta, \hat\theta) = \theta\,(e - \log(1 + e))` and :math:`D(x, \hat x) = x\,(e^t - 1 - t)`, both
    through :func:`_log1p_gap`. Every term is small or of the size of the result, so nothing cancels. The same
    holds for the derivatives, :math:`\theta e` in :math:`\log\mu` and, in :math:`\log\theta`,

    .. math::

        \theta\,(\psi(n) - \psi(\theta) - \log\tfrac{\theta + \mu}{\theta}) - \theta e
        = -\theta\,(e - \log(1 + e)) + \frac{x}{2n} + \theta\,(\tau(\theta) - \tau(n))

    where :math:`\psi(z) = \log z - 1/(2z) - \tau(z)`. ``remainder_differences`` gives
    :math:`\sigma(n) - \sigma(\theta)` and :math:`\tau(\theta) - \tau(n)` (see :func:`_remainder_differences`);
    ``whole`` says whether the counts are whole numbers (see :func:`_whole_counts`). With the gradient, it returns
    these two derivatives and :math:`x\theta/(\theta + \mu)`, the count's part of the first (for the fused
    softmax).
    """
    n = x + theta
    mu = log_mu.exp()
    theta_plus_mu = mu + theta
    e = (x - mu).div_(theta_plus_mu)
    gap_e, log1p_e = _log1p_gap(e, torch.log(n / theta_plus_mu), with_log1p=True)
    log_x = x.log()
    t = log1p_e.add_(log_mu).sub_(log_x)
    gap_t = _log1p_gap(torch.expm1(t), t)
    stirling, digamma = remainder_differences(x, n, wants_gradient)
    log_prob = (
        stirling.sub_(_count_stirling_remainder(x, whole))
        .sub_(_HALF_LOG_2PI)
        .add_(log_theta.sub(log_x).sub_(n.log()), alpha=0.5)
        .sub_(x * gap_t)
        .sub_(theta * gap_e)
    )
    if not wants_gradient:
        return log_prob, None
    d_log_mu = theta * e
    d_log_theta = digamma.sub_(gap_e).mul_(theta).add_(x.div(n), alpha=0.5)
    return log_prob, (d_log_mu, d_log_theta, x * theta / theta_plus_mu)


def _zero_count_gap(p: torch.Tensor, softplus_u: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{softplus}(u) - p`, precise for any :math:`p = \sigma(u)`.

    At a zero count the log-probability is :math:`-\theta\,\mathrm{softplus}(u)` with :math:`u = \log\mu -
    \log\theta`, and its derivative in :math:`\log\theta` is :math:`\theta\,(p - \mathrm{softplus}(u))`, minus
    :math:`\theta` times this. The difference is :math:`e - \log(1 + e)` at
    :math:`e = -p`, about :math:`p^2/2` for a small :math:`p`; formed directly it is off by about
    :math:`2\epsilon p`, so the derivative by :math:`2\epsilon\,\theta p \le 2\epsilon\mu`, which is why the
    backward passes use the direct form only where :math:`\mu \le 256` and this function elsewhere (a large mean at
    a zero count is rare).
    """
    return _log1p_gap(p.neg(), softplus_u.neg())


def _logits_gradient_of_means(
    p: torch.Tensor, rho: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    r""":math:`\rho_g (w (p_g - \sum_h \rho_h p_h) - c)` in each row, for :math:`p = \sigma(u)`, a softmax :math:`\rho`.

    ``weight`` and ``offset`` are :math:`w` and :math:`c`, one per row. In rows where the weighted mean of :math:`p`
    is above one half, :math:`p_g - \sum_h \rho_h p_h` is formed as :math:`\sum_h \rho_h q_h - q_g` from
    :math:`q = 1 - p = \sigma(-u)`, so that values of :math:`p` near one do not cancel. The result is written over
    ``p`` (fresh arrays of cells × genes cost more than the arithmetic).
    """
    mean = torch.linalg.vecdot(rho, p)
    near_one = torch.nonzero(mean > 0.5).squeeze(-1)
    centred = p.sub_(mean.unsqueeze(-1))
    if near_one.numel():
        q = torch.sigmoid(u[near_one].neg_())
        centred[near_one] = torch.linalg.vecdot(rho[near_one], q).unsqueeze(-1) - q
    return centred.mul_(weight.unsqueeze(-1)).sub_(offset.unsqueeze(-1)).mul_(rho)


class _NegativeBinomialLogProb(torch.autograd.Function):
    r"""Forward and analytic backward of :func:`negative_binomial_log_prob`.

    With :math:`u = \log\mu - \log\theta` and :math:`p = \mu / (\theta + \mu) = \sigma(u)`, the log-probability at
    a zero count is :math:`-\theta\,\mathrm{softplus}(u)`, its derivative in :math:`\log\mu` is :math:`-\theta p`
    and in :math:`\log\theta` it is :math:`\theta\,(p - \mathrm{softplus}(u))`
    (see :func:`_zero_count_gap`). At the non-zero counts all three come from
    :func:`_log_prob_at_counts`.
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
        x_at, theta_at = counts.index_select(0, at), _gather(theta, shape, at)
        whole = _whole_counts(x_at)
        if whole and log_theta.shape == shape[-1:]:  # one inverse dispersion per gene
            remainders = _remainder_differences_per_gene(theta, log_theta, at % theta.numel())
        else:
            remainders = _remainder_differences(theta_at)
        log_prob, at_counts = _log_prob_at_counts(
            x_at, _gather(log_mu, shape, at), _gather(log_theta, shape, at), theta_at, remainders, whole, wants_gradient
        )
        out.view(-1).index_copy_(0, at, log_prob)
        if wants_gradient:
            d_log_mu, d_log_theta, _ = at_counts
            ctx.save_for_backward(u, softplus_u, log_mu, theta, at, d_log_mu, d_log_theta)
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
            refine = _large_means(log_mu.expand(shape).reshape(-1, shape[-1] if shape else 1), 0.0)
            if refine.numel():
                parts = (p.view(-1)[refine], softplus_u.view(-1)[refine], _gather(theta, shape, refine))
                d_log_theta.view(-1).index_copy_(0, refine, _zero_count_gap(*parts[:2]).mul_(parts[2].neg()))
            d_log_theta.view(-1).index_copy_(0, at, d_log_theta_at)
            grad_log_theta = (grad * d_log_theta).sum_to_size(log_theta_shape)
        if ctx.needs_input_grad[1]:
            d_log_mu = (p * theta).neg_()
            d_log_mu.view(-1).index_copy_(0, at, d_log_mu_at)
            grad_log_mu = (grad * d_log_mu).sum_to_size(log_mu_shape)
        return None, grad_log_mu, grad_log_theta, None


def _gather(values: torch.Tensor, shape: torch.Size, at: torch.Tensor) -> torch.Tensor:
    """The entries ``at`` of ``values`` broadcast to ``shape`` and flattened, without copying it where it can."""
    if values.shape == shape:
        return values.reshape(-1).index_select(0, at)
    if values.dim() and values.shape == shape[-values.dim() :]:  # e.g. one value per gene
        return values.reshape(-1).index_select(0, at % values.numel())
    return values.expand(shape).reshape(-1).index_select(0, at)


def _large_means(log_mu_minus: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    r"""Where :math:`\mu > 256`, as indices into a flattened cells × genes array.

    ``log_mu_minus`` holds :math:`\log\mu` minus ``shift``, which is one number or one per gene. Only the genes
    (columns) with a large mean in some cell are searched entry by entry.
    """
    threshold = _LOG_ZERO_COUNT_REFINE_ABOVE - shift
    genes = torch.nonzero(log_mu_minus.amax(dim=0) > threshold).squeeze(-1)
    if not genes.numel():
        return genes
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.index_select(0, genes)
    cells, among = torch.nonzero(log_mu_minus.index_select(1, genes) > threshold, as_tuple=True)
    return cells * log_mu_minus.shape[-1] + genes.index_select(0, among)


class _NegativeBinomialSoftmaxLogProb(torch.autograd.Function):
    r"""Forward and analytic backward of :func:`negative_binomial_softmax_log_prob`.

    With :math:`u = \log\mu - \log\theta` and :math:`p = \sigma(u)` as in :class:`_NegativeBinomialLogProb`,
    a cell's log-probability is :math:`-\sum_g \theta_g \,\mathrm{softplus}(u_g)` over its zero counts (a
    matrix-vector product, with the non-zero counts' entries set to zero) plus :func:`_log_prob_at_counts` over its
    non-zero counts. The derivative in :math:`\log\mu_g` is :math:`a_g - \theta_g p_g` with
    :math:`a_g = x_g \theta_g / (\theta_g + \mu_g)` (zero at zero counts), so with :math:`\rho = \mathrm{softmax}(f)`,
    :math:`\mu_g = l \rho_g` and :math:`\theta_g p_g = \mu_g (1 - p_g)` the gradient in the logits is

    .. math::

        a_g - \rho_g \sum_h a_h + l \rho_g \Big(p_g - \sum_h \rho_h p_h\Big)

    (using :math:`\sum_h \rho_h = 1`). Written as :math:`g - \rho \sum g` instead, two terms of the size of the
    library would cancel once :math:`\theta` is large. The counts are only read at their non-zero entries, so they
    may come as a sparse CSR tensor.
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
        log_rho = torch.log_softmax(logits, dim=-1)
        u = log_rho + log_library
        log_mu_at = u.view(-1).index_select(0, at)
        u.sub_(log_theta)
        theta = log_theta.exp()
        theta_at = theta.index_select(0, cols)
        whole = _whole_counts(counts)
        if whole:
            remainders = _remainder_differences_per_gene(theta, log_theta, cols)
        else:
            remainders = _remainder_differences(theta_at)
        at_counts, gradient_at_counts = _log_prob_at_counts(
            counts, log_mu_at, log_theta.index_select(0, cols), theta_at, remainders, whole, wants_gradient
        )
        # theta * softplus(u) at the zero counts, and minus the log-probability (over theta) at the others
        terms = F.softplus(u)
        terms.view(-1).index_copy_(0, at, at_counts.div_(theta_at).neg_())
        out = torch.mv(terms, theta).neg_()
        if wants_gradient:
            _, d_log_theta_at, count_share = gradient_at_counts
            d_log_theta_at = d_log_theta_at.div_(theta_at)  # the backward pass multiplies by theta after summing
            saved = (log_rho, u, terms, log_library, log_theta, theta, rows, at, d_log_theta_at, count_share)
            ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor | None, None, torch.Tensor | None, None]:
        log_rho, u, softplus_u, log_library, log_theta, theta, rows, at, d_log_theta_over_theta_at, count_share = (
            ctx.saved_tensors
        )  # softplus_u is only that at the zero counts
        p = torch.sigmoid(u)
        grad_logits = grad_log_theta = scratch = None
        if ctx.needs_input_grad[3]:
            d_log_theta_over_theta = scratch = p - softplus_u
            refine = _large_means(u, log_theta)
            if refine.numel():
                parts = (p.view(-1)[refine], softplus_u.view(-1)[refine])
                d_log_theta_over_theta.view(-1).index_copy_(0, refine, _zero_count_gap(*parts).neg_())
            d_log_theta_over_theta.view(-1).index_copy_(0, at, d_log_theta_over_theta_at)
            grad_log_theta = torch.mv(d_log_theta_over_theta.T, grad).mul_(theta)
        if ctx.needs_input_grad[1]:
            rho = torch.exp(log_rho, out=scratch)  # into the array of the gradient in log theta, if any
            grad_library = grad * log_library.squeeze(-1).exp()
            count_share_sum = torch.zeros_like(grad).index_add_(0, rows, count_share)
            grad_logits = _logits_gradient_of_means(p, rho, u, grad_library, grad * count_share_sum)
            grad_logits.view(-1).index_add_(0, at, count_share * grad.index_select(0, rows))
        return None, grad_logits, None, grad_log_theta, None


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
