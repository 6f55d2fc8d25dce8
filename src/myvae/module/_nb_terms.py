r"""Numerically stable pieces of the negative-binomial log-probability in single precision.

:mod:`myvae.module._likelihood` assembles the log-probability and its analytic gradients from these. At non-zero
counts the value is written as a sum of Stirling-style terms, none larger than the result, so nothing cancels at a
large inverse dispersion; zero counts use :math:`-\theta\,\mathrm{softplus}(\log\mu - \log\theta)`.
``benchmarks/likelihood_speed.py`` compares the speed with the direct formula, and
``tests/module/test_likelihood_precision.py`` the precision with a float64 reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

RemainderDifferences = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]
"""Given counts ``x``, ``n = x + theta`` and whether the second is wanted: sigma(n) - sigma(theta) and
tau(theta) - tau(n), see :func:`_remainder_differences`."""

__all__ = [
    "_gather",
    "_large_means",
    "_log_prob_at_counts",
    "_logits_gradient_of_means",
    "_remainder_differences",
    "_remainder_differences_per_gene",
    "_whole_counts",
    "_zero_count_gap",
]


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
    is above one half, :math:`p_g - \sum_h \rho_h p_h` is formed as :math:`-(q_g - \sum_h \rho_h q_h)` from
    :math:`q = 1 - p = \sigma(-u)`, so that values of :math:`p` near one do not cancel: one sigmoid of :math:`\pm u`,
    the sign chosen per row, serves all rows. The result is written over ``p`` (fresh arrays of cells × genes cost
    more than the arithmetic).
    """
    mean = torch.linalg.vecdot(rho, p)
    near_one = mean > 0.5
    if bool(near_one.any()):
        sign = 1.0 - 2.0 * near_one.to(u.dtype)  # -1 where the mean of p is above one half
        p = torch.mul(u, sign.unsqueeze(-1), out=p).sigmoid_()  # q in those rows, p in the others
        mean = torch.linalg.vecdot(rho, p)
        weight = weight * sign
    return p.sub_(mean.unsqueeze(-1)).mul_(weight.unsqueeze(-1)).sub_(offset.unsqueeze(-1)).mul_(rho)


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
