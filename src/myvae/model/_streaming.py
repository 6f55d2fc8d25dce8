"""Counts read from disk in contiguous chunks of rows, for data larger than memory.

:class:`~myvae._counts.RowChunks` reads a counts matrix — in memory, the ``X`` of an AnnData opened with
``backed="r"`` (HDF5 CSR/CSC datasets or dense HDF5 datasets), a zarr array, or a dask array — a block of
consecutive cells at a time, as a SciPy CSR matrix. :class:`StreamingCountsDataModule` trains from it with bounded
memory: each epoch visits the chunks in a random order, keeps a buffer of a few chunks, shuffles the cells inside
the buffer and slices minibatches from it, as :class:`~myvae.model.CountsDataModule` does for counts held in
memory. Under distributed training each process reads only its own block of consecutive cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from math import ceil
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from myvae._counts import DEFAULT_CHUNK_SIZE, ReusedArrays, RowChunks
from myvae._docs import doc_params
from myvae._exceptions import InputError
from myvae.model._datamodule import SPLIT_DOC, BaseCountsDataModule, csr_rows_tensor, float32_csr

__all__ = ["StreamedMinibatches", "StreamingCountsDataModule", "streamed_rows"]


class StreamedMinibatches:
    """One pass over chosen rows of a :class:`~myvae._counts.RowChunks`, in minibatches of sparse CSR counts.

    The chunks holding the chosen rows are read in groups of ``buffer_chunks``; each group's chosen rows keep the
    order they have in ``indices`` and, with ``shuffle``, are permuted together, the groups coming in a random
    order. Minibatches that straddle two groups carry the remainder over, so every minibatch but the last has
    ``batch_size`` cells and every chosen row comes once. When every chunk fits in one group, a pass draws exactly
    the permutation that :class:`~myvae.model.CountsDataModule` draws for the same generator, so training from disk
    and from memory see the same minibatches.

    Parameters
    ----------
    rows
        The counts.
    indices
        The rows to pass over, without repeats.
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle the groups of chunks and the rows within each group.
    buffer_chunks
        Chunks read and shuffled together.
    generator
        Source of the shuffling.
    batch_index
        Batch code of every row (rows × 1), added to each minibatch when given.
    max_minibatches
        Stop after this many minibatches (``None``: pass over every chosen row).
    views
        Hand out minibatches of consecutive rows as views of the group of chunks read, without copying them: for a
        consumer that is done with each minibatch before it asks for the next (inference), since the next group is
        read into the same arrays.
    """

    def __init__(
        self,
        rows: RowChunks,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        buffer_chunks: int = 8,
        generator: torch.Generator | None = None,
        batch_index: torch.Tensor | None = None,
        max_minibatches: int | None = None,
        views: bool = False,
    ):
        self.rows = rows
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.buffer_chunks = buffer_chunks
        self.generator = generator
        self.batch_index = batch_index
        self.max_minibatches = max_minibatches
        self.views = views

    def __len__(self) -> int:
        n_minibatches = ceil(len(self.indices) / self.batch_size)
        return n_minibatches if self.max_minibatches is None else min(n_minibatches, self.max_minibatches)

    def _groups(self) -> list[np.ndarray]:
        chunks = np.arange(self.rows.n_chunks)
        if self.shuffle and self.rows.n_chunks > self.buffer_chunks:
            chunks = chunks[torch.randperm(len(chunks), generator=self.generator).numpy()]
        return [chunks[first : first + self.buffer_chunks] for first in range(0, len(chunks), self.buffer_chunks)]

    def _buffers(self) -> Iterator[_Buffer]:
        """Groups of chunks, each read whole, with the order in which the pass takes its chosen rows.

        Each group is read into the arrays of the one before (stored CSR counts), which the pass has let go of: every
        minibatch has arrays of its own.
        """
        arrays = ReusedArrays()
        rows_by_chunk = self._rows_by_chunk()
        for group in self._groups():
            members = np.sort(np.concatenate([rows_by_chunk[chunk] for chunk in group]))
            buffer = self._read_group(self.indices[members], arrays)
            if buffer is not None:
                yield buffer
            del buffer  # the consumer has let go of it too

    def _rows_by_chunk(self) -> list[np.ndarray]:
        """For each chunk, the positions in ``indices`` of the chosen rows it holds (found once per pass)."""
        chunk_of_row = self.indices // self.rows.chunk_size
        by_chunk = np.argsort(chunk_of_row, kind="stable")
        bounds = np.searchsorted(chunk_of_row[by_chunk], np.arange(self.rows.n_chunks + 1))
        return [by_chunk[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]

    def _read_group(self, cells: np.ndarray, arrays: ReusedArrays) -> _Buffer | None:
        """The chunks holding ``cells`` (chosen rows, in the order of ``indices``), and where each cell is among them.

        ``None`` if there are no cells. Memory holds one copy of these chunks, read into ``arrays``.
        """
        if not len(cells):
            return None
        needed = np.unique(cells // self.rows.chunk_size)
        chunk_sizes = [stop - start for start, stop in map(self.rows.bounds, needed)]
        offsets = np.concatenate([[0], np.cumsum(chunk_sizes)])
        positions = offsets[np.searchsorted(needed, cells // self.rows.chunk_size)] + cells % self.rows.chunk_size
        if self.shuffle:
            permutation = torch.randperm(len(cells), generator=self.generator).numpy()
            cells, positions = cells[permutation], positions[permutation]
        counts = float32_csr(self.rows.read_chunks(needed, into=arrays), owned=True)
        if not np.array_equal(positions, np.arange(counts.shape[0])):
            return _Buffer(counts, cells, positions)
        if not self.views:
            return _Buffer(counts, cells, None)
        # the column indices as torch takes them, converted once for the group rather than once per minibatch
        wide_indices = arrays.take("wide_indices", counts.nnz, np.dtype(np.int64))
        wide_indices[:] = counts.indices
        return _Buffer(counts, cells, None, wide_indices)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.max_minibatches is None:
            # run to its end, so that the arrays the groups were read into are freed at once (not when the
            # suspended pass is collected: the training pass would otherwise hold them through validation)
            return self._pass()
        return islice(self._pass(), len(self))

    def _pass(self) -> Iterator[dict[str, torch.Tensor]]:
        carried: tuple[sparse.csr_matrix, np.ndarray] | None = None  # rows short of a minibatch, from earlier groups
        for buffer in self._buffers():
            start, n_cells = 0, len(buffer.cells)
            if carried is not None:  # the straddling minibatch: the rows carried over, then this group's first
                start = min(self.batch_size - carried[0].shape[0], n_cells)
                head = sparse.vstack([carried[0], buffer.rows(0, start)], format="csr")
                carried = head, np.concatenate([carried[1], buffer.cells[:start]])
                if head.shape[0] == self.batch_size:
                    yield self._minibatch(csr_rows_tensor(head), carried[1])
                    carried = None
                del head
            stop = start + (n_cells - start) // self.batch_size * self.batch_size
            for first in range(start, stop, self.batch_size):
                last = first + self.batch_size
                yield self._minibatch(buffer.tensor(first, last), buffer.cells[first:last])
            if stop < n_cells:
                carried = buffer.rows(stop, n_cells), buffer.cells[stop:].copy()
            del buffer  # before the next group is read into its arrays
        if carried is not None:
            yield self._minibatch(csr_rows_tensor(carried[0]), carried[1])

    def _minibatch(self, counts: torch.Tensor, cells: np.ndarray) -> dict[str, torch.Tensor]:
        """The minibatch of these counts (a sparse CSR tensor) and cells."""
        tensors = {REGISTRY_KEYS.X_KEY: counts}
        if self.batch_index is not None:
            tensors[REGISTRY_KEYS.BATCH_KEY] = self.batch_index[torch.as_tensor(cells)]
        return tensors


class _Buffer(NamedTuple):
    """One group's chunks as read (``counts``) and the chosen cells in the order of the pass (``cells``).

    ``order`` holds each chosen cell's row of ``counts``; it is ``None`` when they are all its rows, in order.
    ``wide_indices``, given when minibatches are views of ``counts``, are its column indices as 64-bit integers.
    """

    counts: sparse.csr_matrix
    cells: np.ndarray
    order: np.ndarray | None
    wide_indices: np.ndarray | None = None

    def rows(self, first: int, last: int) -> sparse.csr_matrix:
        """The pass's rows ``first:last`` of ``counts``, in arrays of their own (SciPy copies slices too)."""
        if self.order is None:
            return self.counts[first:last]
        return self.counts[self.order[first:last]]

    def tensor(self, first: int, last: int) -> torch.Tensor:
        """The pass's rows ``first:last`` as a sparse CSR tensor (a view of ``counts`` given ``wide_indices``)."""
        if self.order is not None:
            return csr_rows_tensor(self.rows(first, last))
        if self.wide_indices is not None:
            return csr_rows_tensor(self.counts, first, last, wide_indices=self.wide_indices)
        return csr_rows_tensor(self.counts, first, last, copy=True)


@doc_params(split=SPLIT_DOC)
class StreamingCountsDataModule(BaseCountsDataModule):
    """Training and validation minibatches read from disk a few chunks at a time, with bounded memory.

    The cells are split as :class:`~myvae.model.CountsDataModule` splits them for the same seed, so both modules
    train on the same cells; only the order within an epoch differs (shuffled within a buffer of chunks here).

    Under distributed training (``world_size`` > 1) the training and the validation cells, in row order, are cut
    into one block of consecutive cells per process; each process reads and shuffles only its block, so the
    reading is shared out too. Every process takes as many training steps as the smallest block allows (the blocks
    differ by at most one cell), as DDP requires.

    Parameters
    ----------
    counts
        Cells × genes counts, anything :class:`~myvae._counts.RowChunks` reads.
    {split}
    chunk_size
        Consecutive cells read from disk at a time.
    buffer_chunks
        Chunks shuffled together: at most ``buffer_chunks * chunk_size`` cells (plus one minibatch) are in memory.
    """

    def __init__(
        self,
        counts: Any,
        *,
        batch_index: np.ndarray | None = None,
        train_size: float = 0.9,
        batch_size: int = 128,
        seed: int | None = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        buffer_chunks: int = 8,
    ):
        self.rows = RowChunks(counts, chunk_size)
        super().__init__(
            self.rows.n_obs, batch_index=batch_index, train_size=train_size, batch_size=batch_size, seed=seed
        )
        self.buffer_chunks = buffer_chunks

    def _minibatches(self, indices: np.ndarray, shuffle: bool, rank: int, world_size: int) -> StreamedMinibatches:
        max_minibatches = None
        if world_size > 1:
            blocks = np.array_split(np.sort(indices), world_size)
            indices = blocks[rank]
            if shuffle:
                max_minibatches = ceil(min(len(block) for block in blocks) / self.batch_size)
        return StreamedMinibatches(
            self.rows,
            indices,
            self.batch_size,
            shuffle=shuffle,
            buffer_chunks=self.buffer_chunks,
            generator=self.generator,
            batch_index=self.batch_index,
            max_minibatches=max_minibatches,
        )


def streamed_rows(
    counts: Any,
    indices: np.ndarray | None,
    batch_size: int,
    batch_index: torch.Tensor | None = None,
    *,
    views: bool = False,
) -> StreamedMinibatches:
    """Minibatches of the given cells of an on-disk matrix, in increasing order, for inference.

    Parameters
    ----------
    counts
        Cells × genes counts, anything :class:`~myvae._counts.RowChunks` reads.
    indices
        Cells to read, strictly increasing; ``None`` for every cell.
    batch_size
        Cells per minibatch.
    batch_index
        Batch code of every cell (cells × 1), if the model has batches.
    views
        Hand out views of the chunk read rather than copies: each minibatch must be used before the next is taken,
        since the next chunk is read into the same memory.
    """
    rows = RowChunks(counts)
    if indices is None:
        indices = np.arange(rows.n_obs)
    indices = np.asarray(indices)
    if len(indices) > 1 and not np.all(np.diff(indices) > 0):
        raise InputError(
            "For counts read from disk, pass indices= in increasing order without repeats, e.g. "
            "`np.unique(indices)`; the cells come back in that order."
        )
    # an ordered pass needs no shuffling buffer: one chunk in memory at a time
    return StreamedMinibatches(rows, indices, batch_size, buffer_chunks=1, batch_index=batch_index, views=views)
