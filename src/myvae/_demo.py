"""The main job: embed the bundled PBMC 3k cells and report how well the embedding recovers the cell types."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

from myvae import datasets, pl, pp, tl

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured."""

    heldout_elbo: float
    """ELBO per cell on the held-out cells at the last epoch (higher is better)."""
    training_seconds: float
    """Wall time of :func:`myvae.tl.myvae`."""
    ari: float
    """Adjusted Rand index of the Leiden clusters against the annotated cell types (annotated cells only)."""
    n_clusters: int
    """Number of Leiden clusters."""


def run_demo(
    out: Path,
    *,
    backend: str = "torch",
    max_epochs: int | None = None,
    n_top_genes: int = 2000,
    progress: bool = True,
) -> DemoResult:
    """Run the whole PBMC 3k workflow and write ``result.h5ad``, ``umap.png`` and ``elbo.png`` to ``out``.

    Parameters
    ----------
    out
        Output folder, created if missing.
    backend
        ``"torch"`` or ``"pyro"``.
    max_epochs
        Epochs to train; ``None`` lets :func:`myvae.tl.myvae` choose.
    n_top_genes
        Number of highly variable genes (Seurat v3 flavour, on the counts).
    progress
        Show the training progress bar.
    """
    out.mkdir(parents=True, exist_ok=True)
    adata = datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat_v3", subset=True)
    sc.pp.filter_cells(adata, min_counts=1)
    pp.setup_counts(adata)

    start = time.perf_counter()
    tl.myvae(adata, backend=backend, max_epochs=max_epochs, progress=progress)
    training_seconds = time.perf_counter() - start

    sc.pp.neighbors(adata, use_rep="X_myvae")
    sc.tl.umap(adata, random_state=0)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=0)
    cell_types = adata.obs["cell_type"]
    annotated = (cell_types.notna() & (cell_types.astype(str) != "")).to_numpy()
    ari = adjusted_rand_score(cell_types[annotated], adata.obs["leiden"][annotated])

    adata.write_h5ad(out / "result.h5ad")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    sc.pl.umap(adata, color="leiden", ax=axes[0], show=False, legend_loc="on data", title="Leiden on myvae")
    sc.pl.umap(adata, color="cell_type", ax=axes[1], show=False, title="annotated cell type")
    fig.tight_layout()
    fig.savefig(out / "umap.png", dpi=120)
    plt.close(fig)
    ax = pl.elbo(adata, show=False)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "elbo.png", dpi=120)
    plt.close(ax.figure)

    return DemoResult(
        heldout_elbo=float(np.asarray(adata.uns["myvae"]["history"]["elbo_validation"])[-1]),
        training_seconds=training_seconds,
        ari=float(ari),
        n_clusters=int(adata.obs["leiden"].nunique()),
    )
