import numpy as np
import pytest
import scvi
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import LayerField
from scvi.dataloaders import DataSplitter

from myvae.model._datamodule import CountsDataModule, CSRRows, csr_rows_tensor, in_memory_rows, split_indices


@pytest.mark.parametrize("n_obs", [80, 97])
def test_split_is_scvi_tools_split_for_the_same_seed(small_adata, n_obs):
    adata = small_adata[:n_obs].copy()
    scvi.settings.seed = 5
    manager = AnnDataManager(fields=[LayerField(REGISTRY_KEYS.X_KEY, None)])
    manager.register_fields(adata)
    splitter = DataSplitter(manager, train_size=0.9, batch_size=16)
    splitter.setup()
    train, validation = split_indices(adata.n_obs, 0.9, seed=5)
    np.testing.assert_array_equal(train, splitter.train_idx)
    np.testing.assert_array_equal(validation, splitter.val_idx)


@pytest.mark.parametrize("as_array", [False, True], ids=["sparse", "dense"])
def test_each_epoch_visits_every_training_cell_once(small_adata, as_array):
    counts = small_adata.X.toarray() if as_array else small_adata.X
    datamodule = CountsDataModule(counts, batch_size=16, seed=0)
    assert (datamodule.n_train, datamodule.n_val) == (72, 8)
    dense = small_adata.X.toarray()
    orders = []
    for _ in range(2):
        batches = [batch[REGISTRY_KEYS.X_KEY] for batch in datamodule.train_dataloader()]
        assert [len(batch) for batch in batches] == [16, 16, 16, 16, 8]
        assert all(batch.layout == torch.sparse_csr for batch in batches)
        seen = torch.cat([batch.to_dense() for batch in batches]).numpy()
        # every training row once, none of the validation rows
        expected = dense[np.sort(datamodule.train_idx)]
        np.testing.assert_array_equal(seen[np.lexsort(seen.T)], expected[np.lexsort(expected.T)])
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    validation = torch.cat([batch[REGISTRY_KEYS.X_KEY].to_dense() for batch in datamodule.val_dataloader()]).numpy()
    np.testing.assert_array_equal(validation, dense[datamodule.val_idx])


def test_csr_rows_gathers_rows_in_the_order_asked(small_adata):
    rows = CSRRows(small_adata.X)
    wanted = torch.tensor([5, 0, 79, 5, 41])
    np.testing.assert_array_equal(rows[wanted].to_dense().numpy(), small_adata.X[wanted.numpy()].toarray())
    assert rows[torch.tensor([], dtype=torch.long)].shape == (0, small_adata.n_vars)


def test_a_row_range_becomes_a_tensor_that_shares_the_matrix_values(small_adata):
    counts = small_adata.X.tocsr().astype(np.float32)
    for start, stop in [(0, 80), (5, 17), (79, 80), (10, 10)]:
        tensor = csr_rows_tensor(counts, start, stop)
        assert tensor.shape == (stop - start, small_adata.n_vars) and tensor.crow_indices().dtype == torch.long
        np.testing.assert_array_equal(tensor.to_dense().numpy(), counts[start:stop].toarray())
    tensor = csr_rows_tensor(counts, 5, 17)
    counts.data[counts.indptr[5]] += 1000.0  # a minibatch is a view of the buffer's values, not a copy
    assert tensor.values()[0].item() == counts.data[counts.indptr[5]]
    assert csr_rows_tensor(counts).shape == counts.shape


def test_training_uses_every_cell_when_train_size_is_one(small_adata):
    datamodule = CountsDataModule(small_adata.X, train_size=1.0, batch_size=32)
    assert datamodule.n_val == 0 and datamodule.val_dataloader() == []


def test_unset_seed_draws_a_fresh_split(small_adata):
    # scvi.settings.seed is None in a fresh session; the data module must then behave like scvi-tools' splitter
    datamodule = CountsDataModule(small_adata.X, batch_size=16, seed=None)
    assert (datamodule.n_train, datamodule.n_val) == (72, 8)
    assert sum(len(batch[REGISTRY_KEYS.X_KEY]) for batch in datamodule.train_dataloader()) == 72


def test_csr_rows_leaves_a_callers_stored_zeros_alone(small_adata):
    counts = small_adata.X.tocsr().astype(np.float32)
    counts.data[::7] = 0.0  # stored zeros, which a float32 CSR matrix shares its arrays with CSRRows through
    before = (counts.indptr.copy(), counts.indices.copy(), counts.data.copy())
    rows = CSRRows(counts)
    np.testing.assert_array_equal(counts.indptr, before[0])
    np.testing.assert_array_equal(counts.indices, before[1])
    np.testing.assert_array_equal(counts.data, before[2])
    gathered = rows[torch.arange(counts.shape[0])]
    assert gathered.values().numel() == counts.count_nonzero()
    np.testing.assert_array_equal(gathered.to_dense().numpy(), counts.toarray())


@pytest.mark.parametrize("as_array", [False, True], ids=["sparse", "dense"])
def test_inference_minibatches_follow_the_given_cells(small_adata, as_array):
    counts = small_adata.X.toarray() if as_array else small_adata.X
    batches = np.arange(small_adata.n_obs) % 3
    cells = np.array([40, 3, 3, 79, 0, 12, 55])
    minibatches = list(in_memory_rows(counts, cells, 3, batch_index=batches))
    assert [len(minibatch[REGISTRY_KEYS.X_KEY]) for minibatch in minibatches] == [3, 3, 1]
    seen = torch.cat([minibatch[REGISTRY_KEYS.X_KEY].to_dense() for minibatch in minibatches]).numpy()
    np.testing.assert_array_equal(seen, small_adata.X[cells].toarray())
    codes = torch.cat([minibatch[REGISTRY_KEYS.BATCH_KEY] for minibatch in minibatches]).numpy().ravel()
    np.testing.assert_array_equal(codes, batches[cells])
    assert len(list(in_memory_rows(counts, None, 32))) == 3
