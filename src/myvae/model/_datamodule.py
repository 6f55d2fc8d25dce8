"""A Lightning data module that holds the counts once, sparse, and slices shuffled minibatches from them.

scvi-tools' default data path reads every minibatch out of the AnnData through a ``Dataset`` and a ``DataLoader``
and hands the model a dense tensor; for a model this small that per-batch work costs as much as the model itself.
Here the counts are converted once into the arrays of a CSR matrix (torch tensors), each epoch is a random
permutation of the cells, and each minibatch is a sparse CSR tensor gathered from those arrays: the model reads
only its non-zero counts (:mod:`myvae.module._sparse`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from math import ceil
from numbers import Real
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from myvae._docs import doc_params
from myvae._exceptions import InputError

from ._defaults import DEFAULT_TRAIN_SIZE

SPLIT_DOC = """
batch_index
    Batch code of each cell (cells or cells × 1), if the model is conditioned on batches.
train_size
    Fraction of cells to train on; the others are the validation cells.
batch_size
    Cells per minibatch.
seed
    Seed of the split and of the shuffling; ``None`` draws a fresh one (as scvi-tools does when
    ``scvi.settings.seed`` is unset).
"""
"""The parameters every data module takes."""

__all__ = [
    "BaseCountsDataModule",
    "CSRRows",
    "CountsDataModule",
    "batch_codes",
    "csr_rows_tensor",
    "float32_csr",
    "in_memory_rows",
    "process_share",
    "resolve_train_size",
    "split_indices",
]


def resolve_train_size(
    n_obs: int, train_size: Any, validation_size: Any = None, *, early_stopping: bool = True
) -> float:
    """The fraction of cells to train on, checked against ``n_obs`` before any work.

    ``train_size`` and scvi-tools' ``validation_size`` are fractions; ``None`` for both gives
    :data:`~myvae.model.DEFAULT_TRAIN_SIZE`, one of them alone the complement of the other. There is no test set,
    so given together they must add up to 1. At least one cell is trained on, and with early stopping at least one
    is held out to score the model. An :class:`~myvae.InputError` says what to change otherwise.
    """
    for value, name in ((train_size, "train_size"), (validation_size, "validation_size")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1):
            raise InputError(f"{name} must be a fraction of the cells, a number in (0, 1], got {value!r}.")
    if train_size is not None and validation_size is not None and not np.isclose(train_size + validation_size, 1):
        raise InputError(
            f"train_size={train_size} and validation_size={validation_size} leave {1 - train_size - validation_size:g} "
            "of the cells for a test set, which myvae does not keep: the held-out cells are all the cells not trained "
            "on. Pass one of them."
        )
    if train_size is None:
        train_size = DEFAULT_TRAIN_SIZE if validation_size is None else 1.0 - validation_size
    n_train = ceil(train_size * n_obs)
    if n_train < 1:
        raise InputError(f"train_size={train_size} trains on no cell of the {n_obs}; raise it (default 0.9).")
    if early_stopping and n_train == n_obs:
        raise InputError(
            f"train_size={train_size} leaves none of the {n_obs} cells out to score the model, which early stopping "
            "needs; lower it (default 0.9), or pass early_stopping=False to train every epoch on all cells."
        )
    return float(train_size)


def split_indices(n_obs: int, train_size: float, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation cells, drawn as scvi-tools' ``DataSplitter`` draws them for the same seed.

    Parameters
    ----------
    n_obs
        Number of cells.
    train_size
        Fraction of cells to train on, in (0, 1].
    seed
        Seed of the permutation (``scvi.settings.seed``); ``None`` draws a fresh one.
    """
    n_train = ceil(train_size * n_obs)
    permutation = np.random.RandomState(seed=seed).permutation(n_obs)
    n_val = n_obs - n_train
    return permutation[n_val:], permutation[:n_val]


class CSRRows:
    """A counts matrix held as a SciPy CSR matrix, from which any set of rows is gathered as a minibatch.

    Parameters
    ----------
    counts
        Cells × genes counts, a SciPy sparse matrix or a NumPy array.
    """

    def __init__(self, counts: sparse.spmatrix | np.ndarray):
        # the caller's arrays where they are CSR float32 already, so stored zeros are dropped from a copy
        self.csr = float32_csr(counts, owned=False)
        self.shape = self.csr.shape

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        """The given rows, in that order, as a sparse CSR tensor (with 64-bit indices).

        SciPy gathers the rows in compiled code (several times faster than gathering the arrays with torch
        operations), into new arrays that the tensor then shares.
        """
        return csr_rows_tensor(self.csr[rows.numpy()])


def float32_csr(counts: sparse.spmatrix | np.ndarray, *, owned: bool) -> sparse.csr_matrix:
    """``counts`` as a float32 CSR matrix without stored zeros (the form minibatches are sliced from).

    Parameters
    ----------
    counts
        Cells × genes counts, a SciPy sparse matrix or a NumPy array.
    owned
        Whether the caller owns ``counts``' arrays: stored zeros are then dropped in place, else from a copy (a
        float32 CSR matrix shares its arrays with the result).
    """
    csr = sparse.csr_matrix(counts, dtype=np.float32)
    if not csr.data.all():
        if not owned:
            csr = csr.copy()
        csr.eliminate_zeros()
    return csr


def csr_rows_tensor(
    matrix: sparse.csr_matrix,
    start: int = 0,
    stop: int | None = None,
    *,
    copy: bool = False,
    wide_indices: np.ndarray | None = None,
) -> torch.Tensor:
    """Rows ``start`` to ``stop`` of a SciPy CSR matrix as a sparse CSR tensor (64-bit indices).

    Parameters
    ----------
    matrix
        Float32 CSR matrix without stored zeros.
    start, stop
        The rows, as in ``matrix[start:stop]`` (``stop=None``: to the last row).
    copy
        Copy the values too (else they are shared with ``matrix``, which then stays in memory as long as the tensor).
    wide_indices
        ``matrix.indices`` as 64-bit integers, if at hand: the tensor then shares them rather than a converted copy.
    """
    stop = matrix.shape[0] if stop is None else stop
    first, last = matrix.indptr[start], matrix.indptr[stop]
    values = torch.from_numpy(matrix.data[first:last])
    with warnings.catch_warnings():  # torch warns once that sparse CSR support is in beta
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr[start : stop + 1] - first).long(),
            torch.from_numpy((matrix.indices if wide_indices is None else wide_indices)[first:last]).long(),
            values.clone() if copy else values,
            (stop - start, matrix.shape[1]),
            check_invariants=False,
        )


def batch_codes(batch_index: np.ndarray | None) -> torch.Tensor | None:
    """Batch codes of the cells as a cells × 1 tensor of integers (``None`` without batches)."""
    if batch_index is None:
        return None
    # a copy: pandas >= 3 hands out read-only arrays, which torch will not wrap without a warning
    return torch.from_numpy(np.array(batch_index, dtype=np.int64).reshape(-1, 1))


def seeded_generator(seed: int | None) -> torch.Generator:
    """A torch generator seeded with ``seed``; ``None`` draws a fresh seed."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def process_share(trainer: pl.Trainer | None) -> tuple[int, int]:
    """The rank of this process and the number of processes training together (``(0, 1)`` on one device)."""
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


class _Minibatches:
    """One pass over ``indices`` in minibatches, shuffled anew at each pass when ``shuffle`` is set.

    Under distributed training (``world_size`` > 1) every process draws the same permutation and keeps every
    ``world_size``-th cell from its ``rank`` on; when training, the cells left over are dropped so that all processes
    take the same number of steps.
    """

    def __init__(
        self,
        gather: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.gather = gather
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.rank, self.world_size = rank, world_size

    def _share(self, order: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return order
        end = len(order) // self.world_size * self.world_size if self.shuffle else len(order)
        return order[self.rank : end : self.world_size]

    def __len__(self) -> int:
        return ceil(len(self._share(self.indices)) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        order = self._share(order)
        for start in range(0, len(order), self.batch_size):
            yield self.gather(order[start : start + self.batch_size])


@doc_params(split=SPLIT_DOC)
class BaseCountsDataModule(pl.LightningDataModule):
    """What both data modules share: the split of the cells, their batch codes and the source of the shuffling.

    scvi-tools' :class:`~scvi.train.TrainRunner` reads the split (``train_idx``, ``val_idx``, ``test_idx``,
    ``n_train``, ``n_val``); a subclass says how one pass over some of the cells is read (:meth:`_minibatches`).

    Parameters
    ----------
    n_obs
        Number of cells.
    {split}
    """

    def __init__(
        self, n_obs: int, *, batch_index: np.ndarray | None, train_size: float, batch_size: int, seed: int | None
    ):
        super().__init__()
        self.batch_size = batch_size
        self.train_idx, self.val_idx = split_indices(n_obs, train_size, seed)
        self.test_idx = np.array([], dtype=int)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)
        self.batch_index = batch_codes(batch_index)
        self.generator = seeded_generator(seed)

    def _minibatches(self, indices: np.ndarray, shuffle: bool, rank: int, world_size: int) -> Iterable:
        """One pass over ``indices`` (this process's share of them) in minibatches, shuffled when ``shuffle``."""
        raise NotImplementedError

    def train_dataloader(self) -> Iterable:
        """Shuffled minibatches of the training cells (this process's share of them, under distributed training)."""
        return self._minibatches(self.train_idx, True, *process_share(self.trainer))

    def val_dataloader(self) -> Iterable:
        """Minibatches of the validation cells (none if every cell trains)."""
        if self.n_val == 0:
            return []
        return self._minibatches(self.val_idx, False, *process_share(self.trainer))


@doc_params(split=SPLIT_DOC)
class CountsDataModule(BaseCountsDataModule):
    """Training and validation minibatches of a counts matrix held in memory, sliced from its CSR arrays.

    Parameters
    ----------
    counts
        Cells × genes counts, a SciPy sparse matrix or a NumPy array.
    {split}
    """

    def __init__(
        self,
        counts: sparse.spmatrix | np.ndarray,
        *,
        batch_index: np.ndarray | None = None,
        train_size: float = 0.9,
        batch_size: int = 128,
        seed: int | None = 0,
    ):
        super().__init__(
            counts.shape[0], batch_index=batch_index, train_size=train_size, batch_size=batch_size, seed=seed
        )
        self.counts = CSRRows(counts)
        self._gather = _RowGather(self.counts, self.batch_index)

    def _minibatches(self, indices: np.ndarray, shuffle: bool, rank: int, world_size: int) -> _Minibatches:
        return _Minibatches(
            self._gather, indices, self.batch_size, shuffle, self.generator, rank=rank, world_size=world_size
        )


class _RowGather:
    """Cells as a minibatch: their counts (sparse CSR) and, with batches, their batch codes (cells × 1)."""

    def __init__(self, counts: CSRRows, batch_index: torch.Tensor | None):
        self.counts, self.batch_index = counts, batch_index

    def __call__(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        tensors = {REGISTRY_KEYS.X_KEY: self.counts[rows]}
        if self.batch_index is not None:
            tensors[REGISTRY_KEYS.BATCH_KEY] = self.batch_index[rows]
        return tensors


def in_memory_rows(
    counts: sparse.spmatrix | np.ndarray,
    indices: np.ndarray | None,
    batch_size: int,
    batch_index: np.ndarray | None = None,
) -> _Minibatches:
    """Minibatches of the given cells of a counts matrix in memory, in the order of ``indices``, for inference.

    The minibatches are the ones training reads (sparse CSR counts), rather than scvi-tools' dense ones.

    Parameters
    ----------
    counts
        Cells × genes counts, a SciPy sparse matrix or a NumPy array.
    indices
        Cells to pass over, in any order; ``None`` for every cell.
    batch_size
        Cells per minibatch.
    batch_index
        Batch code of every cell, if the model has batches.
    """
    indices = np.arange(counts.shape[0]) if indices is None else np.asarray(indices)
    gather = _RowGather(CSRRows(counts), batch_codes(batch_index))
    return _Minibatches(gather, indices, batch_size, shuffle=False, generator=None)
