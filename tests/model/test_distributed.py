"""Distributed training through Lightning: the torch backend with strategy="ddp" on two CPU processes (gloo), from
memory and from disk, and the refusal of the Pyro backend, which trains in one process only."""

import json
import subprocess
import sys
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
from helpers import SCRIPTS, SMALL_DATA, fast_train_kwargs

import myvae as mv
from myvae.model._datamodule import CountsDataModule
from myvae.model._streaming import StreamingCountsDataModule

SCRIPT = SCRIPTS / "ddp_train.py"


@pytest.mark.parametrize("source", ["memory", "backed"])
def test_ddp_on_two_cpu_processes_trains_and_writes_the_embedding_once_in_order(tmp_path, source):
    arguments = [sys.executable, str(SCRIPT), str(SMALL_DATA), str(tmp_path)] + (
        ["backed"] if source == "backed" else []
    )
    completed = subprocess.run(arguments, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["rank"] for record in ranks] == [0, 1]
    assert all(record["world_size"] == 2 and record["backed"] == (source == "backed") for record in ranks)
    elbo = ranks[0]["elbo_train"]
    assert len(elbo) == 6 and elbo[-1] > elbo[0]  # the loss falls

    result = ad.read_h5ad(tmp_path / "result.h5ad")
    embedding = result.obsm["X_myvae"]
    assert embedding.shape == (80, 10) and np.isfinite(embedding).all()
    model = mv.MyVAE.load(tmp_path / "model", adata=result)
    np.testing.assert_allclose(model.get_latent_representation(result), embedding, atol=1e-5)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "rank0.json", "rank1.json", "result.h5ad"]


def test_each_process_takes_an_equal_share_of_every_epoch(small_adata):
    shares = []
    for rank in (0, 1):
        module = CountsDataModule(small_adata.X, batch_size=8, seed=1)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        shares.append(list(module.train_dataloader()))
    assert len(shares[0]) == len(shares[1]) == 5  # 72 training cells: 36 each, 5 minibatches of at most 8
    first = np.concatenate([b["X"].to_dense().numpy() for b in shares[0]])
    second = np.concatenate([b["X"].to_dense().numpy() for b in shares[1]])
    rows = {row.tobytes() for row in first}
    assert len(rows) == 36 and not rows & {row.tobytes() for row in second}


def test_each_process_streams_its_own_block_of_cells_from_disk_in_equal_steps(small_adata, tmp_path):
    small_adata.write_h5ad(tmp_path / "counts.h5ad")
    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    seen = {}
    for rank in (0, 1):
        module = StreamingCountsDataModule(backed.X, batch_size=8, seed=1, chunk_size=16, buffer_chunks=2)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        training = list(module.train_dataloader())
        validation = list(module.val_dataloader())
        seen[rank] = {
            "steps": len(training),
            "train": {row.tobytes() for batch in training for row in batch["X"].to_dense().numpy()},
            "val": {row.tobytes() for batch in validation for row in batch["X"].to_dense().numpy()},
        }
        assert len(module.train_dataloader()) == len(training)
    # 72 training cells: a block of 36 consecutive ones each, 5 steps of at most 8; 8 validation cells: 4 each
    assert seen[0]["steps"] == seen[1]["steps"] == 5
    assert len(seen[0]["train"]) == len(seen[1]["train"]) == 36 and not seen[0]["train"] & seen[1]["train"]
    assert len(seen[0]["val"]) == len(seen[1]["val"]) == 4 and not seen[0]["val"] & seen[1]["val"]
    everything = {row.tobytes() for row in small_adata.X.toarray().astype(np.float32)}
    assert seen[0]["train"] | seen[1]["train"] | seen[0]["val"] | seen[1]["val"] == everything


def test_uneven_blocks_take_the_steps_of_the_smallest(small_adata):
    module = StreamingCountsDataModule(small_adata.X[:72], batch_size=8, seed=1, train_size=0.9)
    cells = []
    for rank in (0, 1):
        module.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        cells.append([batch["X"].shape[0] for batch in module.train_dataloader()])
    # 65 training cells: blocks of 33 and 32, so 4 full steps each and one cell of the first block left out
    assert module.n_train == 65 and cells == [[8, 8, 8, 8], [8, 8, 8, 8]]


def test_pyro_backend_refuses_several_devices(small_adata, unchanged):
    mv.pp.setup_counts(small_adata)
    with unchanged(small_adata), pytest.raises(mv.InputError, match="Pyro backend trains on one device"):
        mv.tl.myvae(small_adata, backend="pyro", devices=2, strategy="ddp", **fast_train_kwargs())
