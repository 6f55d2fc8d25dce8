"""``pp.setup_counts``: check which matrix holds the counts and record the choice in the AnnData."""

from __future__ import annotations

from typing import Any

from anndata import AnnData
from mudata import MuData

from myvae._checks import check_batch_column, check_counts, get_counts_matrix
from myvae._data import copy_data, resolve_data
from myvae.model._streaming import check_counts_in_chunks, is_out_of_core

__all__ = ["SETUP_KEY", "counts_location", "read_setup", "setup_counts"]

SETUP_KEY = "myvae_setup"
"""Key of ``adata.uns`` where :func:`setup_counts` records its choices."""


def counts_location(layer: str | None) -> str:
    """How the user names the counts matrix, for messages: ``adata.X`` or ``adata.layers['…']``."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _make_record(layer: str | None, batch_key: str | None) -> dict[str, str]:
    # h5ad cannot store None, so an unset choice is left out of the record.
    record = {"layer": layer, "batch_key": batch_key}
    return {key: value for key, value in record.items() if value is not None}


def read_setup(adata: AnnData) -> dict[str, Any]:
    """The choices recorded by :func:`setup_counts`, with ``None`` for those not made.

    Returns
    -------
    A dict with keys ``layer`` and ``batch_key``; both ``None`` when the AnnData was never set up.
    """
    record = dict(adata.uns.get(SETUP_KEY, {}))
    return {"layer": record.get("layer"), "batch_key": record.get("batch_key")}


def check_setup(adata: AnnData, layer: str | None, batch_key: str | None) -> None:
    """Check that ``layer`` (or ``X``) holds raw counts and that ``batch_key`` names an ``obs`` column.

    Counts on disk (a backed AnnData's ``X``, a zarr or dask array) are checked a chunk of rows at a time.
    """
    counts = get_counts_matrix(adata, layer)
    if batch_key is not None:
        check_batch_column(adata, batch_key)
    if is_out_of_core(counts):
        check_counts_in_chunks(counts, counts_location(layer))
    else:
        check_counts(counts, counts_location(layer))


def setup_counts(
    data: AnnData | MuData,
    layer: str | None = None,
    *,
    mod: str | None = None,
    batch_key: str | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Check that a matrix holds raw counts and record it as the input of :func:`myvae.tl.myvae`.

    The checks run before anything is written: the counts must be finite, non-negative integers (stored as an
    integer or a float dtype, dense or sparse) and every cell must have at least one count. The choices are
    recorded in ``adata.uns["myvae_setup"]``, so they survive :meth:`anndata.AnnData.write_h5ad` and a new
    Python session. Counts on disk — an AnnData opened with ``backed="r"``, or a zarr or dask array — are checked a
    chunk of cells at a time, without loading the matrix.

    Parameters
    ----------
    data
        Annotated data matrix, cells × genes, or a MuData holding an RNA modality.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    mod
        For a MuData: the modality holding the RNA counts (e.g. ``"rna"``); the record goes into that modality.
    batch_key
        Column of ``adata.obs`` naming each cell's batch (sample, run, donor): labels (strings or categories),
        or integers with few distinct values; no missing values. :func:`myvae.tl.myvae` then makes the decoder
        conditional on the batch, so the latent space need not encode it (batch correction, as in scVI).
    copy
        Return a copy instead of writing to ``data``.

    Returns
    -------
    ``None``, or a set-up copy (AnnData or MuData, as given) if ``copy=True``. Sets ``adata.uns["myvae_setup"]``
    (for a MuData, ``mdata[mod].uns["myvae_setup"]``): a dict with ``layer`` and ``batch_key`` (each left out when
    not given).

    Raises
    ------
    myvae.InputError
        If the matrix does not hold raw counts, ``layer`` or ``batch_key`` does not exist, the batch column has
        missing values or looks continuous, or ``mod`` is missing or unknown for a MuData.

    Examples
    --------
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()
    >>> adata.layers["counts"] = adata.X.copy()
    >>> mv.pp.setup_counts(adata, layer="counts")
    >>> adata.uns["myvae_setup"]
    {'layer': 'counts'}

    For a MuData, name the RNA modality:

    >>> mdata = mv.datasets.pbmc_cite()
    >>> mv.pp.setup_counts(mdata, mod="rna")
    """
    adata, mdata = resolve_data(data, mod, "setup_counts", copy=copy)
    check_setup(adata, layer, batch_key)
    if copy:
        adata, mdata = copy_data(adata, mdata, mod)
    adata.uns[SETUP_KEY] = _make_record(layer, batch_key)
    if copy:
        return adata if mdata is None else mdata
    return None
