"""Data sets bundled with the package."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata as ad
import mudata as md

from myvae._data import modality_columns_stay

__all__ = ["pbmc3k", "pbmc_cite"]


def _bundled_path(name: str):
    return as_file(files("myvae.datasets") / "data" / name)


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
    with _bundled_path("pbmc3k_raw.h5ad") as path:
        return ad.read_h5ad(path)


def pbmc_cite() -> md.MuData:
    """CITE-seq of 400 PBMCs from two 10x runs: RNA counts and 14 antibody-derived tags, as a MuData.

    Read from a file bundled with the package; no download. Modality ``"rna"`` holds raw UMI counts of
    15,792 genes and ``"prot"`` the counts of 14 antibody-derived tags (both CSR, float32). ``obs["batch"]`` names
    the run: 200 cells from each of the 10x Genomics "PBMC 5k" and "PBMC 10k" protein v3 data sets.

    Data: 10x Genomics, licensed under CC BY 4.0.

    Returns
    -------
    A new MuData at every call.

    Examples
    --------
    >>> import myvae as mv
    >>> mdata = mv.datasets.pbmc_cite()
    >>> mdata["rna"].shape, mdata["prot"].shape
    ((400, 15792), (400, 14))
    """
    with _bundled_path("cite_pbmc_5k10k_400.h5mu") as path, modality_columns_stay():
        return md.read_h5mu(path)
