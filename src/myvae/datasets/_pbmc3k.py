"""The bundled PBMC 3k data set."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata as ad

__all__ = ["pbmc3k"]


def pbmc3k() -> ad.AnnData:
    """Raw counts of 2,700 peripheral blood mononuclear cells (10x Genomics PBMC 3k), with cell types.

    Read from a file bundled with the package; no download. ``X`` holds raw UMI counts (CSR, float32,
    2,700 cells × 32,738 genes). ``obs["cell_type"]`` gives one of 9 annotated types for the 2,638 cells that
    pass the standard quality control (missing for the other 62), ``obs["seurat_cluster"]`` and
    ``obs["passed_seurat_qc"]`` come from the same analysis, ``obsm["X_umap_seurat"]`` is its UMAP and
    ``var["gene_ids"]`` holds Ensembl ids.

    Data: 10x Genomics "3k PBMCs from a Healthy Donor", licensed under CC BY 4.0; the cell-type annotation is
    the widely used tutorial annotation of this data set (MIT).

    Returns
    -------
    A new AnnData at every call.

    Examples
    --------
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()
    >>> adata.shape
    (2700, 32738)
    """
    with as_file(files("myvae.datasets") / "data" / "pbmc3k_raw.h5ad") as path:
        return ad.read_h5ad(path)
