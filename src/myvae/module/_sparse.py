"""Counts as their non-zero entries: what the encoder's first layer and the likelihood need from a minibatch.

Single-cell counts are mostly zeros (about 92% in PBMC 3k's highly variable genes). A minibatch may come as a dense
tensor (scvi-tools' data loaders) or as a sparse CSR tensor (myvae's own data module); either way the model reads
it through :func:`nonzero_entries`, and the first layer of the encoder multiplies only the non-zero entries.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numba
import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "as_sparse_csr",
    "is_sparse_csr",
    "load_compiled_grouping",
    "nonzero_entries",
    "repeat_rows",
    "row_sums",
    "sparse_linear",
    "sums_per_row",
]

_COMPILED_GROUPING = True
"""Whether the backward pass of :func:`sparse_linear` groups the entries by feature with a compiled loop on the CPU.

Elsewhere, for values NumPy cannot hold (half precision) and with this off (as a test does to compare them), it
sorts them with torch operations, in the same order.
"""


def is_sparse_csr(x: torch.Tensor) -> bool:
    """Whether ``x`` is a sparse CSR tensor."""
    return x.layout == torch.sparse_csr


def as_sparse_csr(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a sparse CSR tensor (itself if it is one), without torch's warning that the layout is in beta."""
    if is_sparse_csr(x):
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return x.to_sparse_csr()


def repeat_rows(x: torch.Tensor, times: int) -> torch.Tensor:
    """``x`` stacked ``times`` times along the cells (as ``x.repeat(times, 1)``), dense or sparse CSR as ``x`` is."""
    if not is_sparse_csr(x):
        return x.repeat(times, 1)
    crow, n_entries = x.crow_indices(), x.values().numel()
    offsets = torch.arange(times, device=crow.device, dtype=crow.dtype).unsqueeze(1) * n_entries
    stacked_crow = torch.cat([(crow[:-1] + offsets).reshape(-1), crow[-1:] + (times - 1) * n_entries])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            stacked_crow, x.col_indices().repeat(times), x.values().repeat(times), (times * x.shape[0], x.shape[1])
        )


def _row_ids(crow_indices: torch.Tensor) -> torch.Tensor:
    """The row of each stored entry of a CSR matrix, from its row pointers."""
    n_rows = crow_indices.numel() - 1
    return torch.repeat_interleave(torch.arange(n_rows, device=crow_indices.device), crow_indices.diff())


def nonzero_entries(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, columns and values of the non-zero entries of a cells × genes matrix, row by row.

    Parameters
    ----------
    x
        Dense tensor or sparse CSR tensor (stored zeros, if any, are kept; they change nothing downstream).
    """
    if is_sparse_csr(x):
        return _row_ids(x.crow_indices()), x.col_indices(), x.values()
    rows, cols = torch.nonzero(x, as_tuple=True)
    return rows, cols, x[rows, cols]


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """The sum of each row of a dense or sparse CSR matrix, as a column (rows × 1)."""
    if not is_sparse_csr(x):
        return x.sum(dim=-1, keepdim=True)
    return sums_per_row(x, x.values()).unsqueeze(-1)


def sums_per_row(x: torch.Tensor, entry_values: torch.Tensor) -> torch.Tensor:
    """The sum over each row of ``x`` of values given per non-zero entry, in the order of :func:`nonzero_entries`.

    The entries come row by row, so each row's values are one segment of ``entry_values`` (summed segment by
    segment: an ``index_add_`` into a few hundred rows would make every thread write to the same few places).

    Parameters
    ----------
    x
        Dense tensor or sparse CSR tensor, rows × columns.
    entry_values
        One value per non-zero entry of ``x``.
    """
    if is_sparse_csr(x):
        lengths = x.crow_indices().diff()
    else:
        lengths = torch.count_nonzero(x, dim=-1)
    return torch.segment_reduce(entry_values, "sum", lengths=lengths)


def sparse_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor | Sequence[torch.Tensor],
    bias: torch.Tensor | Sequence[torch.Tensor],
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``x @ weight_t + bias`` for a sparse CSR ``x``, touching only its non-zero entries.

    The product is a weighted ``embedding_bag`` over the rows of :math:`W^\top` (one bag per cell). Its gradient
    in the weight, :math:`x^\top g`, is another ``embedding_bag``, over the rows of the output gradient with the
    entries grouped by gene. No gradient flows to ``x`` (it is data).

    Parameters
    ----------
    x
        Sparse CSR input, cells × features.
    weight_t
        Transposed weight :math:`W^\top`, features × outputs, contiguous; or several, for layers that read the
        same input side by side: their outputs are concatenated, the entries are grouped by gene once for all of
        them, and each weight gets its own (contiguous) gradient.
    bias
        Bias, one per output; or one per weight.
    values
        Values to use in place of ``x``'s stored values (a transform of them that keeps zeros at zero, such as
        ``log1p``), so that no second sparse tensor has to be built.
    """
    values = x.values() if values is None else values
    weights = (weight_t,) if isinstance(weight_t, torch.Tensor) else tuple(weight_t)
    biases = (bias,) if isinstance(bias, torch.Tensor) else tuple(bias)
    if len(weights) != len(biases):
        raise ValueError(
            f"sparse_linear got {len(weights)} weights and {len(biases)} biases; pass one bias per weight."
        )
    return _SparseLinear.apply(x.crow_indices(), x.col_indices(), values, len(weights), *weights, *biases)


def _narrowest_index_dtype(n: int) -> torch.dtype:
    """The narrowest integer dtype that holds 0, ..., n - 1 (torch sorts 16-bit keys faster than 32- or 64-bit)."""
    return torch.int16 if n <= 2**15 else torch.int32 if n <= 2**31 else torch.int64


class _SparseLinear(torch.autograd.Function):
    """Forward and backward of :func:`sparse_linear` on the CSR arrays of ``x``, for one or more weights."""

    @staticmethod
    def forward(
        ctx,
        crow_indices: torch.Tensor,
        col_indices: torch.Tensor,
        values: torch.Tensor,
        n_layers: int,
        *weights_and_biases: torch.Tensor,
    ) -> torch.Tensor:
        weights, biases = weights_and_biases[:n_layers], weights_and_biases[n_layers:]
        offsets = crow_indices[:-1]
        outputs = [
            F.embedding_bag(col_indices, weight_t, offsets, mode="sum", per_sample_weights=values).add_(bias)
            for weight_t, bias in zip(weights, biases, strict=True)
        ]
        ctx.save_for_backward(crow_indices, col_indices, values)
        ctx.n_features = weights[0].shape[0]
        ctx.widths = [weight_t.shape[1] for weight_t in weights]
        return outputs[0] if n_layers == 1 else torch.cat(outputs, dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        crow_indices, col_indices, values = ctx.saved_tensors
        n_layers = len(ctx.widths)
        grads = grad.split(ctx.widths, dim=-1)
        weights_need = ctx.needs_input_grad[4 : 4 + n_layers]
        biases_need = ctx.needs_input_grad[4 + n_layers :]
        grad_weights = [None] * n_layers
        if any(weights_need):
            # entries grouped by feature: row (weight) i of x^T g sums values * grad[row] over feature i's entries
            rows, values_by_feature, offsets = _entries_by_feature(crow_indices, col_indices, values, ctx.n_features)
            for k, (needed, grad_k) in enumerate(zip(weights_need, grads, strict=True)):
                if needed:
                    grad_weights[k] = F.embedding_bag(
                        rows, grad_k.contiguous(), offsets, mode="sum", per_sample_weights=values_by_feature
                    )
        grad_biases = [grad_k.sum(dim=0) if needed else None for needed, grad_k in zip(biases_need, grads, strict=True)]
        return None, None, None, None, *grad_weights, *grad_biases


def _entries_by_feature(
    crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor, n_features: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The entries of a CSR matrix grouped by feature (column), row by row within each (the transpose's CSR arrays).

    Returns their rows, their values and where each feature's entries start.
    """
    on_cpu = all(t.device.type == "cpu" for t in (crow_indices, col_indices, values))
    if _COMPILED_GROUPING and on_cpu and values.dtype in (torch.float32, torch.float64):
        starts = torch.empty(n_features, dtype=col_indices.dtype)
        rows, values_by_feature = torch.empty_like(col_indices), torch.empty_like(values)
        crow_indices, col_indices, values = (t.detach().contiguous() for t in (crow_indices, col_indices, values))
        _group_by_feature(
            crow_indices.numpy(), col_indices.numpy(), values.numpy(),
            starts.numpy(), rows.numpy(), values_by_feature.numpy(),
        )  # fmt: skip
        return rows, values_by_feature, starts
    by_feature = torch.argsort(col_indices.to(_narrowest_index_dtype(n_features)), stable=True)
    entries_per_feature = torch.bincount(col_indices, minlength=n_features)
    starts = torch.cumsum(entries_per_feature, 0) - entries_per_feature
    return _row_ids(crow_indices).index_select(0, by_feature), values.index_select(0, by_feature), starts


@numba.njit(cache=True)
def _group_by_feature(crow_indices, col_indices, values, starts, rows, values_by_feature):  # pragma: no cover
    """:func:`_entries_by_feature` as one counting sort (a pass to count each feature's entries, one to place them).

    Writes ``starts`` (one per feature), ``rows`` and ``values_by_feature`` (one per entry).
    """
    n_features = starts.shape[0]
    next_position = np.zeros(n_features + 1, dtype=starts.dtype)
    for entry in range(col_indices.shape[0]):
        next_position[col_indices[entry] + 1] += 1
    for feature in range(n_features):
        next_position[feature + 1] += next_position[feature]
        starts[feature] = next_position[feature]
    for row in range(crow_indices.shape[0] - 1):
        for entry in range(crow_indices[row], crow_indices[row + 1]):
            position = next_position[col_indices[entry]]
            rows[position], values_by_feature[position] = row, values[entry]
            next_position[col_indices[entry]] = position + 1


def load_compiled_grouping() -> None:
    """Load the compiled loop of :func:`sparse_linear`'s backward pass now (compiling it if it is not cached yet).

    Training on the CPU calls this before its first epoch, so that the first step does not pay for it.
    """
    x = as_sparse_csr(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    _entries_by_feature(x.crow_indices(), x.col_indices(), x.values(), 2)
