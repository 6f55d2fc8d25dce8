"""Batch columns: the checks a batch covariate must pass, its labels as categories, and a batch's code."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from myvae._checks import check_obs_key
from myvae._data import obs_column, obs_columns_listing
from myvae._exceptions import InputError
from myvae._wording import counted

__all__ = [
    "MAX_NUMERIC_BATCHES",
    "batch_code",
    "batch_column",
    "batch_labels",
    "check_batch_column",
    "check_batch_values",
    "transform_batches",
]

MAX_NUMERIC_BATCHES = 50
"""A numeric ``batch_key`` column with more distinct values than this is taken for a continuous covariate."""


def check_batch_column(adata: AnnData, key: str) -> None:
    """Raise an :class:`~myvae.InputError` unless ``obs[key]`` can serve as a categorical batch covariate.

    Strings and categories are accepted; a numeric column only with few distinct values (at most
    :data:`MAX_NUMERIC_BATCHES`), as batch numbers are. Missing values are refused.
    """
    check_obs_key(adata, key, "batch_key")
    check_batch_values(adata.obs[key], key)


def check_batch_values(column: pd.Series, key: str) -> None:
    """:func:`check_batch_column` for a column found elsewhere (e.g. a MuData's ``obs``), aligned to the cells."""
    n_missing = int(column.isna().sum())
    if n_missing:
        raise InputError(
            f"batch_key={key!r}: {counted(n_missing, 'cell')} without a batch (NaN); fill them, e.g. "
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


def batch_labels(column: pd.Series, categories: Sequence[str] | None = None) -> pd.Categorical:
    """A batch column as categories named by strings: the form in which the model reads batches.

    Parameters
    ----------
    column
        A column of ``obs`` (checked by :func:`check_batch_column`).
    categories
        The batches of a trained model, in the model's order; a label outside them is an
        :class:`~myvae.InputError`. ``None`` takes the column's categories in their order (sorted for a column that
        is not categorical), leaving out those no cell has.
    """
    labels = column.astype(str)
    if categories is None:
        categorical = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
        categories = [str(category) for category in categorical.cat.remove_unused_categories().cat.categories]
    else:
        unknown = sorted(set(labels) - set(categories))
        if unknown:
            raise InputError(
                f"obs[{column.name!r}] holds batches the model was not trained on ({', '.join(unknown)}); the model "
                f"knows {list(categories)}. To embed these cells, use mv.tl.myvae(adata, model=model) (the encoder "
                "does not read the batch); to decode their batches, map them with "
                "mv.MyVAE.load_query_data(adata, model) and train that model, or train a model on these batches."
            )
    return pd.Categorical(labels, categories=list(categories))


def transform_batches(transform_batch: Any) -> list:
    """A ``transform_batch`` argument as a list of batches.

    It takes one batch (a label, or an integer for a numeric batch column, read as its label), ``None``, or a
    non-empty list of batches to average over.
    """
    if transform_batch is None or isinstance(transform_batch, str | Integral):
        return [transform_batch]
    if isinstance(transform_batch, list | tuple | np.ndarray | pd.Index) and len(transform_batch):
        return list(transform_batch)
    raise InputError(
        f"transform_batch takes a batch, e.g. 'sample_1', or a non-empty list of batches, got {transform_batch!r}."
    )


def batch_code(batch: str | int | None, categories: Sequence[str], source: str) -> int | None:
    """Check a ``transform_batch`` argument and return the code of its batch (``None`` for ``None``).

    Parameters
    ----------
    batch
        The batch asked for.
    categories
        The batches, in the order of their codes (fewer than two: the data or the model have no batches).
    source
        Where the batches come from, for the message (``"obs['sample']"``, ``"the model"``).
    """
    if batch is None:
        return None
    if len(categories) < 2:
        raise InputError(
            "transform_batch= needs batches; set up the data with mv.pp.setup_counts(adata, batch_key=...) naming a "
            "column of at least two batches, and train on them."
        )
    if str(batch) not in categories:
        raise InputError(f"transform_batch={batch!r} is not a batch of {source}: {list(categories)}.")
    return list(categories).index(str(batch))


def batch_column(
    adata: AnnData, mdata: MuData | None, mod: str | None, key: str, model_batch_key: str | None = None
) -> pd.Series:
    """The batch of each cell of ``adata``: its ``obs`` column ``key``, found as :func:`obs_column` finds it."""
    column = obs_column(adata, mdata, mod, key)
    if column is None:
        where, listed = obs_columns_listing(adata, mdata, mod)
        if key == model_batch_key:
            raise InputError(
                f"The model was trained with batches from obs[{key!r}], and {where} has no such column (columns: "
                f"{listed}); pass batch_key= naming the column that holds these cells' batches."
            )
        raise InputError(f"batch_key={key!r} is not a column of {where} (columns: {listed}).")
    check_batch_values(column, key)
    return column
