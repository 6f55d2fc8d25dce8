"""Checks of user input, run before any work so that a failed call changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = [
    "CountsSummary",
    "InputError",
    "MIN_CELLS",
    "check_anndata",
    "check_counts",
    "check_key_added",
    "check_obs_key",
    "check_positive_float",
    "check_positive_int",
    "check_same_genes",
    "get_counts_matrix",
]

MIN_CELLS = 10
"""Fewest cells :func:`myvae.tl.myvae` trains on: it keeps 10% of them aside to score the model."""


class InputError(ValueError):
    """Raised when the data or an argument cannot be used; the message names the problem and the fix.

    It is a :class:`ValueError`, so ``except ValueError`` catches it too.
    """


class TrainingDivergedError(RuntimeError):
    """Raised when training diverges (the ELBO becomes NaN or infinite); the message says what to change.

    Nothing is written to the data: :func:`myvae.tl.myvae` writes its results only after training succeeded.
    """


def check_anndata(data: Any, func: str) -> AnnData:
    """Return ``data`` if it is an AnnData; explain what to pass instead otherwise.

    Parameters
    ----------
    data
        What the user passed as the first argument.
    func
        Name of the public function, for the message.
    """
    if isinstance(data, AnnData):
        return data
    raise InputError(f"{func} expects an AnnData or a MuData (cells × genes), got {type(data).__name__}.")


def get_counts_matrix(adata: AnnData, layer: str | None) -> Any:
    """The matrix holding the counts: ``adata.layers[layer]``, or ``adata.X`` when ``layer`` is ``None``."""
    if layer is None:
        if adata.X is None:
            raise InputError("adata.X is empty; pass `layer=` naming the layer that holds the raw counts.")
        return adata.X
    if layer not in adata.layers:
        # anndata >= 0.13 lists adata.X among the layers, under the key None
        available = ", ".join(repr(key) for key in adata.layers if key is not None) or "none"
        raise InputError(
            f"Layer {layer!r} does not exist (layers: {available}); pass one of them, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def check_obs_key(adata: AnnData, key: str, argument: str) -> None:
    """Raise an :class:`InputError` if ``key`` is not an ``obs`` column, listing the columns."""
    if key not in adata.obs.columns:
        columns = ", ".join(repr(column) for column in adata.obs.columns) or "none"
        raise InputError(f"{argument}={key!r} is not a column of adata.obs (columns: {columns}).")


MAX_NUMERIC_BATCHES = 50
"""A numeric ``batch_key`` column with more distinct values than this is taken for a continuous covariate."""


def check_batch_column(adata: AnnData, key: str) -> None:
    """Raise an :class:`InputError` unless ``obs[key]`` can serve as a categorical batch covariate.

    Strings and categories are accepted; a numeric column only with few distinct values (at most
    :data:`MAX_NUMERIC_BATCHES`), as batch numbers are. Missing values are refused.
    """
    check_obs_key(adata, key, "batch_key")
    column = adata.obs[key]
    n_missing = int(column.isna().sum())
    if n_missing:
        raise InputError(
            f"batch_key={key!r}: {n_missing} cells have no batch (NaN); fill them, e.g. "
            f"`adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)`, or remove those cells."
        )
    if pd.api.types.is_numeric_dtype(column) and not isinstance(column.dtype, pd.CategoricalDtype):
        n_values = column.nunique()
        if pd.api.types.is_float_dtype(column) and not np.array_equal(column, np.round(column)):
            raise InputError(
                f"batch_key={key!r} holds non-integer numbers; a batch is a category (a sample, a run). "
                "Pass a column of labels, or convert it with `.astype('category')` if these are labels."
            )
        if n_values > MAX_NUMERIC_BATCHES:
            raise InputError(
                f"batch_key={key!r} is numeric with {n_values} distinct values, which looks like a continuous "
                f"covariate, not batches; pass a column of batch labels, or convert it with `.astype('category')` "
                "if these are labels."
            )


def _stored_values(matrix: Any) -> np.ndarray:
    """The explicitly stored values: every entry of a dense array, the non-zeros of a sparse one."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix)


@dataclass
class CountsSummary:
    """What :func:`check_counts` needs to know about a matrix, summed over the row chunks it was read in.

    Attributes
    ----------
    dtype
        Data type of the stored values.
    n_not_finite
        NaN or infinite values.
    minimum
        Smallest stored value (0 when nothing is stored).
    non_integer
        Whether some value is not a whole number.
    n_empty
        Cells (rows) with zero total counts.
    """

    dtype: np.dtype
    n_not_finite: int = 0
    minimum: float = 0.0
    non_integer: bool = False
    n_empty: int = 0

    @classmethod
    def of(cls, matrix: Any, where: str) -> CountsSummary:
        """Summarise ``matrix`` (cells × genes, NumPy or SciPy sparse); refuse other types and shapes at once."""
        if not (sparse.issparse(matrix) or isinstance(matrix, np.ndarray)):
            raise InputError(
                f"{where} is a {type(matrix).__name__}; myvae takes a NumPy array or a SciPy sparse matrix of counts."
            )
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise InputError(f"{where} has shape {matrix.shape}; it needs at least one cell and one gene.")
        values = _stored_values(matrix)
        if values.dtype == bool or not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
            raise InputError(f"{where} has dtype {values.dtype}; it must hold counts as integers or floats.")
        summary = cls(values.dtype, minimum=float(values.min()) if values.size else 0.0)
        if np.issubdtype(values.dtype, np.floating):
            finite = np.isfinite(values)
            summary.n_not_finite = int(np.count_nonzero(~finite))
            summary.non_integer = not np.array_equal(values[finite], np.round(values[finite]))
        totals = np.asarray(matrix.sum(axis=1)).ravel()
        summary.n_empty = int(np.count_nonzero(totals == 0))
        return summary

    def __add__(self, other: CountsSummary) -> CountsSummary:
        return CountsSummary(
            self.dtype,
            self.n_not_finite + other.n_not_finite,
            min(self.minimum, other.minimum),
            self.non_integer or other.non_integer,
            self.n_empty + other.n_empty,
        )

    def raise_for_problems(self, where: str) -> None:
        """Raise an :class:`InputError` naming the first problem and its fix, if the summary shows one."""
        if self.n_not_finite:
            raise InputError(
                f"{where} holds {self.n_not_finite} NaN or infinite values; pass a matrix of raw counts "
                "(e.g. layer='counts'), or fix or remove the affected cells."
            )
        if self.minimum < 0:
            raise InputError(
                f"{where} holds negative values (minimum {self.minimum:g}); it looks scaled or centred. "
                "Pass the raw counts, e.g. layer='counts'."
            )
        if self.non_integer:
            raise InputError(
                f"{where} holds non-integer values (it looks log-normalised); pass layer='counts' or the raw counts "
                "(for example, keep `adata.layers['counts'] = adata.X.copy()` before normalising)."
            )
        if self.n_empty:
            raise InputError(
                f"{self.n_empty} cells have zero total counts in {where}; remove them first with "
                "`sc.pp.filter_cells(adata, min_counts=1)`."
            )


def check_counts(matrix: Any, where: str) -> None:
    """Check that ``matrix`` holds raw counts: finite, non-negative integers, and no cell without counts.

    Parameters
    ----------
    matrix
        Cells × genes, a NumPy array or a SciPy sparse matrix.
    where
        How the user names the matrix (``"adata.X"``, ``"adata.layers['counts']"``), for the messages.
    """
    summary = CountsSummary.of(matrix, where)
    if matrix.shape[0] == 0:
        raise InputError(f"{where} has shape {matrix.shape}; it needs at least one cell and one gene.")
    summary.raise_for_problems(where)


def check_positive_int(value: Any, argument: str, *, allow_none: bool = False) -> None:
    """Raise an :class:`InputError` unless ``value`` is a positive integer (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        allowed = "a positive integer or None" if allow_none else "a positive integer"
        raise InputError(f"{argument} must be {allowed}, got {value!r}.")


def check_positive_float(value: Any, argument: str) -> None:
    """Raise an :class:`InputError` unless ``value`` is a finite number greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not (0 < value < np.inf):
        raise InputError(f"{argument} must be a finite number greater than 0, got {value!r}.")


def check_key_added(key: Any, argument: str = "key_added") -> None:
    """Raise an :class:`InputError` unless ``key`` can name ``obsm``/``layers``/``uns`` entries."""
    if not isinstance(key, str) or not key or "/" in key:
        raise InputError(f"{argument} must be a non-empty string without '/', got {key!r}.")


def check_same_genes(model_genes: Sequence[str], data_genes: Sequence[str]) -> None:
    """Raise an :class:`InputError` unless the data have the model's genes, by name and in the same order."""
    model_genes, data_genes = pd.Index(model_genes), pd.Index(data_genes)
    if model_genes.equals(data_genes):
        return
    missing = model_genes.difference(data_genes)
    extra = data_genes.difference(model_genes)

    def _some(names: pd.Index) -> str:
        shown = ", ".join(map(repr, names[:5]))
        return f"{len(names)} ({shown}{', …' if len(names) > 5 else ''})"

    if len(missing) or len(extra):
        raise InputError(
            f"The data's genes differ from the model's: missing {_some(missing)}, extra {_some(extra)}. "
            "Subset and order the data to the model's genes, e.g. `adata[:, model_genes]`."
        )
    raise InputError("The data have the model's genes in another order; reorder them with `adata[:, model_genes]`.")
