import subprocess
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "pbmc_small_80.h5ad"

_TRAIN_BOTH_BACKENDS = """
import sys
import anndata as ad
import numpy as np
import myvae as mv

adata = ad.read_h5ad(sys.argv[1])
mv.pp.setup_counts(adata)
for backend in ("torch", "pyro"):
    mv.tl.myvae(adata, backend=backend, random_state=7, max_epochs=4, batch_size=32, progress=False,
                accelerator="cpu", key_added=backend)
np.savez(sys.argv[2], torch=adata.obsm["X_torch"], pyro=adata.obsm["X_pyro"])
"""


def test_same_random_state_gives_bitwise_identical_embeddings_in_separate_processes(tmp_path):
    outputs = [tmp_path / f"run{i}.npz" for i in range(2)]
    for output in outputs:
        subprocess.run([sys.executable, "-c", _TRAIN_BOTH_BACKENDS, str(DATA), str(output)], check=True)
    first, second = (np.load(output) for output in outputs)
    for backend in ("torch", "pyro"):
        assert first[backend].tobytes() == second[backend].tobytes(), backend
    assert not np.array_equal(first["torch"], first["pyro"])  # two different trainings, not one result twice
