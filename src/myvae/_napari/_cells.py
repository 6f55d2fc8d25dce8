"""The counts of segmented cells in a napari Labels layer, and the embedding, clusters and layout computed from them.

Nothing here imports napari or Qt: the functions take the layer's parts (``data``, ``metadata``, ``features``), so
that the logic is testable and importable without a GUI; :mod:`myvae._napari._paint` writes the results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from lightning.pytorch import Callback
from scipy import sparse

from myvae._checks import MIN_CELLS
from myvae._counts import check_counts
from myvae._exceptions import InputError
from myvae._setup import check_setup, read_setup

__all__ = [
    "CLUSTER_COLUMN",
    "DEFAULT_INSTANCE_KEY",
    "FEATURES_ADATA_KEY",
    "UMAP_KEY",
    "CellCounts",
    "CellEmbedding",
    "cell_counts",
    "cluster_colors",
    "embed_and_cluster",
    "features_with_clusters",
]

DEFAULT_INSTANCE_KEY = "label_id"
"""``obs`` column linking the rows of ``layer.metadata["adata"]`` to label ids (as napari-spatialdata does)."""
CLUSTER_COLUMN = "myvae_leiden"
"""Name of the Leiden clusters: a column of ``layer.features`` and of the AnnData's ``obs``."""
UMAP_KEY = "X_myvae_umap"
"""``obsm`` key of the 2-D UMAP of the latent space."""
FEATURES_ADATA_KEY = "myvae_adata"
"""``layer.metadata`` key of the AnnData built from count columns of ``layer.features``."""


@dataclass
class CellCounts:
    """The counts of a Labels layer's cells: the AnnData to train on and where it came from.

    Attributes
    ----------
    adata
        One row per cell; the user's own AnnData when it came from ``layer.metadata["adata"]``.
    label_ids
        The label id of each row of ``adata``.
    source
        ``"metadata"`` or ``"features"``.
    """

    adata: AnnData
    label_ids: np.ndarray
    source: str


@dataclass
class CellEmbedding:
    """What a run computed for each row of :attr:`CellCounts.adata`, kept apart until it is written."""

    trained: AnnData
    """The trained copy: ``obsm["X_myvae"]``, ``uns["myvae"]`` and ``uns["myvae_setup"]`` as :func:`myvae.tl.myvae`
    wrote them."""
    clusters: pd.Categorical
    umap: np.ndarray


def _label_ids_in(image: np.ndarray) -> np.ndarray:
    ids = np.unique(np.asarray(image))
    return ids[ids != 0]


def _as_label_ids(values: Any, where: str) -> np.ndarray:
    values = pd.Series(values)
    if values.isna().any() or not pd.api.types.is_numeric_dtype(values):
        raise InputError(f"{where} must hold the integer label id of each cell; it holds {values.dtype} values.")
    ids = values.to_numpy()
    if not np.array_equal(ids, np.round(ids)):
        raise InputError(f"{where} must hold integer label ids; it holds non-integer values.")
    ids = ids.astype(np.int64)
    duplicated = pd.unique(ids[pd.Series(ids).duplicated().to_numpy()])
    if len(duplicated):
        raise InputError(f"{where} names label(s) {_listed(duplicated)} more than once; give each cell one row.")
    return ids


def _listed(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _from_metadata(metadata: dict) -> CellCounts:
    adata = metadata["adata"]
    if not isinstance(adata, AnnData):
        raise InputError(
            f"layer.metadata['adata'] is a {type(adata).__name__}; it must be an AnnData with one row per label."
        )
    instance_key = metadata.get("instance_key", DEFAULT_INSTANCE_KEY)
    if instance_key not in adata.obs:
        raise InputError(
            f"layer.metadata['adata'].obs has no column {instance_key!r} with the label id of each row; add it, or "
            "name the column in layer.metadata['instance_key']."
        )
    label_ids = _as_label_ids(adata.obs[instance_key], f"obs[{instance_key!r}]")
    setup = read_setup(adata)
    check_setup(adata, setup["layer"], setup["batch_key"])
    return CellCounts(adata, label_ids, "metadata")


def _count_columns(features: pd.DataFrame) -> list[str]:
    ignored = {"index", CLUSTER_COLUMN}
    return [
        column
        for column in features.columns
        if column not in ignored
        and pd.api.types.is_numeric_dtype(features[column])
        and not pd.api.types.is_bool_dtype(features[column])
    ]


def _from_features(features: pd.DataFrame) -> CellCounts:
    columns = _count_columns(features)
    label_ids = (
        _as_label_ids(features["index"], "layer.features['index']")
        if "index" in features
        else np.arange(len(features), dtype=np.int64)
    )
    cells = label_ids != 0
    counts = features.loc[cells, columns].to_numpy()
    check_counts(counts, "the count columns of layer.features")
    obs = pd.DataFrame({DEFAULT_INSTANCE_KEY: label_ids[cells]}, index=[f"label_{i}" for i in label_ids[cells]])
    adata = AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=pd.DataFrame(index=columns))
    return CellCounts(adata, label_ids[cells], "features")


def cell_counts(image: np.ndarray, metadata: dict, features: pd.DataFrame) -> CellCounts:
    """The counts of every segmented cell of a Labels layer, checked before any work.

    The counts come from ``metadata["adata"]`` (an AnnData with one row per label; ``obs[instance_key]`` holds the
    label ids, ``instance_key`` from ``metadata["instance_key"]``, ``"label_id"`` by default) or else from the
    numeric columns of ``features`` (one row per label, label ids in its ``index`` column or its row order).

    Parameters
    ----------
    image
        The layer's label image.
    metadata
        The layer's ``metadata``.
    features
        The layer's ``features``.

    Raises
    ------
    InputError
        When the layer carries no counts, the values are not counts, some labels have no row, or there are too few
        cells to train on.
    """
    if "adata" in metadata:
        cells = _from_metadata(metadata)
    elif _count_columns(features):
        cells = _from_features(features)
    else:
        raise InputError(
            "The Labels layer carries no counts: put an AnnData with one row per cell in layer.metadata['adata'] "
            f"(obs[{DEFAULT_INSTANCE_KEY!r}] holding the label ids), or one count column per gene in layer.features."
        )
    without_row = np.setdiff1d(_label_ids_in(image), cells.label_ids)
    if len(without_row):
        raise InputError(
            f"{len(without_row)} label(s) in the image have no row of counts ({_listed(without_row)}); add their "
            "counts, or erase those labels."
        )
    if cells.adata.n_obs < MIN_CELLS:
        raise InputError(f"The layer has {cells.adata.n_obs} cells with counts; training needs at least {MIN_CELLS}.")
    return cells


def embed_and_cluster(
    cells: CellCounts,
    *,
    backend: str,
    n_latent: int,
    max_epochs: int,
    resolution: float,
    random_state: int = 0,
    on_epoch: Callable[[int], None] | None = None,
) -> CellEmbedding:
    """Train myvae on a copy of the cells' counts, then cluster (Leiden) and lay out (UMAP) the latent space.

    Nothing is written to ``cells.adata``: the results wait in the returned object.

    Parameters
    ----------
    cells
        From :func:`cell_counts`.
    backend, n_latent, max_epochs
        As for :func:`myvae.tl.myvae`.
    resolution
        Leiden resolution: higher gives more clusters.
    random_state
        Seed of training, clustering and layout.
    on_epoch
        Called with the number of finished epochs after each training epoch.
    """
    import scanpy as sc

    from myvae.tl import myvae

    callbacks = [_EpochReporter(on_epoch)] if on_epoch is not None else []
    trained = myvae(
        cells.adata,
        backend=backend,
        n_latent=n_latent,
        max_epochs=max_epochs,
        random_state=random_state,
        progress=False,
        copy=True,
        callbacks=callbacks,
    )
    latent = AnnData(obs=pd.DataFrame(index=trained.obs_names.copy()), obsm={"X_myvae": trained.obsm["X_myvae"]})
    sc.pp.neighbors(latent, use_rep="X_myvae", random_state=random_state)
    sc.tl.leiden(
        latent,
        resolution=resolution,
        key_added=CLUSTER_COLUMN,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=random_state,
    )
    sc.tl.umap(latent, random_state=random_state)
    return CellEmbedding(trained, latent.obs[CLUSTER_COLUMN].array, latent.obsm["X_umap"].astype(np.float32))


class _EpochReporter(Callback):
    """A Lightning callback that reports the number of finished training epochs."""

    def __init__(self, report: Callable[[int], None]):
        super().__init__()
        self._report = report

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer.current_epoch + 1)


def cluster_colors(clusters: pd.Categorical) -> dict[str, np.ndarray]:
    """One RGBA colour per cluster, from scanpy's default palettes (as ``sc.pl.umap`` colours them)."""
    from matplotlib.colors import to_rgba
    from scanpy.plotting import palettes

    categories = list(clusters.categories)
    palette = next(
        (palette for palette in (palettes.default_20, palettes.default_28) if len(palette) >= len(categories)),
        palettes.default_102,
    )
    return {
        category: np.asarray(to_rgba(palette[i % len(palette)]), dtype=np.float32)
        for i, category in enumerate(categories)
    }


def features_with_clusters(features: pd.DataFrame, label_ids: np.ndarray, clusters: pd.Categorical) -> pd.DataFrame:
    """``features`` with a :data:`CLUSTER_COLUMN` column: each label's cluster, missing for labels without a cell.

    Rows follow napari's rule for Labels features: a row's label id is its ``index`` column, or else its position.
    An empty table becomes one row per cell, with the label ids in ``index``.
    """
    cluster_of_label = pd.Series(np.asarray(clusters), index=label_ids)
    if features.shape[1] == 0:
        table = pd.DataFrame({"index": label_ids})
    else:
        table = features.copy()
    row_labels = table["index"].to_numpy() if "index" in table else np.arange(len(table))
    table[CLUSTER_COLUMN] = pd.Categorical(
        cluster_of_label.reindex(row_labels).to_numpy(), categories=clusters.categories
    )
    return table
