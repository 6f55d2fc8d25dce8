"""The sparse first layer and the per-row sums read only a minibatch's non-zero counts, and agree with dense math."""

import numpy as np
import pytest
import torch
from scipy import sparse

from myvae.module import _sparse
from myvae.module._sparse import _narrowest_index_dtype, row_sums, sparse_linear, sums_per_row


@pytest.fixture
def counts(small_adata) -> torch.Tensor:
    """Real counts: the first 12 cells and 40 genes of the bundled PBMC subset, one cell emptied."""
    x = torch.tensor(sparse.csr_matrix(small_adata.X[:12, :40]).toarray(), dtype=torch.float32)
    x[3] = 0.0
    return x


@pytest.fixture(params=["compiled", "torch operations"])
def grouping(request, monkeypatch) -> str:
    """Run a test of the backward pass once with the compiled grouping by feature (the CPU default), once without."""
    monkeypatch.setattr(_sparse, "_COMPILED_GROUPING", request.param == "compiled")
    return request.param


def _layers(n_genes: int, widths: tuple[int, ...], seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(n_genes, w, generator=generator, dtype=torch.float64).requires_grad_() for w in widths]
    biases = [torch.randn(w, generator=generator, dtype=torch.float64).requires_grad_() for w in widths]
    return weights, biases


@pytest.mark.usefixtures("grouping")
def test_sparse_linear_of_several_layers_equals_the_dense_product_with_each_layers_own_gradient(counts):
    x = counts.double()
    weights, biases = _layers(x.shape[1], (5, 3))
    sparse_out = sparse_linear(x.to_sparse_csr(), weights, biases, values=torch.log1p(x.to_sparse_csr().values()))
    dense_out = torch.log1p(x) @ torch.cat(weights, dim=1) + torch.cat(biases)
    torch.testing.assert_close(sparse_out, dense_out)
    upstream = torch.randn_like(dense_out, generator=torch.Generator().manual_seed(1))
    sparse_grads = torch.autograd.grad(sparse_out, [*weights, *biases], upstream)
    dense_grads = torch.autograd.grad(dense_out, [*weights, *biases], upstream)
    for got, expected in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected)
        assert got.is_contiguous()  # each weight's gradient in its own layout: nothing to copy when accumulating


@pytest.mark.usefixtures("grouping")
def test_sparse_linear_of_one_layer_passes_gradcheck(counts):
    x = counts.double().to_sparse_csr()
    weights, biases = _layers(x.shape[1], (4,))
    assert torch.autograd.gradcheck(lambda w, b: sparse_linear(x, w, b), (weights[0], biases[0]))


def test_both_groupings_by_feature_give_the_transpose_in_the_same_order(counts, monkeypatch):
    x = counts.clone()
    x[:, 5] = 0.0  # a feature without entries, besides the empty cell
    x = x.to_sparse_csr()
    grouped = {}
    for compiled in (True, False):
        monkeypatch.setattr(_sparse, "_COMPILED_GROUPING", compiled)
        grouped[compiled] = _sparse._entries_by_feature(x.crow_indices(), x.col_indices(), x.values(), x.shape[1])
    transpose = sparse.csr_matrix(x.to_dense().numpy()).T.tocsr()  # scipy keeps each column's rows in order
    for got in grouped.values():
        rows, values, starts = (t.numpy() for t in got)
        np.testing.assert_array_equal(rows, transpose.indices)
        np.testing.assert_array_equal(values, transpose.data)
        np.testing.assert_array_equal(starts, transpose.indptr[:-1])


def test_the_grouping_by_feature_of_half_precision_values_takes_torch_operations(counts):
    x = counts.to_sparse_csr()
    values = x.values().to(torch.bfloat16)  # NumPy has no bfloat16: the compiled grouping does not apply
    rows, grouped, starts = _sparse._entries_by_feature(x.crow_indices(), x.col_indices(), values, x.shape[1])
    transpose = sparse.csr_matrix(counts.numpy()).T.tocsr()
    np.testing.assert_array_equal(rows.numpy(), transpose.indices)
    np.testing.assert_array_equal(grouped.float().numpy(), transpose.data)
    np.testing.assert_array_equal(starts.numpy(), transpose.indptr[:-1])


def test_sparse_linear_wants_one_bias_per_weight(counts):
    weights, biases = _layers(counts.shape[1], (2, 2))
    with pytest.raises(ValueError, match="2 weights and 1 biases; pass one bias per weight"):
        sparse_linear(counts.double().to_sparse_csr(), weights, biases[:1])


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_sums_per_row_add_each_rows_entries_including_empty_rows(counts, layout):
    x = counts if layout == "dense" else counts.to_sparse_csr()
    rows, cols = torch.nonzero(counts, as_tuple=True)
    entry_values = counts[rows, cols] * (cols + 1)  # something per entry other than the counts themselves
    expected = torch.zeros(counts.shape[0]).index_add_(0, rows, entry_values)
    torch.testing.assert_close(sums_per_row(x, entry_values), expected)
    torch.testing.assert_close(row_sums(x), counts.sum(dim=-1, keepdim=True))
    assert row_sums(x)[3].item() == 0.0


@pytest.mark.parametrize(
    ("n", "dtype"),
    [(2, torch.int16), (2**15, torch.int16), (2**15 + 1, torch.int32), (2**31, torch.int32), (2**31 + 1, torch.int64)],
)
def test_sort_keys_are_the_narrowest_integers_that_hold_every_feature(n, dtype):
    assert _narrowest_index_dtype(n) == dtype
    assert np.iinfo(np.dtype(str(dtype).removeprefix("torch."))).max >= n - 1


@pytest.mark.parametrize("layout", ["dense", "csr"])
@pytest.mark.parametrize("times", [1, 3])
def test_repeat_rows_stacks_the_cells_as_repeat_does(counts, layout, times):
    x = counts
    given = x if layout == "dense" else _sparse.as_sparse_csr(x)
    stacked = _sparse.repeat_rows(given, times)
    assert (stacked.layout == torch.sparse_csr) == (layout == "csr")
    dense = stacked.to_dense() if layout == "csr" else stacked
    torch.testing.assert_close(dense, x.repeat(times, 1), rtol=0, atol=0)
