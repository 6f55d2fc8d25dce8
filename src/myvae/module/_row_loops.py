r"""Compiled loops over a minibatch's cells for the fused likelihood on the CPU.

:class:`~myvae.module._likelihood._NegativeBinomialSoftmaxLogProb` needs, per cell, a few passes over its genes
(normalise the softmax, form :math:`\mu/\theta`, sum the log-probabilities, form the gradients) and a few over its
non-zero counts (read the logits there, add their terms). As torch operations each of these is one pass over all
cells × genes or one indexing kernel, and together they cost more than their arithmetic. Here each is a loop over
one cell's genes, while its row is in the cache, run for the cells in parallel.

The loops are compiled by Numba (which scanpy already needs) on first use and cached on disk; a process's first use
of Numba takes about 0.1 s (``load_row_loops`` pays it before training). They run on the OpenMP threads torch uses
when Numba's threading layer is OpenMP (its default where available); elsewhere on Numba's own. They are for single
precision: the exponentials of the softmax and :math:`\log(1 + \mu/\theta)` over whole rows are those of
:mod:`myvae.module._single_precision`, which vectorise, evaluated while the row is in the cache (double precision
takes the torch operations). :math:`\mu` and :math:`\log(1 + \mu/\theta)` at the non-zero counts stay with torch,
in double precision. The log-gamma and digamma terms there are the loops' own, with the formulas of
:mod:`myvae.module._nb_terms`: per-gene tables for whole counts below 16 (:func:`per_gene_tables`) and, for the few
other counts, the series or ``lgamma`` and the digamma function one count at a time, as torch would take a dozen
small operations for them.

Sums over a cell's genes are accumulated in double precision, so they are at least as precise as torch's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ._nb_terms import _ASYMPTOTIC_FROM
from ._single_precision import exp_row, log1p_row

__all__ = ["applies_to", "count_terms_into_rows", "per_gene_tables", "row_gradients", "softmax_rows"]

_FASTMATH = {"reassoc", "contract", "nsz"}
"""Let the compiler reorder sums and fuse multiply-adds (so that the loops vectorise); no unsafe assumptions."""


def applies_to(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loops can run on these tensors: all on the CPU, in single precision.

    Their exponentials and logarithms are single precision's (:mod:`myvae.module._single_precision`); in double
    precision the fused likelihood runs as torch operations.
    """
    return all(t.device.type == "cpu" for t in tensors) and tensors[0].dtype == torch.float32


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a NumPy array (no copy; the tensor must be contiguous)."""
    return tensor.detach().numpy()


@numba.njit(cache=True, inline="always")
def _library(log_library, cell, dtype):  # pragma: no cover
    """Cell ``cell``'s library size in the dtype of the cells × genes arrays (the same value in every loop)."""
    return dtype.type(math.exp(log_library[cell]))


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def softmax_rows(
    logits,
    peak,
    log_library,
    inverse_theta,
    theta,
    log_theta,
    crow,
    col,
    refine_above,
    rho,
    log1p_ratio,
    zero_count_sums,
    log_mu_at,
    log_ratio_at,
    zero_count_derivative_at,
):  # pragma: no cover
    r"""Softmax, :math:`\log(1 + \mu/\theta)` and :math:`\sum_g \theta_g \log(1 + \mu_g/\theta_g)` of each cell.

    ``peak`` holds each row's :math:`\max f`. Writes ``rho`` (:math:`\rho = \mathrm{softmax}(f)`),
    ``log1p_ratio`` (:math:`L = \log(1 + r)` with :math:`r = l\rho/\theta`, formed as ``row_gradients`` forms it
    again) and ``zero_count_sums`` (:math:`\sum_g \theta_g L_g` over the genes with a zero count: over all genes,
    less the exact products at the stored entries, in double precision); at each stored entry of the CSR counts
    (``crow``, ``col``), ``log_mu_at`` (:math:`\log l + f - \log\sum e^f`), ``log_ratio_at`` (that minus
    :math:`\log\theta`) and ``zero_count_derivative_at`` (what ``row_gradients`` takes there for the derivative in
    :math:`\log\theta` over :math:`\theta` as at a zero count, see :func:`_zero_count_derivative`), in double
    precision. The exponentials and ``log1p`` are those of :mod:`myvae.module._single_precision`, over one row at a
    time while it is in the cache.
    """
    n_cells, n_genes = logits.shape
    one = rho.dtype.type(1.0)
    for cell in numba.prange(n_cells):
        powers_of_two, exponents = np.empty(n_genes, np.int32), np.empty(n_genes, np.float32)
        ratio, mantissas = np.empty(n_genes, np.float32), np.empty(n_genes, np.float32)
        exps, log1p_row_of_cell = rho[cell], log1p_ratio[cell]
        exp_row(logits[cell], peak[cell], exps, powers_of_two)
        total = 0.0
        for gene in range(n_genes):
            total += exps[gene]
        scale = rho.dtype.type(1.0 / total)
        library = _library(log_library, cell, rho.dtype)
        for gene in range(n_genes):
            exps[gene] *= scale
            ratio[gene] = exps[gene] * library * inverse_theta[gene]
        log1p_row(ratio, log1p_row_of_cell, exponents, mantissas)
        zero_counts = 0.0
        for gene in range(n_genes):
            zero_counts += np.float64(theta[gene]) * np.float64(log1p_row_of_cell[gene])
        shift = np.float64(log_library[cell]) - (math.log(total) + np.float64(peak[cell]))
        for entry in range(crow[cell], crow[cell + 1]):
            gene = col[entry]
            zero_counts -= np.float64(theta[gene]) * np.float64(log1p_row_of_cell[gene])
            log_mu = np.float64(logits[cell, gene]) + shift
            log_mu_at[entry] = log_mu
            log_ratio_at[entry] = log_mu - np.float64(log_theta[gene])
            zero_count_derivative_at[entry] = _zero_count_derivative(
                ratio[gene], log1p_row_of_cell[gene], theta[gene], refine_above, one
            )
        zero_count_sums[cell] = zero_counts


@numba.njit(cache=True, parallel=True)
def per_gene_tables(theta, log_gamma_table, digamma_table):  # pragma: no cover
    r"""The per-gene tables of ``_nb_terms._per_gene_tables``, written into genes × width arrays.

    Row :math:`g` gets :math:`\sum_{i<k} \log(\theta_g + i) - \log k!` and :math:`\sum_{i<k} 1/(\theta_g + i)` for
    :math:`k = 0, 1, \dots` up to the tables' width, in double precision (``theta`` holds :math:`\theta_g`).
    """
    n_genes, width = log_gamma_table.shape
    for gene in numba.prange(n_genes):
        log_gamma = digamma = 0.0
        log_gamma_table[gene, 0] = digamma_table[gene, 0] = 0.0
        for k in range(1, width):
            shifted = theta[gene] + (k - 1)
            log_gamma += math.log(shifted / k)
            digamma += 1.0 / shifted
            log_gamma_table[gene, k] = log_gamma
            digamma_table[gene, k] = digamma


@numba.njit(cache=True, inline="always")
def _stirling_remainder(z):  # pragma: no cover
    r"""Stirling's series for :math:`\log\Gamma(z)` beyond its leading terms, :math:`S(z)` of ``_nb_terms``."""
    w = 1.0 / (z * z)
    return (1.0 / 12.0 + w * (-1.0 / 360.0 + w * (1.0 / 1260.0 - w / 1680.0))) / z


@numba.njit(cache=True, inline="always")
def _digamma_remainder(z):  # pragma: no cover
    r"""The asymptotic series of :math:`\psi(z)` beyond :math:`\log z - 1/(2z)`, :math:`U(z)` of ``_nb_terms``."""
    w = 1.0 / (z * z)
    return w * (1.0 / 12.0 + w * (-1.0 / 120.0 + w * (1.0 / 252.0 - w / 240.0)))


@numba.njit(cache=True, inline="always")
def _digamma(z):  # pragma: no cover
    r"""The digamma function :math:`\psi(z)` for :math:`z > 0`.

    Shifted up by :math:`\psi(z) = \psi(z + 1) - 1/z` until :math:`z \ge 10`, then its asymptotic series
    (truncated below :math:`10^{-12}` there).
    """
    shift = 0.0
    while z < _ASYMPTOTIC_FROM:
        shift += 1.0 / z
        z += 1.0
    return math.log(z) - 0.5 / z - _digamma_remainder(z) - shift


@numba.njit(cache=True, inline="always")
def _gamma_terms(x, theta, wants_digamma):  # pragma: no cover
    r"""The log-gamma and digamma terms at one count, as ``_nb_terms._gamma_terms`` forms them.

    They are :math:`\log\Gamma(x + \theta) - \log\Gamma(\theta) - \log x!` and
    :math:`\psi(x + \theta) - \psi(\theta)` (from Stirling's series where :math:`\theta \ge 10`).
    """
    n = x + theta
    if theta >= _ASYMPTOTIC_FROM:
        log_ratio = math.log1p(x / theta)
        log_gamma = (n - 0.5) * log_ratio + x * (math.log(theta) - 1.0)
        log_gamma += _stirling_remainder(n) - _stirling_remainder(theta)
        digamma = log_ratio + x / (2.0 * theta * n) - (_digamma_remainder(n) - _digamma_remainder(theta))
    else:
        log_gamma = math.lgamma(n) - math.lgamma(theta)
        digamma = _digamma(n) - _digamma(theta) if wants_digamma else 0.0
    return log_gamma - math.lgamma(x + 1.0), digamma


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def count_terms_into_rows(
    zero_count_sums,
    theta_wide,
    log_theta,
    crow,
    col,
    counts,
    log_mu_at,
    mu_at,
    log1p_ratio_at,
    zero_count_derivative_at,
    log_gamma_table,
    digamma_table,
    wants_gradient,
    log_prob,
    d_log_theta_over_theta_at,
    count_share_at,
    count_share_sum,
):  # pragma: no cover
    r"""Each cell's log-probability: :math:`-\theta L` summed over its zero counts plus :math:`\log p` at the others.

    ``zero_count_sums`` holds each cell's :math:`\sum_g \theta_g L_g` over its zero counts, with
    :math:`L = \log(1 + \mu/\theta)` (from :func:`softmax_rows`). The terms at a non-zero count :math:`x` are those of
    ``_log_prob_at_counts``, in double precision: :math:`\log p = G + x(\log\mu - \log\theta - L) - \theta L`
    with :math:`L` from ``log1p_ratio_at``, :math:`\theta` from ``theta_wide`` and the log-gamma terms :math:`G` from
    the per-gene tables of :func:`per_gene_tables` (whole counts below the tables' width) or, for the other counts,
    formed here (likewise the digamma terms). With gradients: the derivative of :math:`\log p` in
    :math:`\log\theta`, over :math:`\theta`, at each count, less ``zero_count_derivative_at`` (what
    ``row_gradients`` adds there for every gene, as if the count were zero); :math:`a = x\theta/(\theta + \mu)` at
    each count, and its sum over each cell's counts.
    """
    n_cells = crow.shape[0] - 1
    table_width = log_gamma_table.shape[1]
    for cell in numba.prange(n_cells):
        total = 0.0
        share_sum = 0.0
        for entry in range(crow[cell], crow[cell + 1]):
            gene = col[entry]
            x = np.float64(counts[entry])
            log_ratio = log1p_ratio_at[entry]
            whole = int(x)
            if x < table_width and x == whole:
                log_gamma, digamma = log_gamma_table[gene, whole], digamma_table[gene, whole]
            else:
                log_gamma, digamma = _gamma_terms(x, theta_wide[gene], wants_gradient)
            total += x * (log_mu_at[entry] - np.float64(log_theta[gene]) - log_ratio) + log_gamma
            total -= theta_wide[gene] * log_ratio
            if wants_gradient:
                theta_share = theta_wide[gene] / (theta_wide[gene] + mu_at[entry])
                d_log_mu = (x - mu_at[entry]) * theta_share
                d_log_theta_over_theta = digamma - log_ratio - d_log_mu / theta_wide[gene]
                d_log_theta_over_theta_at[entry] = d_log_theta_over_theta - zero_count_derivative_at[entry]
                count_share_at[entry] = theta_share * x
                share_sum += theta_share * x
        log_prob[cell] = total - zero_count_sums[cell]
        count_share_sum[cell] = share_sum


_CELLS_PER_CHUNK = 32
"""The backward pass sums the derivative in log theta over chunks of this many cells, then over the chunks in order:
the same order of summation on any number of threads."""


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def row_gradients(
    rho,
    log1p_ratio,
    log_library,
    inverse_theta,
    theta,
    crow,
    col,
    d_log_theta_over_theta_at,
    count_share_at,
    grad,
    count_share_sum,
    refine_above,
    grad_logits,
    grad_log_theta_over_theta,
):  # pragma: no cover
    r"""The gradient in the logits, and in :math:`\log\theta` over :math:`\theta`, summed over the cells.

    The same formulas as the torch path of the fused likelihood: with :math:`r = \mu/\theta` (formed again from
    ``rho`` exactly as in :func:`softmax_rows`), :math:`q = 1/(1+r)`, :math:`p = rq`, :math:`w = g\,l` and
    :math:`c = g \sum_h a_h` per cell (``grad`` :math:`g`), the gradient in the logits is
    :math:`\rho(w(p - \sum_h\rho_h p_h) - c)` plus :math:`g\,a` at the counts; in cells where
    :math:`\sum_h\rho_h p_h > 1/2` the difference is formed from :math:`q` (see ``_logits_gradient_of_means``).
    The derivative in :math:`\log\theta` over :math:`\theta` is :math:`p - \log(1 + r)` at zero counts (in double
    precision where :math:`\mu` exceeds ``refine_above``, see :func:`_zero_count_derivative`), taken at every gene,
    plus ``d_log_theta_over_theta_at`` at the counts (the derivative there less that);
    ``grad_log_theta_over_theta`` receives its sum over the cells, weighted by :math:`g`.
    """
    n_cells, n_genes = rho.shape
    one = rho.dtype.type(1.0)
    n_chunks = (n_cells + _CELLS_PER_CHUNK - 1) // _CELLS_PER_CHUNK
    chunk_sums = np.zeros((n_chunks, n_genes))
    for chunk in numba.prange(n_chunks):
        sums = chunk_sums[chunk]
        q_of_cell = np.empty(n_genes, rho.dtype)
        for cell in range(chunk * _CELLS_PER_CHUNK, min(n_cells, (chunk + 1) * _CELLS_PER_CHUNK)):
            library = _library(log_library, cell, rho.dtype)
            weight_of_cell = np.float64(grad[cell])
            mean = mean_q = 0.0
            n_large_means = 0  # a count, not a maximum, so that the loop vectorises
            for gene in range(n_genes):
                r = rho[cell, gene] * library * inverse_theta[gene]
                q = one / (one + r)
                p = r * q
                grad_logits[cell, gene] = p
                q_of_cell[gene] = q
                sums[gene] += weight_of_cell * np.float64(p - log1p_ratio[cell, gene])
                mean += rho[cell, gene] * p
                mean_q += rho[cell, gene] * q
                n_large_means += r * theta[gene] > refine_above
            weight = grad[cell] * library
            if mean > 0.5:  # p near one: p - mean p = -(q - mean q), without cancellation
                for gene in range(n_genes):
                    grad_logits[cell, gene] = q_of_cell[gene]
                mean, weight = mean_q, -weight
            offset = grad[cell] * count_share_sum[cell]
            for gene in range(n_genes):
                grad_logits[cell, gene] = rho[cell, gene] * (weight * (grad_logits[cell, gene] - mean) - offset)
            for entry in range(crow[cell], crow[cell + 1]):
                grad_logits[cell, col[entry]] += count_share_at[entry] * grad[cell]
                sums[col[entry]] += weight_of_cell * np.float64(d_log_theta_over_theta_at[entry])
            # where the mean is large, the direct difference added above is not the precise one: exchange them
            if n_large_means:
                for gene in range(n_genes):
                    r = rho[cell, gene] * library * inverse_theta[gene]
                    if r * theta[gene] > refine_above:
                        direct = _direct_zero_count_derivative(r, log1p_ratio[cell, gene], one)
                        sums[gene] += weight_of_cell * (_zero_count_gap(r) - direct)
    for chunk in range(n_chunks):
        for gene in range(n_genes):
            grad_log_theta_over_theta[gene] += chunk_sums[chunk, gene]


@numba.njit(cache=True, inline="always")
def _zero_count_derivative(r, log1p_ratio, theta, refine_above, one):  # pragma: no cover
    r""":math:`p - L` at one gene, in double precision, exactly as :func:`row_gradients` adds it at every gene.

    With :math:`r = \mu/\theta` and :math:`L = \log(1 + r)`: the difference of the model's precision, with
    :math:`p = r \cdot 1/(1 + r)`, or, where :math:`\mu = r\theta` exceeds ``refine_above``, the precise one.
    """
    if r * theta > refine_above:
        return _zero_count_gap(r)
    return _direct_zero_count_derivative(r, log1p_ratio, one)


@numba.njit(cache=True, inline="always")
def _direct_zero_count_derivative(r, log1p_ratio, one):  # pragma: no cover
    r""":math:`p - L` in the model's precision, returned in double precision.

    :math:`p = r \cdot 1/(1 + r)` as the first loop of :func:`row_gradients` forms it, so that it can be taken back
    exactly.
    """
    return np.float64(r * (one / (one + r)) - log1p_ratio)


@numba.njit(cache=True, inline="always")
def _zero_count_gap(r):  # pragma: no cover
    r""":math:`r/(1 + r) - \log(1 + r)` in double precision (minus ``_zero_count_gap`` of ``_nb_terms``)."""
    r_wide = np.float64(r)  # (float() would keep single precision)
    return r_wide / (1.0 + r_wide) - math.log1p(r_wide)
