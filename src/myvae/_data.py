"""AnnData or MuData: find the modality a call works on, and write results back into both."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import mudata
import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from myvae._checks import check_anndata
from myvae._exceptions import InputError

__all__ = [
    "copy_data",
    "modality_columns_stay",
    "obs_column",
    "obs_columns_listing",
    "resolve_data",
    "write_aligned_obsm",
]


def modality_columns_stay() -> AbstractContextManager:
    """Within the block, ``MuData.update()`` (which reading a file calls) behaves as in mudata >= 0.4.

    Modality columns stay in their modalities instead of being pulled into the global ``obs``/``var``. mudata 0.3
    still pulls them unless told not to, and announces the change with a ``FutureWarning``; mudata 0.4 has no
    such option, and its ``update()`` already keeps them where they are.
    """
    set_options = getattr(mudata, "set_options", None)  # mudata < 0.4
    return set_options(pull_on_update=False) if set_options is not None else nullcontext()


def resolve_data(data: Any, mod: str | None, func: str, *, copy: bool = False) -> tuple[AnnData, MuData | None]:
    """The AnnData a call works on, and the MuData it belongs to (``None`` for an AnnData).

    Parameters
    ----------
    data
        What the user passed: an AnnData, or a MuData with ``mod`` naming the RNA modality.
    mod
        Modality holding the RNA counts; only for a MuData.
    func
        Name of the public function, for the messages.
    copy
        Whether the call will return a copy: refused for an AnnData opened in backed mode.
    """
    adata, mdata = _resolve(data, mod, func)
    if copy and adata.isbacked:
        raise InputError(
            f"{func}(copy=True) cannot copy an AnnData opened in backed mode (its counts stay on disk); leave "
            "copy=False, which writes the small results (uns, obsm) into the object in memory and leaves the file "
            "as it is, or load the data first with `adata = adata.to_memory()`."
        )
    return adata, mdata


def _resolve(data: Any, mod: str | None, func: str) -> tuple[AnnData, MuData | None]:
    if isinstance(data, MuData):
        modalities = ", ".join(repr(name) for name in data.mod) or "none"
        if mod is None:
            raise InputError(
                f"{func} got a MuData; pass mod= naming the modality that holds the RNA counts, "
                f"e.g. mod='rna' (modalities: {modalities})."
            )
        if mod not in data.mod:
            raise InputError(f"mod={mod!r} is not a modality of the MuData (modalities: {modalities}).")
        adata = check_anndata(data.mod[mod], func)
        if not data.obs_names.is_unique:
            raise InputError(
                "The MuData's cell names are not unique, so results cannot be aligned to its cells; "
                "make them unique first with `mdata.obs_names_make_unique()`."
            )
        return adata, data
    if mod is not None:
        raise InputError(f"mod={mod!r} applies to a MuData, but {func} got an AnnData; leave mod out.")
    return check_anndata(data, func), None


def copy_data(adata: AnnData, mdata: MuData | None, mod: str | None) -> tuple[AnnData, MuData | None]:
    """Copies of the AnnData and of the MuData it belongs to, the copied AnnData being the copied modality."""
    if mdata is None:
        return adata.copy(), None
    mdata = mdata.copy()
    return mdata.mod[mod], mdata


def write_aligned_obsm(mdata: MuData, adata: AnnData, key: str, values: np.ndarray) -> None:
    """Write per-cell ``values`` of a modality into ``mdata.obsm[key]``, NaN for cells absent from the modality."""
    rows = mdata.obs_names.get_indexer(adata.obs_names)
    aligned = np.full((mdata.n_obs, *values.shape[1:]), np.nan, dtype=values.dtype)
    aligned[rows] = values
    mdata.obsm[key] = aligned


def obs_column(adata: AnnData, mdata: MuData | None, mod: str | None, key: str) -> pd.Series | None:
    """A per-cell column of ``adata``: ``adata.obs[key]``, or for a MuData's modality one of ``mdata.obs``.

    In a MuData, ``key`` may name a column of the modality, a column of ``mdata.obs`` (its global columns, such as
    clusters of a joint embedding, or ``"rna:sample"`` as muon names the modality's columns there), or
    ``"rna:sample"`` for the modality's ``sample``. ``None`` if there is no such column.
    """
    if key in adata.obs.columns:
        return adata.obs[key]
    if mdata is not None and key in mdata.obs.columns:
        return mdata.obs[key].reindex(adata.obs_names)
    if mdata is not None and key.startswith(f"{mod}:") and key.removeprefix(f"{mod}:") in adata.obs.columns:
        return adata.obs[key.removeprefix(f"{mod}:")]
    return None


def obs_columns_listing(adata: AnnData, mdata: MuData | None, mod: str | None) -> tuple[str, str]:
    """Where :func:`obs_column` looks and the columns it finds there, for a message."""
    where = "adata.obs" if mdata is None else f"mdata[{mod!r}].obs or mdata.obs"
    columns = list(adata.obs.columns) + ([] if mdata is None else list(mdata.obs.columns))
    return where, ", ".join(map(repr, dict.fromkeys(columns))) or "none"
