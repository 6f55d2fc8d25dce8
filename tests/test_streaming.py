"""Counts read from disk in chunks of rows: backed h5ad, zarr and dask inputs, the chunked counts check, and the
streaming data module's passes (each training cell once per epoch, memory bounded, the in-memory split)."""

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from myvae import InputError
from myvae.model._datamodule import split_indices
from myvae.model._streaming import RowChunks, StreamingCountsDataModule, check_counts_in_chunks, is_out_of_core


@pytest.fixture
def backed_adata(small_adata, tmp_path):
    path = tmp_path / "small.h5ad"
    small_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    yield backed
    backed.file.close()


def test_row_chunks_of_a_backed_h5ad_give_the_in_memory_rows(small_adata, backed_adata):
    rows = RowChunks(backed_adata.X, chunk_size=23)
    assert is_out_of_core(backed_adata.X) and not is_out_of_core(small_adata.X)
    assert rows.n_chunks == 4 and rows.bounds(3) == (69, 80)
    read = sparse.vstack([chunk for _, chunk in rows])
    np.testing.assert_array_equal(read.toarray(), small_adata.X.toarray())
    assert read.dtype == np.float32


def test_row_chunks_of_zarr_and_dask_give_the_in_memory_rows(small_adata, tmp_path):
    dask_array = pytest.importorskip("dask.array")
    dense = small_adata.X.toarray()
    matrices = [dask_array.from_array(dense, chunks=(30, -1))]
    if hasattr(ad.experimental, "read_lazy"):  # anndata >= 0.12 (the declared floor, 0.11, has no lazy reader)
        small_adata.write_zarr(tmp_path / "small.zarr")
        matrices.append(ad.experimental.read_lazy(tmp_path / "small.zarr").X)
    for matrix in matrices:
        assert is_out_of_core(matrix)
        read = sparse.vstack([chunk for _, chunk in RowChunks(matrix, chunk_size=17)])
        np.testing.assert_array_equal(read.toarray(), dense)


def test_chunked_counts_check_sums_problems_over_chunks(small_adata, backed_adata):
    check_counts_in_chunks(backed_adata.X, "adata.X", chunk_size=7)
    dense = small_adata.X.toarray()
    dense[[3, 40, 79]] = 0
    with pytest.raises(InputError, match="3 cells have zero total counts in adata.X"):
        check_counts_in_chunks(dense, "adata.X", chunk_size=7)
    dense = small_adata.X.toarray()
    dense[[3, 40], 0] = np.nan
    with pytest.raises(InputError, match="holds 2 NaN or infinite values"):
        check_counts_in_chunks(dense, "adata.X", chunk_size=7)
    with pytest.raises(InputError, match="non-integer values"):
        check_counts_in_chunks(np.log1p(small_adata.X.toarray()), "adata.X", chunk_size=7)
    with pytest.raises(InputError, match="dtype bool"):
        check_counts_in_chunks(small_adata.X.toarray() > 0, "adata.X", chunk_size=7)


def _cells_of(minibatches, counts):
    """The row of `counts` each minibatch row is (counts rows are told apart by their values)."""
    lookup = {counts[i].tobytes(): i for i in range(len(counts))}
    cells = []
    for minibatch in minibatches:
        for row in minibatch[REGISTRY_KEYS.X_KEY].to_dense().numpy():
            cells.append(lookup[row.astype(np.float32).tobytes()])
    return np.asarray(cells)


def test_an_epoch_streams_every_training_cell_once_with_bounded_memory(small_adata, backed_adata):
    counts = small_adata.X.toarray().astype(np.float32)
    assert len({row.tobytes() for row in counts}) == len(counts)
    module = StreamingCountsDataModule(backed_adata.X, batch_size=8, seed=3, chunk_size=10, buffer_chunks=2)
    train_idx, val_idx = split_indices(80, 0.9, 3)
    np.testing.assert_array_equal(module.train_idx, train_idx)

    loader = module.train_dataloader()
    first = _cells_of(loader, counts)
    second = _cells_of(module.train_dataloader(), counts)
    for epoch in (first, second):
        np.testing.assert_array_equal(np.sort(epoch), np.sort(train_idx))
    assert not np.array_equal(first, second)  # shuffled anew each epoch
    assert len(list(module.train_dataloader())) == len(module.train_dataloader()) == 9
    assert 0 < loader.largest_buffer <= 2 * 10 + 8

    validation = _cells_of(module.val_dataloader(), counts)
    np.testing.assert_array_equal(np.sort(validation), np.sort(val_idx))


def test_with_every_chunk_in_one_buffer_the_minibatches_are_those_of_the_in_memory_module(small_adata, backed_adata):
    from myvae.model._datamodule import CountsDataModule

    streaming = StreamingCountsDataModule(backed_adata.X, batch_size=8, seed=5, chunk_size=16, buffer_chunks=5)
    in_memory = CountsDataModule(small_adata.X, batch_size=8, seed=5)
    for _ in range(2):  # two epochs: the generators stay in step
        for loader in ("train_dataloader", "val_dataloader"):
            streamed, held = getattr(streaming, loader)(), getattr(in_memory, loader)()
            for a, b in zip(streamed, held, strict=True):
                torch.testing.assert_close(a[REGISTRY_KEYS.X_KEY].to_dense(), b[REGISTRY_KEYS.X_KEY].to_dense())


def test_streamed_minibatches_carry_each_cells_batch(small_adata):
    batches = np.arange(80) % 3
    module = StreamingCountsDataModule(small_adata.X, batch_index=batches, batch_size=16, chunk_size=9)
    counts = small_adata.X.toarray().astype(np.float32)
    for minibatch in module.train_dataloader():
        cells = _cells_of([minibatch], counts)
        np.testing.assert_array_equal(minibatch[REGISTRY_KEYS.BATCH_KEY].ravel(), torch.as_tensor(batches[cells]))
    assert module.n_batch == 3


def test_streamed_rows_for_inference_come_in_increasing_order(small_adata, backed_adata):
    from myvae.model._streaming import streamed_rows

    counts = small_adata.X.toarray().astype(np.float32)
    indices = np.array([2, 5, 6, 40, 41, 79])
    np.testing.assert_array_equal(_cells_of(streamed_rows(backed_adata.X, indices, batch_size=4), counts), indices)
    np.testing.assert_array_equal(_cells_of(streamed_rows(backed_adata.X, None, batch_size=32), counts), np.arange(80))
    with pytest.raises(InputError, match="increasing order without repeats"):
        streamed_rows(backed_adata.X, np.array([5, 2]), batch_size=4)
