"""Checks of user input, run before any work so that a failed call changes nothing."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from myvae._exceptions import InputError

__all__ = [
    "MIN_CELLS",
    "check_accelerator",
    "check_anndata",
    "check_key_added",
    "check_keywords",
    "check_non_negative_int",
    "check_obs_key",
    "check_positive_float",
    "check_positive_int",
    "check_same_genes",
    "checked_indices",
]

MIN_CELLS = 10
"""Fewest cells :func:`myvae.tl.myvae` trains on: it keeps 10% of them aside to score the model."""


def check_anndata(data: Any, func: str, *, takes_mudata: bool = True) -> AnnData:
    """Return ``data`` if it is an AnnData; explain what to pass instead otherwise.

    Parameters
    ----------
    data
        What the user passed as the first argument.
    func
        Name of the public function, for the message.
    takes_mudata
        Whether the function also takes a MuData (with ``mod=``); if not, a MuData is told to pass its modality.
    """
    if isinstance(data, AnnData):
        return data
    if not takes_mudata and isinstance(data, MuData):
        modalities = ", ".join(repr(name) for name in data.mod) or "none"
        raise InputError(
            f"{func} takes an AnnData; for a MuData pass its modality, e.g. mdata['rna'] (modalities: {modalities})."
        )
    accepted = "an AnnData or a MuData" if takes_mudata else "an AnnData"
    raise InputError(f"{func} expects {accepted} (cells × genes), got {type(data).__name__}.")


def check_obs_key(adata: AnnData, key: str, argument: str) -> None:
    """Raise an :class:`~myvae.InputError` if ``key`` is not an ``obs`` column, listing the columns."""
    if key not in adata.obs.columns:
        columns = ", ".join(repr(column) for column in adata.obs.columns) or "none"
        raise InputError(f"{argument}={key!r} is not a column of adata.obs (columns: {columns}).")


def _is_integer_from(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) of at least ``minimum``."""
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


def check_positive_int(value: Any, argument: str, *, allow_none: bool = False) -> None:
    """Raise an :class:`~myvae.InputError` unless ``value`` is a positive integer (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if not _is_integer_from(value, 1):
        allowed = "a positive integer or None" if allow_none else "a positive integer"
        raise InputError(f"{argument} must be {allowed}, got {value!r}.")


def check_non_negative_int(value: Any, argument: str, meaning: str = "") -> None:
    """Raise an :class:`~myvae.InputError` unless ``value`` is an integer of at least 0.

    ``meaning`` (e.g. ``" (0 turns it off)"``) is added to the message after what is expected.
    """
    if not _is_integer_from(value, 0):
        raise InputError(f"{argument} must be an integer of at least 0{meaning}, got {value!r}.")


def checked_indices(indices: Any, n_obs: int) -> np.ndarray:
    """``indices`` of cells as positions, checked: integers within ``n_obs`` (negative from the end), or a mask.

    A boolean mask must have one entry per cell. An :class:`~myvae.InputError` names the first position out of range.
    """
    positions = np.asarray(indices)
    if positions.dtype == bool:
        if positions.shape != (n_obs,):
            raise InputError(f"indices: a boolean mask needs one entry per cell ({n_obs}), got {positions.shape}.")
        return np.flatnonzero(positions)
    if positions.size == 0:
        return positions.astype(np.int64).reshape(-1)
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise InputError(f"indices takes cell positions (a list of integers) or a boolean mask, got {indices!r:.80}.")
    outside = positions[(positions >= n_obs) | (positions < -n_obs)]
    if outside.size:
        raise InputError(f"indices: {outside[0]} is out of range for {n_obs} cells (positions 0 to {n_obs - 1}).")
    return positions


def check_accelerator(accelerator: Any) -> None:
    """Raise an :class:`~myvae.InputError` for an accelerator that is not a name, or a GPU that torch cannot find.

    Lightning's ``"gpu"`` means a CUDA or an Apple (MPS) GPU; other names (``"auto"``, ``"cpu"``, ...) are left to it.
    """
    if not isinstance(accelerator, str):
        raise InputError(f"accelerator must be a name such as 'auto', 'cpu' or 'gpu', got {accelerator!r}.")
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    wanted = {"gpu": cuda or mps, "cuda": cuda, "mps": mps}.get(accelerator.lower(), True)
    if not wanted:
        raise InputError(
            f"accelerator={accelerator!r} asks for a GPU, but torch finds none here (torch.cuda.is_available() is "
            f"{cuda}, torch.backends.mps.is_available() is {mps}). Pass accelerator='auto' (the default: a GPU where "
            "there is one, else the CPU) or 'cpu'."
        )


def check_positive_float(value: Any, argument: str) -> None:
    """Raise an :class:`~myvae.InputError` unless ``value`` is a finite number greater than zero."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not (0 < value < np.inf):
        raise InputError(f"{argument} must be a finite number greater than 0, got {value!r}.")


def check_key_added(key: Any, argument: str = "key_added") -> None:
    """Raise an :class:`~myvae.InputError` unless ``key`` can name ``obsm``/``layers``/``uns`` entries."""
    if not isinstance(key, str) or not key or "/" in key:
        raise InputError(f"{argument} must be a non-empty string without '/', got {key!r}.")


def check_same_genes(model_genes: Sequence[str], data_genes: Sequence[str]) -> None:
    """Raise an :class:`~myvae.InputError` unless the data have the model's genes, by name and in the same order."""
    model_genes, data_genes = pd.Index(model_genes), pd.Index(data_genes)
    if model_genes.equals(data_genes):
        return
    missing = model_genes.difference(data_genes)
    extra = data_genes.difference(model_genes)

    def _some(names: pd.Index) -> str:
        shown = ", ".join(map(repr, names[:5]))
        return f"{len(names)} ({shown}{', …' if len(names) > 5 else ''})"

    if len(missing) or len(extra):
        differences = [
            f"{what} {_some(names)}" for what, names in (("missing", missing), ("extra", extra)) if len(names)
        ]
        raise InputError(
            f"The data's genes differ from the model's: {', '.join(differences)}. "
            "Subset and order the data to the model's genes, e.g. `adata[:, model_genes]`."
        )
    raise InputError("The data have the model's genes in another order; reorder them with `adata[:, model_genes]`.")


def check_keywords(
    given: Iterable[str], valid: Collection[str], func: str, known: Mapping[str, str] | None = None
) -> None:
    """Raise an :class:`~myvae.InputError` naming the first keyword of ``given`` not in ``valid``.

    A keyword of ``known`` (the keywords users bring from other tools) gets its own explanation; any other, the
    valid keywords, the closest to it first (:mod:`difflib`'s similarity).

    Parameters
    ----------
    given
        The keywords passed.
    valid
        The keywords accepted.
    func
        Name of the function, for the message.
    known
        Keywords of other tools that do not apply here, each with why and what to use instead.
    """
    unknown = [key for key in given if key not in valid]
    if not unknown:
        return
    key = unknown[0]
    if known and key in known:
        raise InputError(f"{func} takes no {key}=: {known[key]}.")
    ranked = sorted(valid, key=lambda name: (-SequenceMatcher(None, key, name).ratio(), name))
    raise InputError(
        f"{func} got an unknown keyword argument {key!r}; did you mean {ranked[0]!r}? Valid keywords, closest "
        f"first: {', '.join(ranked)}."
    )
