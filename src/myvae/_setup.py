"""The setup record (which matrix holds the counts, which column the batches) and the data a model trains on.

:func:`myvae.pp.setup_counts` writes the record, :func:`myvae.tl.myvae` and the model read it; the bare AnnData
built by :func:`training_anndata` is what scvi-tools registers, so that its registration never touches the user's
object.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from myvae._batches import batch_labels, check_batch_column, check_batch_values
from myvae._checks import check_anndata, check_same_genes
from myvae._counts import (
    check_counts,
    counts_location,
    get_counts_matrix,
    is_out_of_core,
    raw_counts_advice,
    select_genes,
)
from myvae._data import obs_column
from myvae._exceptions import InputError

__all__ = [
    "SETUP_KEY",
    "bare_anndata",
    "check_setup",
    "counts_copy",
    "is_counts_copy",
    "make_setup_record",
    "missing_batches",
    "model_counts",
    "model_genes_mask",
    "read_setup",
    "trained_layer",
    "training_anndata",
]

SETUP_KEY = "myvae_setup"
"""Key of ``adata.uns`` where :func:`myvae.pp.setup_counts` records its choices."""

_COUNTS_COPY = "myvae_counts_copy"
"""``uns`` key that marks the package's own AnnData of checked counts (:func:`training_anndata`)."""


def make_setup_record(layer: str | None, batch_key: str | None) -> dict[str, str]:
    """The record :func:`myvae.pp.setup_counts` writes; h5ad cannot store None, so unset choices are left out."""
    record = {"layer": layer, "batch_key": batch_key}
    return {key: value for key, value in record.items() if value is not None}


def read_setup(adata: AnnData) -> dict[str, Any]:
    """The choices recorded by :func:`myvae.pp.setup_counts`, with ``None`` for those not made.

    Returns
    -------
    A dict with keys ``layer`` and ``batch_key``; both ``None`` when the AnnData was never set up.
    """
    record = dict(adata.uns.get(SETUP_KEY, {}))
    return {"layer": record.get("layer"), "batch_key": record.get("batch_key")}


def check_setup(adata: AnnData, layer: str | None, batch_key: str | None, mask: np.ndarray | None = None) -> None:
    """Check that ``layer`` (or ``X``) holds raw counts and that ``batch_key`` names an ``obs`` column.

    With ``mask`` (a boolean mask over the genes), only the counts of those genes are checked. Counts on disk (a
    backed AnnData's ``X``, a zarr or dask array) are checked a chunk of rows at a time. When the values look
    normalised and ``adata.raw`` holds the raw counts, the error says how to use them.
    """
    counts = select_genes(get_counts_matrix(adata, layer), mask)
    if batch_key is not None:
        check_batch_column(adata, batch_key)
    where, empty_cells_fix = counts_location(layer), None
    if mask is not None and not mask.all():
        where += f" (its {int(mask.sum())} genes of mask_var)"
        matrix = "X" if layer is None else f"layers[{layer!r}]"
        empty_cells_fix = (
            "(they have counts only in other genes, so `sc.pp.filter_cells` keeps them), e.g. with `genes` the genes "
            f"of mask_var: `adata = adata[np.asarray(adata[:, genes].{matrix}.sum(axis=1)).ravel() > 0].copy()`."
        )
    check_counts(counts, where, counts_elsewhere=lambda: raw_counts_advice(adata), empty_cells_fix=empty_cells_fix)


def training_anndata(
    adata: AnnData,
    layer: str | None,
    batch_key: str | None,
    *,
    batches: pd.Categorical | None = None,
    mask: np.ndarray | None = None,
) -> AnnData:
    """A bare AnnData around the counts (and batches), so that scvi-tools' registration never touches the user's.

    Counts on disk (backed HDF5 or zarr, or a dask array) stay there: the bare AnnData refers to them.

    Parameters
    ----------
    adata
        The user's data.
    layer
        The layer holding the counts (``None``: ``X``).
    batch_key
        Name of the batch column of the bare AnnData; ``None`` for none.
    batches
        The batch of each cell; ``None`` reads ``adata.obs[batch_key]``.
    mask
        The genes to keep (a boolean mask over ``adata``'s genes); ``None`` keeps all.
    """
    counts = select_genes(get_counts_matrix(adata, layer), mask)
    if is_out_of_core(counts):
        matrix = counts  # read a chunk of cells at a time by the model, never loaded whole
    elif sparse.issparse(counts):
        matrix = sparse.csr_matrix(counts, dtype=np.float32)
    else:
        matrix = np.asarray(counts, dtype=np.float32)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    if batch_key is not None:
        obs[batch_key] = batch_labels(adata.obs[batch_key]) if batches is None else batches
    var = pd.DataFrame(index=adata.var_names.copy() if mask is None else adata.var_names[mask])
    data = bare_anndata(matrix, obs, var)
    data.uns[_COUNTS_COPY] = True  # its X holds checked counts: a model reads it as it is (is_counts_copy)
    return data


def counts_copy(
    adata: Any,
    model_genes: pd.Index,
    model_layer: str | None,
    batch_key: str | None,
    *,
    key: str = "myvae",
    mdata: MuData | None = None,
    mod: str | None = None,
    batch_categories: Sequence[str] | None = None,
) -> AnnData:
    """What a model reads of the user's ``adata``: a bare AnnData of its counts of the model's genes, checked.

    The counts are in the layer that ``adata``'s record of :func:`myvae.tl.myvae` (under ``key``) or of
    :func:`myvae.pp.setup_counts` names, else in the model's (``model_layer``, ``None`` for ``X``); of the model's
    genes (``adata`` may have more, in any places, as long as the model's come in its order). The batch column
    ``batch_key`` (``None`` for a model without one; for ``adata`` the modality ``mod`` of ``mdata``, also found in
    ``mdata.obs``, as :func:`~myvae._data.obs_column` finds it) and a copy of the other ``obs`` columns come along,
    so that queries naming a column (e.g. ``sample_key=``) find it; with ``batch_categories`` (a model's batches)
    the column takes them, in their order, and a batch outside them is refused. Counts on disk stay there. An
    :class:`~myvae.InputError` says what is wrong (not an AnnData, genes, batches, counts) before anything is read
    further; ``adata`` itself is never modified.
    """
    adata = check_anndata(adata, "adata=", takes_mudata=False)
    batches = None if batch_key is None else obs_column(adata, mdata, mod, batch_key)
    if batch_key is not None:
        if batches is None:
            raise InputError(missing_batches(batch_key))
        check_batch_values(batches, batch_key)
    mask = None
    if not adata.var_names.equals(model_genes):
        mask = model_genes_mask(model_genes, adata.var_names)
        if mask is None:
            check_same_genes(model_genes, adata.var_names)
    recorded = trained_layer(adata, key)
    layer = recorded if recorded is not None or SETUP_KEY in adata.uns else model_layer
    try:
        check_setup(adata, layer, None, mask)
    except InputError as error:
        raise InputError(
            f"{error} To use the model on these cells, record where their raw counts are with "
            "mv.pp.setup_counts(adata, layer=...)."
        ) from error
    labels = None if batches is None else batch_labels(batches, batch_categories)
    data = training_anndata(adata, layer, batch_key, batches=labels, mask=mask)
    for column in adata.obs.columns.difference(data.obs.columns):
        data.obs[column] = adata.obs[column].values
    return data


def missing_batches(batch_key: str) -> str:
    """The message for cells without the batch column of the model, with how to add it (also from a MuData)."""
    return (
        f"The model was trained with batches from obs[{batch_key!r}], and these cells' obs has no such column. Add "
        "each cell's batch under that name; for a MuData's modality whose batches are a column of mdata.obs, pass "
        "the MuData with mod= to MyVAE.from_anndata or MyVAE.load (e.g. `mv.MyVAE.from_anndata(mdata, mod='rna')`), "
        f"or add the column: `mdata['rna'].obs[{batch_key!r}] = "
        f"mdata.obs[{batch_key!r}].reindex(mdata['rna'].obs_names)`."
    )


def is_counts_copy(adata: AnnData) -> bool:
    """Whether ``adata`` was made by :func:`training_anndata` (or :func:`counts_copy`), its ``X`` checked counts."""
    return bool(adata.uns.get(_COUNTS_COPY, False))


def bare_anndata(matrix: Any, obs: pd.DataFrame, var: pd.DataFrame) -> AnnData:
    """An AnnData of the package's own, with the user's cell and gene names, without AnnData's warning about them.

    Names that repeat are the user's (AnnData warned them when their object was made); a copy of them made inside a
    call is not news, and the warning would point at the package's code.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* names are not unique", category=UserWarning)
        return AnnData(X=matrix, obs=obs, var=var)


def trained_layer(adata: AnnData, key: str = "myvae") -> str | None:
    """The counts layer a model was trained on: what :func:`myvae.tl.myvae` recorded, else the setup record's."""
    params = adata.uns.get(key, {}).get("params", {}) if isinstance(adata.uns.get(key), dict) else {}
    if params.get("layer") is not None:
        return params["layer"]
    return read_setup(adata)["layer"]


def model_genes_mask(model_genes: pd.Index, genes: pd.Index) -> np.ndarray | None:
    """The boolean mask over ``genes`` that selects the model's genes, in the model's order.

    ``None`` if no mask does: a model gene is missing, a name repeats (in a list other than the model's), or the
    order differs.
    """
    if genes.equals(model_genes):  # the model's own list, repeated names (if any) included
        return np.ones(len(genes), dtype=bool)
    if not genes.is_unique:
        return None
    positions = genes.get_indexer(model_genes)
    if (positions < 0).any() or not np.all(np.diff(positions) > 0):
        return None
    mask = np.zeros(len(genes), dtype=bool)
    mask[positions] = True
    return mask


def model_counts(adata: AnnData, model_genes: pd.Index, layer: str | None) -> tuple[Any, pd.Index]:
    """The counts of the model's genes, checked, as lazily as they are stored, and those genes' names.

    The data may hold more genes than the model (e.g. all genes, when the model was trained on the highly variable
    ones): the model's genes are selected by name. They must all be there, in the model's order.
    """
    mask = model_genes_mask(model_genes, adata.var_names)
    if mask is None and not adata.var_names.is_unique:
        repeated = adata.var_names[adata.var_names.duplicated()].unique()
        raise InputError(
            f"adata.var_names repeat {len(repeated)} names (e.g. {repeated[0]!r}), so the model's genes cannot be "
            "found in them by name. Make them unique (`adata.var_names_make_unique()`) if the model's are, or give "
            "the data the model's genes in the model's order."
        )
    if mask is None:
        check_same_genes(model_genes, adata.var_names)  # raises, naming the missing or extra genes
    where = counts_location(layer)
    if not mask.all():
        where += f" (the model's {int(mask.sum())} genes)"
    counts = select_genes(get_counts_matrix(adata, layer), mask)
    check_counts(counts, where, counts_elsewhere=lambda: raw_counts_advice(adata))
    return counts, adata.var_names[mask]
