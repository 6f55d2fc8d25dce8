"""Train with Lightning's DDP on two CPU processes (gloo); run by tests/test_distributed.py.

Lightning starts the second process by running this script again, so every line below runs in both processes;
each records what it saw, and only the first process (rank 0) writes the AnnData and the model.

    python tests/scripts/ddp_train.py DATA.h5ad OUTPUT_FOLDER [backed]

With ``backed``, the data are opened with ``backed="r"`` and every process streams its share of the cells from disk.
"""

import json
import os
import sys
from pathlib import Path

import anndata as ad

import myvae as mv

data, out = Path(sys.argv[1]), Path(sys.argv[2])
backed = sys.argv[3:] == ["backed"]
adata = ad.read_h5ad(data, backed="r" if backed else None)
mv.pp.setup_counts(adata)
model = mv.tl.myvae(
    adata,
    max_epochs=6,
    batch_size=16,
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    progress=False,
    return_model=True,
)
rank = int(os.environ.get("LOCAL_RANK", "0"))
record = {
    "rank": model.trainer.global_rank if model.trainer is not None else rank,
    "world_size": model.trainer.world_size if model.trainer is not None else 1,
    # Lightning's logger records the history in the first process only
    "elbo_train": [float(value) for value in adata.uns["myvae"]["history"].get("elbo_train", [])],
    "n_train": len(model.train_indices),
    "backed": adata.isbacked,
}
(out / f"rank{rank}.json").write_text(json.dumps(record))
if rank == 0:
    (adata.to_memory() if backed else adata).write_h5ad(out / "result.h5ad")
    model.save(out / "model")
