"""Paint a run's results onto the viewer: the AnnData, the layer's features and colours, and a UMAP Points layer."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.viewer import Viewer

from myvae._napari._cells import (
    CLUSTER_COLUMN,
    FEATURES_ADATA_KEY,
    UMAP_KEY,
    CellCounts,
    CellEmbedding,
    cluster_colors,
    features_with_clusters,
)

__all__ = ["umap_layer_name", "write_results"]

_TRANSPARENT = np.zeros(4, dtype=np.float32)
_TRAINED_KEYS = {"obsm": ("X_myvae",), "uns": ("myvae", "myvae_setup")}


def umap_layer_name(layer: Labels) -> str:
    """Name of the Points layer holding the UMAP of ``layer``'s cells."""
    return f"{layer.name}: myvae UMAP"


def _write_anndata(cells: CellCounts, embedding: CellEmbedding, layer: Labels) -> None:
    adata, trained = cells.adata, embedding.trained
    for key in _TRAINED_KEYS["obsm"]:
        adata.obsm[key] = trained.obsm[key]
    for key in _TRAINED_KEYS["uns"]:
        adata.uns[key] = trained.uns[key]
    adata.obsm[UMAP_KEY] = embedding.umap
    adata.obs[CLUSTER_COLUMN] = np.asarray(embedding.clusters)
    adata.obs[CLUSTER_COLUMN] = adata.obs[CLUSTER_COLUMN].astype(embedding.clusters.dtype)
    if cells.source == "features":
        layer.metadata[FEATURES_ADATA_KEY] = adata


def _umap_points(layer: Labels, umap: np.ndarray) -> tuple[np.ndarray, float]:
    """UMAP coordinates as (row, column) points beside the label image, as tall as the image; and a point size."""
    (top, left), (bottom, right) = layer.extent.world[:, -2:]
    height = bottom - top
    span = np.ptp(umap, axis=0)
    span[span == 0] = 1.0
    scaled = (umap - umap.min(axis=0)) / span.max() * height
    points = np.column_stack([top + height - scaled[:, 1], right + 0.1 * (right - left) + scaled[:, 0]])
    return points, max(height / 60, 1.0)


def write_results(viewer: Viewer, layer: Labels, cells: CellCounts, embedding: CellEmbedding) -> None:
    """Write a finished run into the AnnData, the layer and the viewer.

    The AnnData gets ``obsm``/``obs``/``uns`` entries, ``layer.features`` the clusters, the labels one colour per
    cluster, and a Points layer the UMAP of the latent space in the same colours.
    """
    colors = cluster_colors(embedding.clusters)
    label_colors = {None: _TRANSPARENT, 0: _TRANSPARENT}
    label_colors.update(
        {int(label): colors[cluster] for label, cluster in zip(cells.label_ids, embedding.clusters, strict=True)}
    )
    points, size = _umap_points(layer, embedding.umap)
    point_colors = np.stack([colors[cluster] for cluster in embedding.clusters])

    _write_anndata(cells, embedding, layer)
    layer.features = features_with_clusters(layer.features, cells.label_ids, embedding.clusters)
    layer.colormap = DirectLabelColormap(color_dict=label_colors)
    name = umap_layer_name(layer)
    if name in viewer.layers:
        viewer.layers.remove(name)
    viewer.add_points(
        points,
        name=name,
        size=size,
        face_color=point_colors,
        border_width=0,
        features={"label_id": cells.label_ids, CLUSTER_COLUMN: embedding.clusters},
    )
