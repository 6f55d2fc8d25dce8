"""A Lightning data module that holds the counts once as a tensor and slices shuffled minibatches from it.

scvi-tools' default data path reads every minibatch out of the AnnData through a ``Dataset`` and a ``DataLoader``;
for a model this small that per-batch work costs as much as the model itself. Here the counts are converted once
(a dense tensor when it fits the memory budget, CSR rows densified per minibatch otherwise) and each epoch is a
random permutation sliced into minibatches.
"""

from __future__ import annotations

from collections.abc import Iterator
from math import ceil

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

__all__ = ["DENSE_BYTES_LIMIT", "CountsDataModule", "split_indices"]

DENSE_BYTES_LIMIT = 4 * 2**30
"""Largest counts matrix (in bytes, as float32) held densely; larger ones stay sparse."""


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


class _Minibatches:
    """One pass over ``indices`` in minibatches, shuffled anew at each pass when ``shuffle`` is set."""

    def __init__(self, counts, indices: np.ndarray, batch_size: int, shuffle: bool, generator: torch.Generator):
        self.counts = counts
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield {REGISTRY_KEYS.X_KEY: self._rows(rows)}

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        if isinstance(self.counts, torch.Tensor):
            return self.counts.index_select(0, rows)
        return torch.from_numpy(self.counts[rows.numpy()].toarray())


class CountsDataModule(pl.LightningDataModule):
    """Training and validation minibatches of a counts matrix, for scvi-tools' :class:`~scvi.train.TrainRunner`.

    Parameters
    ----------
    counts
        Cells × genes counts, a SciPy sparse matrix or a NumPy array.
    train_size
        Fraction of cells to train on; the others are the validation cells.
    batch_size
        Cells per minibatch.
    seed
        Seed of the split and of the shuffling; ``None`` draws a fresh one (as scvi-tools does when
        ``scvi.settings.seed`` is unset).
    dense_bytes_limit
        Hold the counts densely when they take at most this many bytes as float32.
    """

    def __init__(
        self,
        counts: sparse.spmatrix | np.ndarray,
        *,
        train_size: float = 0.9,
        batch_size: int = 128,
        seed: int | None = 0,
        dense_bytes_limit: int = DENSE_BYTES_LIMIT,
    ):
        super().__init__()
        self.n_obs, self.n_vars = counts.shape
        self.batch_size = batch_size
        self.train_idx, self.val_idx = split_indices(self.n_obs, train_size, seed)
        self.test_idx = np.array([], dtype=int)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)
        self.n_batch = 1
        if self.n_obs * self.n_vars * 4 <= dense_bytes_limit:
            dense = counts.toarray() if sparse.issparse(counts) else np.asarray(counts)
            self.counts = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
        else:
            self.counts = sparse.csr_matrix(counts, dtype=np.float32)
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def train_dataloader(self) -> _Minibatches:
        """Shuffled minibatches of the training cells."""
        return _Minibatches(self.counts, self.train_idx, self.batch_size, shuffle=True, generator=self._generator)

    def val_dataloader(self) -> _Minibatches | list:
        """Minibatches of the validation cells (none if every cell trains)."""
        if self.n_val == 0:
            return []
        return _Minibatches(self.counts, self.val_idx, self.batch_size, shuffle=False, generator=self._generator)
