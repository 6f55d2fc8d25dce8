"""The "myvae: PBMC tissue" sample: a synthetic label image whose segmented cells carry real PBMC 3k counts."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from scipy.spatial import cKDTree

from myvae._napari._cells import DEFAULT_INSTANCE_KEY

__all__ = ["pbmc_tissue", "pbmc_tissue_cells"]

_SPACING = 16.0
"""Distance in pixels between neighbouring cell centres."""
_RADIUS = 7.5
"""Largest distance in pixels from a cell's centre to its edge."""


def pbmc_tissue_cells(n_cells: int = 600, n_genes: int = 2000, seed: int = 0) -> tuple[np.ndarray, AnnData]:
    """A label image of ``n_cells`` round cells and their counts: each cell carries one annotated PBMC 3k cell.

    The cells sit on a jittered hexagonal grid; cell types occupy bands that follow a smooth random field, so the
    image looks like a tissue with zones. The counts keep ``n_genes`` highly variable genes (Seurat v3).

    Returns
    -------
    The label image (``int32``, 0 for background, label ``i`` for row ``i - 1``) and the AnnData (raw counts in
    ``X``, the label ids in ``obs["label_id"]``, the annotated type in ``obs["cell_type"]``).
    """
    import scanpy as sc

    from myvae.datasets import pbmc3k

    rng = np.random.default_rng(seed)
    adata = pbmc3k()
    adata = adata[adata.obs["cell_type"].notna()]
    adata = adata[np.sort(rng.choice(adata.n_obs, size=n_cells, replace=False))].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_genes, flavor="seurat_v3", subset=True)

    centres, shape = _jittered_hexagonal_grid(n_cells, rng)
    field = _smooth_field(centres, shape, rng)
    order_of_cells = np.argsort(adata.obs["cell_type"].cat.codes.to_numpy(), kind="stable")
    adata = adata[order_of_cells].copy()
    centres = centres[np.argsort(field, kind="stable")]
    adata.obs[DEFAULT_INSTANCE_KEY] = np.arange(1, n_cells + 1)
    adata.obs["centroid_y"], adata.obs["centroid_x"] = centres[:, 0], centres[:, 1]
    return _label_image(centres, shape), adata


def _jittered_hexagonal_grid(n_cells: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    n_columns = int(np.ceil(np.sqrt(n_cells * 2 / np.sqrt(3))))
    n_rows = int(np.ceil(n_cells / n_columns))
    rows, columns = np.divmod(np.arange(n_cells), n_columns)
    y = (rows + 1) * _SPACING * np.sqrt(3) / 2
    x = (columns + 1 + 0.5 * (rows % 2)) * _SPACING
    centres = np.column_stack([y, x]) + rng.uniform(-2, 2, size=(n_cells, 2))
    shape = (int((n_rows + 1) * _SPACING * np.sqrt(3) / 2 + _SPACING), int((n_columns + 2) * _SPACING))
    return centres, shape


def _smooth_field(centres: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    scale = np.asarray(shape, dtype=float)
    waves = rng.normal(size=(3, 2)) * 2 * np.pi
    phases = rng.uniform(0, 2 * np.pi, size=3)
    return np.cos(centres / scale @ waves.T + phases).sum(axis=1) + 2 * centres[:, 0] / scale[0]


def _label_image(centres: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel takes the label of its nearest centre, if it lies within the cell radius."""
    pixels = np.indices(shape).reshape(2, -1).T
    distance, nearest = cKDTree(centres).query(pixels)
    labels = np.where(distance <= _RADIUS, nearest + 1, 0)
    return labels.reshape(shape).astype(np.int32)


def pbmc_tissue() -> list[tuple[Any, dict, str]]:
    """Napari sample: the label image of :func:`pbmc_tissue_cells`, its AnnData in ``layer.metadata["adata"]``."""
    labels, adata = pbmc_tissue_cells()
    metadata = {"adata": adata, "instance_key": DEFAULT_INSTANCE_KEY}
    return [(labels, {"name": "PBMC tissue", "metadata": metadata}, "labels")]
