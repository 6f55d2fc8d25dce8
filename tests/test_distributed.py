"""Distributed training through Lightning: the torch backend with strategy="ddp" on two CPU processes (gloo), and
the refusals where a backend or data path trains in one process only."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from helpers import fast_train_kwargs

import myvae as mv
from myvae.model._datamodule import CountsDataModule

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def test_ddp_on_two_cpu_processes_trains_and_writes_the_embedding_once_in_order(tmp_path):
    data = Path(__file__).parent / "data" / "pbmc_small_80.h5ad"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(data), str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["rank"] for record in ranks] == [0, 1]
    assert all(record["world_size"] == 2 for record in ranks)
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
        loader = module._pass(module.train_idx, shuffle=True)
        loader.rank, loader.world_size = rank, 2
        shares.append(list(loader))
    assert len(shares[0]) == len(shares[1]) == 5  # 72 training cells: 36 each, 5 minibatches of at most 8
    first = np.concatenate([b["X"].to_dense().numpy() for b in shares[0]])
    second = np.concatenate([b["X"].to_dense().numpy() for b in shares[1]])
    rows = {row.tobytes() for row in first}
    assert len(rows) == 36 and not rows & {row.tobytes() for row in second}


def test_pyro_backend_refuses_several_devices(small_adata, unchanged):
    mv.pp.setup_counts(small_adata)
    with unchanged(small_adata), pytest.raises(mv.InputError, match="Pyro backend trains on one device"):
        mv.tl.myvae(small_adata, backend="pyro", devices=2, strategy="ddp", **fast_train_kwargs())
