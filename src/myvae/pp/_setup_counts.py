"""``pp.setup_counts``: check which matrix holds the counts and record the choice in the AnnData."""

from __future__ import annotations

from anndata import AnnData
from mudata import MuData

from myvae._data import copy_data, resolve_data
from myvae._docs import COPY, DATA, MOD, doc_params
from myvae._setup import SETUP_KEY, check_setup, make_setup_record, read_setup

__all__ = ["SETUP_KEY", "check_setup", "read_setup", "setup_counts"]


@doc_params(data=DATA, mod=MOD, copy=COPY)
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
    {data}
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    {mod}
        The record goes into that modality.
    batch_key
        Column of ``adata.obs`` naming each cell's batch (sample, run, donor): labels (strings or categories),
        or integers with few distinct values; no missing values. :func:`myvae.tl.myvae` then makes the decoder
        conditional on the batch, so the latent space need not encode it (batch correction, as in scVI).
    {copy}

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
    adata.uns[SETUP_KEY] = make_setup_record(layer, batch_key)
    if copy:
        return adata if mdata is None else mdata
    return None
