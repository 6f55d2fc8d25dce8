"""The streaming data module's passes over counts on disk: each training cell once per epoch, memory bounded, the
in-memory split and minibatches, the batch codes, and inference reads in increasing order."""

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from myvae import InputError
from myvae.model._datamodule import split_indices
from myvae.model._streaming import StreamingCountsDataModule


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

    # the training cells read from disk but not yet handed out: at most two chunks' worth plus a minibatch
    read_training_cells, held = [0], []
    read_chunks = module.rows.read_chunks

    def counting_read_chunks(chunks, **kwargs):
        for start, stop in map(module.rows.bounds, chunks):
            read_training_cells[0] += np.count_nonzero((train_idx >= start) & (train_idx < stop))
        return read_chunks(chunks, **kwargs)

    module.rows.read_chunks = counting_read_chunks
    first = []
    for minibatch in module.train_dataloader():
        held.append(read_training_cells[0] - len(first))
        first.extend(_cells_of([minibatch], counts))
    assert 0 < max(held) <= 2 * 10 + 8
    second = _cells_of(module.train_dataloader(), counts)
    for epoch in (first, second):
        np.testing.assert_array_equal(np.sort(epoch), np.sort(train_idx))
    assert not np.array_equal(first, second)  # shuffled anew each epoch
    assert len(list(module.train_dataloader())) == len(module.train_dataloader()) == 9

    validation = _cells_of(module.val_dataloader(), counts)
    np.testing.assert_array_equal(np.sort(validation), np.sort(val_idx))


def test_a_group_of_chunks_is_read_over_the_previous_one(backed_adata):
    """Memory holds one group of chunks: each is read into the arrays of the one before, or those are freed."""
    import weakref

    module = StreamingCountsDataModule(backed_adata.X, batch_size=8, seed=3, chunk_size=10, buffer_chunks=2)
    minibatches = module.train_dataloader()
    groups, reused, read_group = [], [], minibatches._read_group

    def owner(values):
        while isinstance(values.base, np.ndarray):  # the array that owns the memory (views of it keep it alive)
            values = values.base
        return values

    def recording_read_group(*args):
        buffer = read_group(*args)
        values = owner(buffer.counts.data)
        earlier = [group() for group in groups]
        assert all(group is None or group is values for group in earlier), "an earlier group is still in memory"
        reused.append(any(group is values for group in earlier))
        groups.append(weakref.ref(values))
        return buffer

    minibatches._read_group = recording_read_group
    held = []
    for minibatch in minibatches:
        held = [*held[-1:], minibatch]  # the minibatch of the step and the one fetched ahead, as Lightning holds them
        group = groups[-1]()
        # the minibatches have arrays of their own, which the next group, read over this one, leaves as they are
        assert group is None or not any(np.shares_memory(group, batch["X"].values().numpy()) for batch in held)
        del group  # not kept alive by the test
    assert len(groups) == 4 and len(held) == 2
    assert any(reused)  # read into the same arrays rather than new ones


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
    seen = set()
    for minibatch in module.train_dataloader():
        cells = _cells_of([minibatch], counts)
        np.testing.assert_array_equal(minibatch[REGISTRY_KEYS.BATCH_KEY].ravel(), torch.as_tensor(batches[cells]))
        seen.update(minibatch[REGISTRY_KEYS.BATCH_KEY].ravel().tolist())
    assert seen == {0, 1, 2}


def test_streamed_rows_for_inference_come_in_increasing_order(small_adata, backed_adata):
    from myvae.model._streaming import streamed_rows

    counts = small_adata.X.toarray().astype(np.float32)
    indices = np.array([2, 5, 6, 40, 41, 79])
    np.testing.assert_array_equal(_cells_of(streamed_rows(backed_adata.X, indices, batch_size=4), counts), indices)
    np.testing.assert_array_equal(_cells_of(streamed_rows(backed_adata.X, None, batch_size=32), counts), np.arange(80))
    with pytest.raises(InputError, match="increasing order without repeats"):
        streamed_rows(backed_adata.X, np.array([5, 2]), batch_size=4)


def test_an_inference_pass_of_views_over_several_chunks_reads_each_into_the_same_memory(small_adata, backed_adata):
    """Views share the chunk read (used one at a time, they are right); copies can all be kept."""
    from myvae._counts import RowChunks
    from myvae.model._streaming import StreamedMinibatches

    counts = small_adata.X.toarray().astype(np.float32)
    rows = RowChunks(backed_adata.X, chunk_size=16)
    views = StreamedMinibatches(rows, np.arange(80), 8, buffer_chunks=1, views=True)
    values = []
    for first, minibatch in zip(range(0, 80, 8), views, strict=True):
        np.testing.assert_array_equal(minibatch[REGISTRY_KEYS.X_KEY].to_dense().numpy(), counts[first : first + 8])
        values.append(minibatch[REGISTRY_KEYS.X_KEY].values())
    # minibatches of different chunks (two minibatches each) are views of the same memory, read into again
    pairs = [(a, b) for a in range(len(values)) for b in range(a + 1, len(values)) if a // 2 != b // 2]
    assert any(np.shares_memory(values[a].numpy(), values[b].numpy()) for a, b in pairs)

    copies = list(StreamedMinibatches(rows, np.arange(80), 8, buffer_chunks=1))
    dense = torch.cat([minibatch[REGISTRY_KEYS.X_KEY].to_dense() for minibatch in copies]).numpy()
    np.testing.assert_array_equal(dense, counts)


def test_an_ordered_pass_reads_the_source_without_changing_it(small_adata):
    """A pass in order hands a chunk on without gathering it; minibatches drop stored zeros from a copy."""
    da = pytest.importorskip("dask.array")
    from scipy import sparse

    from myvae.model._streaming import streamed_rows

    counts = sparse.csr_matrix(small_adata.X, dtype=np.float32, copy=True)
    counts.data[::7] = 0.0  # stored zeros
    before = [array.copy() for array in (counts.data, counts.indices, counts.indptr)]
    lazy = da.from_array(counts, chunks=(40, counts.shape[1]), asarray=False)
    minibatches = list(streamed_rows(lazy, None, batch_size=16))
    for array, was in zip((counts.data, counts.indices, counts.indptr), before, strict=True):
        np.testing.assert_array_equal(array, was)
    values = torch.cat([minibatch[REGISTRY_KEYS.X_KEY].values() for minibatch in minibatches])
    assert len(values) == counts.count_nonzero() and bool((values != 0).all())
    dense = torch.cat([minibatch[REGISTRY_KEYS.X_KEY].to_dense() for minibatch in minibatches]).numpy()
    np.testing.assert_array_equal(dense, counts.toarray())
