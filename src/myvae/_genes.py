"""The genes a call works on: ``mask_var`` as :func:`scanpy.pp.pca` takes it.

By default the genes of ``var["highly_variable"]`` when that column exists (as after
:func:`scanpy.pp.highly_variable_genes` without ``subset=True``), all genes otherwise; ``None`` for all genes; the
name of a boolean ``var`` column; or a boolean mask over the genes.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from myvae._exceptions import InputError

__all__ = ["HIGHLY_VARIABLE_IF_PRESENT", "MASK_VAR_DOC", "MaskVar", "gene_mask"]


class _Default(Enum):
    highly_variable_if_present = "highly_variable_if_present"

    def __repr__(self) -> str:
        return "<var['highly_variable'] if present>"


HIGHLY_VARIABLE_IF_PRESENT = _Default.highly_variable_if_present
"""The default of ``mask_var``: ``var["highly_variable"]`` when the column exists, all genes otherwise."""

MaskVar = np.ndarray | pd.Series | str | None | _Default
"""What a ``mask_var`` argument takes."""

MASK_VAR_DOC = """
mask_var
    The genes to model, as :func:`scanpy.pp.pca` takes them: by default ``var["highly_variable"]`` when that
    column exists (after :func:`scanpy.pp.highly_variable_genes` without ``subset=True``), all genes otherwise;
    ``None`` for all genes; the name of a boolean ``var`` column; or a boolean mask over the genes. The library
    size of a cell is its total count over these genes.
"""


def gene_mask(adata: AnnData, mask_var: Any) -> tuple[str | np.ndarray | None, np.ndarray | None]:
    """Resolve ``mask_var``: what to record, and the boolean mask over ``adata``'s genes (``None``: all genes).

    Raises
    ------
    myvae.InputError
        If the column does not exist or is not boolean, the mask has the wrong length or type, or selects no gene.
    """
    if mask_var is HIGHLY_VARIABLE_IF_PRESENT:
        mask_var = "highly_variable" if "highly_variable" in adata.var.columns else None
    if mask_var is None:
        return None, None
    if isinstance(mask_var, str):
        if mask_var not in adata.var.columns:
            columns = ", ".join(repr(column) for column in adata.var.columns) or "none"
            raise InputError(
                f"mask_var={mask_var!r} is not a column of adata.var (columns: {columns}); name a boolean column, "
                "pass a boolean mask over the genes, or mask_var=None for all genes."
            )
        values, where = adata.var[mask_var], f"adata.var[{mask_var!r}]"
    elif isinstance(mask_var, np.ndarray | pd.Series | list):
        values, where = mask_var, "mask_var"
    else:
        raise InputError(
            f"mask_var takes the name of a boolean var column, a boolean mask over the genes or None; got "
            f"{type(mask_var).__name__}."
        )
    mask = np.asarray(values)
    if mask.dtype != bool:
        raise InputError(f"{where} must be boolean (True for the genes to model), got dtype {mask.dtype}.")
    if mask.shape != (adata.n_vars,):
        raise InputError(f"{where} has shape {mask.shape}; it must hold one boolean per gene ({adata.n_vars}).")
    if not mask.any():
        raise InputError(f"{where} selects no gene; select the genes to model, or pass mask_var=None for all genes.")
    return (mask_var if isinstance(mask_var, str) else mask), mask
