r"""Pieces of the negative-binomial log-probability and its analytic gradients.

:mod:`myvae.module._likelihood` assembles the log-probability from these. At the zero counts (most of a single-cell
matrix) it is :math:`-\theta \log(1 + \mu/\theta)`, in the precision of the model. At the non-zero counts it is
evaluated in double precision, with the log-gamma and digamma differences written so that they do not cancel at a
large :math:`\theta`: the textbook formula in single precision loses the value and its gradient in
:math:`\log\theta` once :math:`\theta` is large against the count and the mean (near-Poisson genes). For whole
counts below 16 and one :math:`\theta` per gene those differences come from small per-gene tables, so no
``lgamma`` or ``digamma`` is evaluated per count.
``benchmarks/likelihood_speed.py`` compares the speed with the textbook formula in single precision, and
``tests/module/test_likelihood_precision.py`` the precision with a float64 reference.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

__all__ = [
    "CountTerms",
    "_ASYMPTOTIC_FROM",
    "_SMALL_COUNTS",
    "_ZERO_COUNT_REFINE_ABOVE",
    "_gather",
    "_gamma_terms_beyond_tables",
    "_large_means",
    "_log_prob_at_counts",
    "_logits_gradient_of_means",
    "_per_gene_tables",
    "_shifted_exponentials",
    "_softmax",
    "_zero_count_gap",
]


# At a zero count, theta * (p - log(1 + r)) cancels to an absolute error of about 2 eps * theta * p <= 2 eps * mu (6e-5
# in single precision at mu = 256); where mu exceeds 256, the backward pass evaluates it in double precision instead.
_ZERO_COUNT_REFINE_ABOVE = 256.0
_LOG2_E = 1.0 / math.log(2.0)
# Whole counts below this take their log-gamma and digamma differences from per-gene tables.
_SMALL_COUNTS = 16
# From this inverse dispersion on, log-gamma and digamma differences are taken from asymptotic series (the first
# power, then the coefficients of the powers that follow it two by two), truncated below 1e-12 there.
_ASYMPTOTIC_FROM = 10.0
_STIRLING = (1, 1 / 12, -1 / 360, 1 / 1260, -1 / 1680)
_DIGAMMA = (2, 1 / 12, -1 / 120, 1 / 252, -1 / 240)


class CountTerms(NamedTuple):
    """What the log-probability at the non-zero counts gives: the value and, if wanted, its gradient parts."""

    log_prob: torch.Tensor
    """:math:`\\log p(x)` at each non-zero count."""
    d_log_mu: torch.Tensor | None
    r"""Its derivative in :math:`\log\mu`, :math:`\theta (x - \mu) / (\theta + \mu)`."""
    d_log_theta: torch.Tensor | None
    r"""Its derivative in :math:`\log\theta`."""
    count_share: torch.Tensor | None
    r""":math:`x \theta / (\theta + \mu)`, the count's part of the derivative in :math:`\log\mu`."""


def _wide_dtype(device: torch.device) -> torch.dtype:
    """The dtype the non-zero counts' terms are computed in: double, except where the device has none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


@functools.cache
def _small_log_factorials(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r""":math:`\log k!` for the counts :math:`k` the per-gene tables hold."""
    return torch.lgamma(torch.arange(1, _SMALL_COUNTS + 1, dtype=torch.float64, device=device)).to(dtype)


def _whole_counts(x: torch.Tensor) -> bool:
    """Whether the counts are whole numbers (so that per-gene tables can be looked up)."""
    return x.numel() == 0 or not bool(x.frac().any())


def _gamma_terms_per_gene(
    x: torch.Tensor, theta: torch.Tensor, cols: torch.Tensor, wants_digamma: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r""":func:`_gamma_terms` for whole counts and one inverse dispersion per gene.

    ``theta`` holds one inverse dispersion per gene and ``cols`` the gene of each count. Counts below 16 look the
    terms up in :func:`_per_gene_tables`; the few larger ones (about 3% in PBMC 3k) take :func:`_gamma_terms`.
    """
    log_gamma_table, digamma_table = _per_gene_tables(theta, wants_digamma)
    at = cols * _SMALL_COUNTS + x.clamp(max=_SMALL_COUNTS - 1).long()
    log_gamma = log_gamma_table.view(-1).index_select(0, at)
    digamma = digamma_table.view(-1).index_select(0, at) if wants_digamma else None
    large, log_gamma_large, digamma_large = _gamma_terms_beyond_tables(x, theta, cols, wants_digamma)
    if large.numel():
        log_gamma.index_copy_(0, large, log_gamma_large)
        if wants_digamma:
            digamma.index_copy_(0, large, digamma_large)
    return log_gamma, digamma


def _per_gene_tables(theta: torch.Tensor, wants_digamma: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""The log-gamma and digamma terms of :func:`_gamma_terms` for each gene and each count below 16.

    They are :math:`\sum_{i<k} \log(\theta + i) - \log k!` and :math:`\sum_{i<k} 1/(\theta + i)` for
    :math:`k = 0, \dots, 15`, genes × 16.
    """
    steps = torch.arange(_SMALL_COUNTS - 1, dtype=theta.dtype, device=theta.device)
    shifted = theta.unsqueeze(-1) + steps  # theta + i, genes x (_SMALL_COUNTS - 1)
    log_gamma_table = _cumulative_table(shifted.log()).sub_(_small_log_factorials(theta.dtype, theta.device))
    return log_gamma_table, _cumulative_table(shifted.reciprocal_()) if wants_digamma else None


def _gamma_terms_beyond_tables(
    x: torch.Tensor, theta: torch.Tensor, cols: torch.Tensor, wants_digamma: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The counts :func:`_per_gene_tables` do not hold (16 or more, or not whole): where, and their terms.

    ``theta`` holds one inverse dispersion per gene and ``cols`` the gene of each count; the terms are those of
    :func:`_gamma_terms`.
    """
    beyond = torch.nonzero((x >= _SMALL_COUNTS) | (x != x.floor())).squeeze(-1)
    if not beyond.numel():
        return beyond, x[:0], x[:0] if wants_digamma else None
    x_beyond, theta_beyond = x.index_select(0, beyond), theta.index_select(0, cols.index_select(0, beyond))
    return beyond, *_gamma_terms(x_beyond, theta_beyond, wants_digamma)


def _cumulative_table(terms: torch.Tensor) -> torch.Tensor:
    """Sums of the first 0, 1, ..., n terms of each row of ``terms`` (rows × n), as rows × (n + 1)."""
    return torch.cat([torch.zeros_like(terms[:, :1]), terms.cumsum(dim=-1)], dim=-1)


def _gamma_terms(x: torch.Tensor, theta: torch.Tensor, wants_digamma: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""The log-gamma and digamma terms of the log-probability at non-zero counts, and of its gradient.

    They are :math:`\log\Gamma(x + \theta) - \log\Gamma(\theta) - \log x!` and :math:`\psi(x + \theta) - \psi(\theta)`.
    Where :math:`\theta \ge 10` the differences come from Stirling's series, written so that nothing cancels
    (:math:`n = x + \theta`, :math:`\ell = \log(1 + x/\theta)`):

    .. math::

        \log\Gamma(n) - \log\Gamma(\theta) = (n - \tfrac12)\,\ell + x (\log\theta - 1) + S(n) - S(\theta), \qquad
        \psi(n) - \psi(\theta) = \ell + \frac{x}{2\theta n} - U(n) + U(\theta)

    with the series :math:`S(z) \approx 1/(12z)` and :math:`U(z) \approx 1/(12z^2)`; elsewhere ``lgamma`` and
    ``digamma`` (their difference is then small against :math:`\theta`).
    """
    n = x + theta
    log_ratio = torch.log1p(x / theta)
    large_theta = theta >= _ASYMPTOTIC_FROM
    stirling = (n - 0.5).mul_(log_ratio).add_(x * (theta.log() - 1.0)).add_(_series_difference(_STIRLING, n, theta))
    direct = torch.lgamma(n).sub_(torch.lgamma(theta))
    log_gamma = torch.where(large_theta, stirling, direct).sub_(torch.lgamma(x + 1.0))
    if not wants_digamma:
        return log_gamma, None
    asymptotic = (x / (2.0 * theta * n)).add_(log_ratio).sub_(_series_difference(_DIGAMMA, n, theta))
    return log_gamma, torch.where(large_theta, asymptotic, torch.digamma(n).sub_(torch.digamma(theta)))


def _series_difference(coefficients: tuple[float, ...], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r""":math:`T(a) - T(b)` for the asymptotic series :math:`T(z) = \sum_k c_k z^{-(2k + s)}` (first power :math:`s`).

    ``coefficients`` holds :math:`s`, then :math:`c_0, c_1, \dots`; both arguments are evaluated together, by
    Horner's rule in :math:`1/z^2`.
    """
    power, terms = coefficients[0], coefficients[1:]
    z = torch.stack([a, b])
    inverse_square = z.square().reciprocal_()
    series = torch.full_like(z, terms[-1])
    for c in terms[-2::-1]:
        series.mul_(inverse_square).add_(c)
    series.mul_(inverse_square if power == 2 else z.reciprocal())
    return series[0] - series[1]


def _log_prob_at_counts(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    log_theta: torch.Tensor,
    genes: torch.Tensor | None,
    wants_gradient: bool,
) -> CountTerms:
    r"""Log-probability at non-zero counts and, if wanted, what its gradients need there, in double precision.

    .. math::

        \log p = \log\Gamma(x + \theta) - \log\Gamma(\theta) - \log x! + x (\log\mu - \log\theta - L) - \theta L

    with :math:`L = \log(1 + \mu/\theta) = \log\frac{\theta + \mu}{\theta}`. In double precision the terms, each at
    most about :math:`10^{10}` for :math:`\theta` up to :math:`e^{20}` and counts up to :math:`10^4`, cancel to an
    absolute error near :math:`10^{-6}`, far below single precision's rounding of the result. The derivative in
    :math:`\log\theta` is :math:`\theta (\psi(x + \theta) - \psi(\theta) - L) - \theta (x - \mu)/(\theta + \mu)`.

    Parameters
    ----------
    x, log_mu
        Counts and log means of the non-zero counts, flattened.
    log_theta
        Log inverse dispersion of each count, or of each gene when ``genes`` is given.
    genes
        The gene of each count, with one inverse dispersion per gene: whole counts then take their log-gamma and
        digamma terms from per-gene tables (see :func:`_gamma_terms_per_gene`). ``None``: one per count.
    wants_gradient
        Whether to return the gradient parts too.

    Returns
    -------
    The terms in the dtype of ``log_mu``.
    """
    dtype = log_mu.dtype
    wide = _wide_dtype(log_mu.device)
    x, log_mu, log_theta = x.to(wide), log_mu.to(wide), log_theta.to(wide)
    theta = log_theta.exp()
    if genes is None:
        log_gamma, digamma = _gamma_terms(x, theta, wants_gradient)
    else:
        gene_theta, theta, log_theta = theta, theta.index_select(0, genes), log_theta.index_select(0, genes)
        if _whole_counts(x):
            log_gamma, digamma = _gamma_terms_per_gene(x, gene_theta, genes, wants_gradient)
        else:
            log_gamma, digamma = _gamma_terms(x, theta, wants_gradient)
    mu = log_mu.exp()
    log_ratio = torch.log1p(mu / theta)  # L
    log_prob = (log_mu - log_theta - log_ratio).mul_(x).add_(log_gamma).sub_(theta * log_ratio)
    if not wants_gradient:
        return CountTerms(log_prob.to(dtype), None, None, None)
    theta_share = theta / (theta + mu)
    d_log_mu = (x - mu).mul_(theta_share)
    d_log_theta = digamma.sub_(log_ratio).mul_(theta).sub_(d_log_mu)
    count_share = theta_share.mul_(x)
    return CountTerms(*(term.to(dtype) for term in (log_prob, d_log_mu, d_log_theta, count_share)))


def _zero_count_gap(ratio: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 + r) - r/(1 + r) \ge 0`, in double precision (returned in ``ratio``'s dtype).

    At a zero count the log-probability is :math:`-\theta \log(1 + r)` with :math:`r = \mu/\theta`, and its
    derivative in :math:`\log\theta` is :math:`\theta\,(p - \log(1 + r))` with :math:`p = r/(1 + r)`: minus
    :math:`\theta` times this gap. In single precision the two terms cancel to an absolute error of about
    :math:`2\epsilon\,\theta p \le 2\epsilon\mu`, which is why the backward passes evaluate this gap where
    :math:`\mu > 256` (rare at a zero count) and the direct difference elsewhere.
    """
    wide = ratio.to(_wide_dtype(ratio.device))
    return torch.log1p(wide).sub_(wide / (wide + 1.0)).to(ratio.dtype)


def _logits_gradient_of_means(
    p: torch.Tensor, q: torch.Tensor, rho: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    r""":math:`\rho_g (w (p_g - \sum_h \rho_h p_h) - c)` in each row, for a softmax :math:`\rho` and :math:`p = 1 - q`.

    ``weight`` and ``offset`` are :math:`w` and :math:`c`, one per row; ``p`` and ``q`` must both be precise (as
    :math:`r/(1 + r)` and :math:`1/(1 + r)` are). In rows where the weighted mean of :math:`p` is above one half,
    :math:`p_g - \sum_h \rho_h p_h` is formed as :math:`-(q_g - \sum_h \rho_h q_h)`, so that values of :math:`p`
    near one do not cancel. The result is written over ``p`` (fresh arrays of cells × genes cost more than the
    arithmetic).
    """
    mean = torch.linalg.vecdot(rho, p)
    near_one = mean > 0.5
    if bool(near_one.any()):
        torch.where(near_one.unsqueeze(-1), q, p, out=p)
        mean = torch.where(near_one, torch.linalg.vecdot(rho, p), mean)
        weight = weight * (1.0 - 2.0 * near_one.to(weight.dtype))
    return p.sub_(mean.unsqueeze(-1)).mul_(weight.unsqueeze(-1)).sub_(offset.unsqueeze(-1)).mul_(rho)


def _shifted_exponentials(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`e^{f - \max f}` in each row, and :math:`\max f` as cells × 1: the softmax before it is normalised.

    The exponentials are taken in base two (``exp2`` of :math:`(f - \max f)\log_2 e`), at a relative error of a few
    units of the last place times :math:`|f - \max f|`. On the CPU this was chosen on, torch evaluated ``exp2``
    several times faster than ``exp``; on an AVX-512 CPU measured since, ``exp`` was about 20% faster.
    """
    peak = logits.amax(dim=-1, keepdim=True)
    return torch.add(peak * -_LOG2_E, logits, alpha=_LOG2_E).exp2_(), peak


def _softmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The softmax of each row and the log of its normaliser, :math:`\log\sum_g e^{f_g}`, as cells × 1."""
    rho, peak = _shifted_exponentials(logits)
    total = rho.sum(dim=-1, keepdim=True)
    return rho.div_(total), total.log_().add_(peak)


def _gather(values: torch.Tensor, shape: torch.Size, at: torch.Tensor) -> torch.Tensor:
    """The entries ``at`` of ``values`` broadcast to ``shape`` and flattened, without copying it where it can."""
    if values.shape == shape:
        return values.reshape(-1).index_select(0, at)
    if values.dim() and values.shape == shape[-values.dim() :]:  # e.g. one value per gene
        return values.reshape(-1).index_select(0, at % values.numel())
    return values.expand(shape).reshape(-1).index_select(0, at)


def _large_means(values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    r"""Where :math:`\mu > 256`, as indices into a flattened cells × genes array.

    ``values`` is a cells × genes array that grows with :math:`\mu` and ``threshold`` its value at
    :math:`\mu = 256`, one number or one per gene: :math:`\log\mu` and :math:`\log 256`, or
    :math:`\mu/\theta` and :math:`256/\theta`. Only the genes (columns) with a large mean in some cell are searched
    entry by entry.
    """
    genes = torch.nonzero(values.amax(dim=0) > threshold).squeeze(-1)
    if not genes.numel():
        return genes
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.index_select(0, genes)
    cells, among = torch.nonzero(values.index_select(1, genes) > threshold, as_tuple=True)
    return cells * values.shape[-1] + genes.index_select(0, among)
