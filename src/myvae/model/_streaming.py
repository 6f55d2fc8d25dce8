"""Counts read from disk in contiguous chunks of rows, for data larger than memory.

:class:`RowChunks` reads a counts matrix — in memory, the ``X`` of an AnnData opened with ``backed="r"`` (HDF5
CSR/CSC datasets or dense HDF5 datasets), a zarr array, or a dask array — a block of consecutive cells at a time,
as a SciPy CSR matrix. :class:`StreamingCountsDataModule` trains from it with bounded memory: each epoch visits the
chunks in a random order, keeps a buffer of a few chunks, shuffles the cells inside the buffer and slices
minibatches from it, as :class:`~myvae.model.CountsDataModule` does for counts held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from math import ceil
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from myvae._checks import CountsSummary, InputError
from myvae.model._datamodule import CSRRows, split_indices

__all__ = ["DEFAULT_CHUNK_SIZE", "RowChunks", "StreamingCountsDataModule", "check_counts_in_chunks", "is_out_of_core"]

DEFAULT_CHUNK_SIZE = 4096
"""Cells read from disk at a time."""


def _is_dask(matrix: Any) -> bool:
    return type(matrix).__module__.startswith("dask.") and hasattr(matrix, "compute")


def _is_backed_sparse(matrix: Any) -> bool:
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(matrix, CSRDataset | CSCDataset)


def is_out_of_core(matrix: Any) -> bool:
    """Whether ``matrix`` lives on disk or is computed lazily: a backed AnnData's ``X``, an h5py or zarr array, or a
    dask array."""
    package = type(matrix).__module__.split(".")[0]
    return _is_backed_sparse(matrix) or _is_dask(matrix) or package in ("h5py", "zarr")


class RowChunks:
    """A counts matrix read a chunk of consecutive rows (cells) at a time, as SciPy CSR matrices.

    Parameters
    ----------
    matrix
        Cells × genes: a NumPy array or SciPy sparse matrix, a backed AnnData's ``X`` (HDF5 or zarr, sparse or
        dense), a zarr or h5py array, or a dask array.
    chunk_size
        Rows per chunk.
    """

    def __init__(self, matrix: Any, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if len(getattr(matrix, "shape", ())) != 2:
            raise InputError(f"The counts must be a cells × genes matrix; got a {type(matrix).__name__}.")
        self.matrix = matrix
        self.shape = tuple(int(n) for n in matrix.shape)
        self.n_obs, self.n_vars = self.shape
        self.chunk_size = int(chunk_size)

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return ceil(self.n_obs / self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """First row and one past the last row of chunk ``chunk``."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_obs)

    def read(self, start: int, stop: int, dtype: np.dtype | None = np.float32) -> sparse.csr_matrix:
        """Rows ``start:stop`` as a CSR matrix of ``dtype`` (``None``: the stored type)."""
        block = self.matrix[start:stop]
        if _is_dask(block):
            block = block.compute()
        if not sparse.issparse(block):
            block = np.asarray(block)
        return sparse.csr_matrix(block, dtype=dtype)

    def __iter__(self) -> Iterator[tuple[int, sparse.csr_matrix]]:
        """Every chunk in order, with its first row."""
        for chunk in range(self.n_chunks):
            start, stop = self.bounds(chunk)
            yield start, self.read(start, stop)


def check_counts_in_chunks(matrix: Any, where: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
    """:func:`~myvae._checks.check_counts` for a matrix read a chunk of rows at a time (bounded memory).

    The rules and messages are those of the in-memory check; the counts of problems are summed over all chunks.
    """
    rows = RowChunks(matrix, chunk_size)
    if rows.n_obs == 0 or rows.n_vars == 0:
        raise InputError(f"{where} has shape {rows.shape}; it needs at least one cell and one gene.")
    summary = None
    for chunk in range(rows.n_chunks):
        chunk_summary = CountsSummary.of(rows.read(*rows.bounds(chunk), dtype=None), where)
        summary = chunk_summary if summary is None else summary + chunk_summary
    summary.raise_for_problems(where)


class _StreamedMinibatches:
    """One pass over the chosen rows of a :class:`RowChunks`, in minibatches.

    With ``shuffle``, the chunks come in a random order and the rows of each group of ``buffer_chunks`` chunks are
    shuffled together; minibatches that straddle two groups carry the remainder over, so every minibatch but the
    last has ``batch_size`` cells and every chosen row is seen once per pass.
    """

    def __init__(
        self,
        module: StreamingCountsDataModule,
        keep: np.ndarray,
        shuffle: bool,
    ):
        self.module = module
        self.keep = keep
        self.shuffle = shuffle
        self.n_rows = int(np.count_nonzero(keep))

    def __len__(self) -> int:
        return ceil(self.n_rows / self.module.batch_size)

    def _chunk_order(self) -> list[int]:
        n_chunks = self.module.rows.n_chunks
        if not self.shuffle:
            return list(range(n_chunks))
        return torch.randperm(n_chunks, generator=self.module.generator).tolist()

    def _buffers(self) -> Iterator[tuple[sparse.csr_matrix, np.ndarray]]:
        """Groups of chunks: their kept rows (CSR) and the index of each row in the whole matrix."""
        order = self._chunk_order()
        step = self.module.buffer_chunks
        for first in range(0, len(order), step):
            blocks, row_numbers = [], []
            for chunk in order[first : first + step]:
                start, stop = self.module.rows.bounds(chunk)
                kept = np.flatnonzero(self.keep[start:stop])
                if len(kept):
                    blocks.append(self.module.rows.read(start, stop)[kept])
                    row_numbers.append(kept + start)
            if blocks:
                yield sparse.vstack(blocks, format="csr"), np.concatenate(row_numbers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batch_size = self.module.batch_size
        carried: tuple[sparse.csr_matrix, np.ndarray] | None = None
        for counts, row_numbers in self._buffers():
            if self.shuffle:
                permutation = torch.randperm(len(row_numbers), generator=self.module.generator).numpy()
                counts, row_numbers = counts[permutation], row_numbers[permutation]
            if carried is not None:
                counts = sparse.vstack([carried[0], counts], format="csr")
                row_numbers = np.concatenate([carried[1], row_numbers])
            self.module.largest_buffer = max(self.module.largest_buffer, counts.shape[0])
            n_full = counts.shape[0] // batch_size * batch_size
            rows = CSRRows(counts[:n_full]) if n_full else None
            for start in range(0, n_full, batch_size):
                positions = torch.arange(start, start + batch_size)
                yield self.module.minibatch(rows, positions, row_numbers[start : start + batch_size])
            carried = (counts[n_full:], row_numbers[n_full:]) if n_full < counts.shape[0] else None
        if carried is not None:
            rows = CSRRows(carried[0])
            yield self.module.minibatch(rows, torch.arange(carried[0].shape[0]), carried[1])


class StreamingCountsDataModule(pl.LightningDataModule):
    """Training and validation minibatches read from disk a few chunks at a time, with bounded memory.

    The cells are split as :class:`~myvae.model.CountsDataModule` splits them for the same seed, so both modules
    train on the same cells; only the order within an epoch differs (shuffled within a buffer of chunks here).

    Parameters
    ----------
    counts
        Cells × genes counts, anything :class:`RowChunks` reads.
    batch_index
        Batch code of each cell, if the model is conditioned on batches (small: one integer per cell).
    train_size
        Fraction of cells to train on; the others are the validation cells.
    batch_size
        Cells per minibatch.
    seed
        Seed of the split and of the shuffling.
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
        super().__init__()
        self.rows = RowChunks(counts, chunk_size)
        self.n_obs, self.n_vars = self.rows.shape
        self.batch_size = batch_size
        self.buffer_chunks = buffer_chunks
        self.train_idx, self.val_idx = split_indices(self.n_obs, train_size, seed)
        self.test_idx = np.array([], dtype=int)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)
        self._validation = np.zeros(self.n_obs, dtype=bool)
        self._validation[self.val_idx] = True
        self.batch_index = None
        if batch_index is not None:
            self.batch_index = torch.as_tensor(np.asarray(batch_index).reshape(-1, 1), dtype=torch.long)
        self.n_batch = 1 if batch_index is None else int(self.batch_index.max()) + 1
        self.largest_buffer = 0
        """Most cells held at once by a pass so far (a check that memory stays bounded)."""
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def train_dataloader(self) -> _StreamedMinibatches:
        """Minibatches of the training cells, shuffled within buffers of chunks."""
        return _StreamedMinibatches(self, ~self._validation, shuffle=True)

    def val_dataloader(self) -> _StreamedMinibatches | list:
        """Minibatches of the validation cells, in order (none if every cell trains)."""
        if self.n_val == 0:
            return []
        return _StreamedMinibatches(self, self._validation, shuffle=False)

    def minibatch(self, rows: CSRRows, positions: torch.Tensor, cells: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows ``positions`` of a buffer as a minibatch: counts (sparse CSR) and, with batches, batch codes.

        ``cells`` gives the index in the whole matrix of each of those rows.
        """
        tensors = {REGISTRY_KEYS.X_KEY: rows[positions]}
        if self.batch_index is not None:
            tensors[REGISTRY_KEYS.BATCH_KEY] = self.batch_index[torch.as_tensor(cells, dtype=torch.long)]
        return tensors
