r"""Compiled loops over a minibatch's cells for the fused likelihood on the CPU.

:class:`~myvae.module._likelihood._NegativeBinomialSoftmaxLogProb` needs, per cell, a few passes over its genes
(normalise the softmax, form :math:`\mu/\theta`, sum the log-probabilities, form the gradients) and a few over its
non-zero counts (read the logits there, write their terms over the zero-count ones). As torch operations each of
these is one pass over all cells × genes or one indexing kernel, and together they cost more than their arithmetic.
Here each is a loop over one cell's genes, while its row is in the cache, run for the cells in parallel.

The loops are compiled by Numba (which scanpy already needs) on first use and cached on disk, so a process loads
them in a fraction of a second. They run on the OpenMP threads torch uses when Numba's threading layer is OpenMP
(its default where available); elsewhere on Numba's own. Transcendental functions over whole rows (the
exponentials of the softmax, ``log1p``) stay with torch, whose vectorised versions are faster; so do the terms at
the non-zero counts, which need double precision (:mod:`myvae.module._nb_terms`).

Sums over a cell's genes are accumulated in double precision, so they are at least as precise as torch's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

__all__ = ["applies_to", "count_terms_into_rows", "normalise_rows", "row_gradients"]

_FASTMATH = {"reassoc", "contract", "nsz"}
"""Let the compiler reorder sums and fuse multiply-adds (so that the loops vectorise); no unsafe assumptions."""


def applies_to(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loops can run on these tensors: all on the CPU, in single or double precision."""
    return all(t.device.type == "cpu" for t in tensors) and tensors[0].dtype in (torch.float32, torch.float64)


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a NumPy array (no copy; the tensor must be contiguous)."""
    return tensor.detach().numpy()


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def normalise_rows(exps, peak, log_library, inverse_theta, crow, col, logits, ratio, log_mu_at):  # pragma: no cover
    r"""Softmax and :math:`\mu/\theta` of each cell, and :math:`\log\mu` at its non-zero counts.

    ``exps`` holds :math:`2^{(f - \max f)\log_2 e}` and is overwritten by the softmax :math:`\rho`; ``peak`` is each
    row's :math:`\max f`. Writes ``ratio`` (:math:`l\rho/\theta`) and ``log_mu_at`` (:math:`\log l + f -
    \log\sum e^f` at each stored entry of the CSR counts ``crow``, ``col``).
    """
    n_cells, n_genes = exps.shape
    for cell in numba.prange(n_cells):
        total = 0.0
        for gene in range(n_genes):
            total += exps[cell, gene]
        scale = exps.dtype.type(1.0 / total)
        library = exps.dtype.type(math.exp(log_library[cell]))
        for gene in range(n_genes):
            rho = exps[cell, gene] * scale
            exps[cell, gene] = rho
            ratio[cell, gene] = rho * library * inverse_theta[gene]
        shift = log_library[cell] - (math.log(total) + peak[cell])
        for entry in range(crow[cell], crow[cell + 1]):
            log_mu_at[entry] = logits[cell, col[entry]] + shift


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def count_terms_into_rows(
    terms, theta, crow, col, log_prob_at, d_log_theta_at, count_share_at, log_prob, count_share_sum
):  # pragma: no cover
    r"""Each cell's log-probability, from :math:`\log(1 + \mu/\theta)` at every gene and the terms at its counts.

    ``terms`` holds :math:`\log(1 + \mu/\theta)`; at the non-zero counts it is overwritten by
    :math:`-\log p / \theta`, and ``log_prob`` receives :math:`-\sum_g \theta_g\,\mathrm{terms}_g`. With gradients
    (``d_log_theta_at`` not empty), ``d_log_theta_at`` is divided by :math:`\theta` in place and
    ``count_share_sum`` receives the sum of ``count_share_at`` over each cell's counts.
    """
    n_cells, n_genes = terms.shape
    wants_gradient = d_log_theta_at.size > 0
    for cell in numba.prange(n_cells):
        share = 0.0
        for entry in range(crow[cell], crow[cell + 1]):
            gene = col[entry]
            terms[cell, gene] = -log_prob_at[entry] / theta[gene]
            if wants_gradient:
                d_log_theta_at[entry] /= theta[gene]
                share += count_share_at[entry]
        total = 0.0
        for gene in range(n_genes):
            total += theta[gene] * terms[cell, gene]
        log_prob[cell] = -total
        count_share_sum[cell] = share


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def row_gradients(
    ratio,
    log1p_ratio,
    rho,
    theta,
    crow,
    col,
    d_log_theta_over_theta_at,
    count_share_at,
    grad,
    library,
    count_share_sum,
    refine_above,
    grad_logits,
    d_log_theta_over_theta,
):  # pragma: no cover
    r"""The gradient in the logits, and the derivative in :math:`\log\theta` over :math:`\theta` at every entry.

    The same formulas as the torch path of the fused likelihood: with :math:`r = \mu/\theta`, :math:`p = r/(1+r)`,
    :math:`q = 1/(1+r)`, :math:`w = g\,l` and :math:`c = g \sum_h a_h` per cell (``grad`` :math:`g`), the gradient
    is :math:`\rho(w(p - \sum_h\rho_h p_h) - c)` plus :math:`g\,a` at the counts; in cells where
    :math:`\sum_h\rho_h p_h > 1/2` the difference is formed from :math:`q` (see ``_logits_gradient_of_means``).
    The derivative in :math:`\log\theta` over :math:`\theta` is :math:`p - \log(1 + r)` at zero counts (in double
    precision where :math:`\mu` exceeds ``refine_above``, see ``_zero_count_gap``) and
    ``d_log_theta_over_theta_at`` at the counts.
    """
    n_cells, n_genes = ratio.shape
    one = ratio.dtype.type(1.0)
    for cell in numba.prange(n_cells):
        mean = 0.0
        largest_mean = ratio.dtype.type(0.0)
        for gene in range(n_genes):
            r = ratio[cell, gene]
            p = r / (one + r)
            grad_logits[cell, gene] = p
            d_log_theta_over_theta[cell, gene] = p - log1p_ratio[cell, gene]
            mean += rho[cell, gene] * p
            largest_mean = max(largest_mean, r * theta[gene])
        weight = grad[cell] * library[cell]
        if mean > 0.5:  # p near one: p - mean p = -(q - mean q), without cancellation
            mean = 0.0
            for gene in range(n_genes):
                q = one / (one + ratio[cell, gene])
                grad_logits[cell, gene] = q
                mean += rho[cell, gene] * q
            weight = -weight
        offset = grad[cell] * count_share_sum[cell]
        for gene in range(n_genes):
            grad_logits[cell, gene] = rho[cell, gene] * (weight * (grad_logits[cell, gene] - mean) - offset)
        if largest_mean > refine_above:
            for gene in range(n_genes):
                if ratio[cell, gene] * theta[gene] > refine_above:
                    r_wide = np.float64(ratio[cell, gene])  # (float() would keep single precision)
                    d_log_theta_over_theta[cell, gene] = r_wide / (1.0 + r_wide) - math.log1p(r_wide)
        for entry in range(crow[cell], crow[cell + 1]):
            gene = col[entry]
            d_log_theta_over_theta[cell, gene] = d_log_theta_over_theta_at[entry]
            grad_logits[cell, gene] += count_share_at[entry] * grad[cell]
