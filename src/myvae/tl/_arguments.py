"""The checks :func:`myvae.tl.myvae` runs before any work, and the inputs its arguments name.

Keywords first (an unknown one is named, with the valid ones), then the values, then the data: which counts, which
batch column (of the AnnData or, for a MuData, of ``mdata.obs``), which genes. Everything raises an
:class:`~myvae.InputError` with the fix before anything is trained or written.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from myvae._batches import batch_column
from myvae._checks import (
    MIN_CELLS,
    check_accelerator,
    check_key_added,
    check_keywords,
    check_positive_float,
    check_positive_int,
)
from myvae._counts import get_counts_matrix, is_out_of_core
from myvae._exceptions import InputError
from myvae._genes import gene_mask
from myvae._setup import check_setup, read_setup
from myvae.model._myvae import train_keywords
from myvae.model._scvi_keywords import SCVI_MODEL_KEYWORDS, SCVI_TRAIN_KEYWORDS

__all__ = ["Inputs", "check_tool_keywords", "check_values", "resolve_inputs"]


_EPOCHS = (
    "the number of epochs is max_epochs= (training stops earlier once the held-out ELBO stops improving; "
    "early_stopping=False trains them all)"
)
OTHER_TOOLS_KEYWORDS = {
    # scanpy's tools (sc.pp.pca and its like)
    "use_highly_variable": "it is scanpy's older name for mask_var=; the genes of var['highly_variable'] are used "
    "by default when that column exists, and mask_var=None takes every gene",
    "n_comps": "the size of the embedding is n_latent= (10 by default, as in scvi-tools)",
    "seed": "the seed is random_state=, as in scanpy's tools",
    # scvi-tools' SCVI and its train()
    "n_epochs": _EPOCHS,
    "epochs": _EPOCHS,
    **SCVI_MODEL_KEYWORDS,
    **SCVI_TRAIN_KEYWORDS,
}
"""Keywords that scanpy and scvi-tools users bring to :func:`~myvae.tl.myvae`, with why they do not apply."""


def check_tool_keywords(
    train_kwargs: dict[str, Any],
    tool_keywords: Collection[str],
    *,
    reusing: bool,
    model_arguments: dict[str, tuple[Any, Any]] | None = None,
) -> None:
    """Refuse a keyword neither :func:`~myvae.tl.myvae`, :meth:`~myvae.MyVAE.train` nor Lightning's trainer takes.

    With ``reusing`` (``model=`` given), training keywords are refused too, and so are the tool's own model and
    training arguments (``model_arguments``: each name's value and default) given a value other than their
    default: they would do nothing.
    """
    check_keywords(train_kwargs, set(tool_keywords) | train_keywords(), "tl.myvae", known=OTHER_TOOLS_KEYWORDS)
    if not reusing:
        return
    ignored = list(train_kwargs) + [
        name for name, (value, default) in (model_arguments or {}).items() if value != default
    ]
    if ignored:
        raise InputError(
            f"Training arguments ({', '.join(ignored)}) do nothing when model= reuses a trained model, which has "
            "its own; leave them out, or train a new model by leaving out model=."
        )


def check_values(
    *,
    n_latent: Any,
    n_hidden: Any,
    max_epochs: Any,
    batch_size: Any,
    lr: Any,
    library_size: Any,
    key_added: Any,
    layer_added: Any,
    transform_batch: Any,
    accelerator: Any,
) -> None:
    """Refuse, with the fix, a value out of range; these checks need no data."""
    check_accelerator(accelerator)
    check_positive_int(n_latent, "n_latent")
    check_positive_int(n_hidden, "n_hidden")
    check_positive_int(max_epochs, "max_epochs", allow_none=True)
    check_positive_int(batch_size, "batch_size")
    if lr is not None:
        check_positive_float(lr, "lr")
    check_positive_float(library_size, "library_size")
    check_key_added(key_added)
    if layer_added is not None:
        check_key_added(layer_added, "layer_added")
    if transform_batch is not None and layer_added is None:
        raise InputError("transform_batch= only shapes layer_added=; pass layer_added='...' too, or leave it out.")


@dataclass(frozen=True)
class Inputs:
    """What a call of :func:`~myvae.tl.myvae` reads: the counts, the batches and the genes.

    Attributes
    ----------
    layer
        The layer holding the counts (``None``: ``X``).
    batch_key
        The batch column's name, if any.
    batches
        The batch column, aligned to the AnnData's cells (``None`` without batches).
    mask_var
        ``mask_var`` as recorded: a column name, a boolean mask, or ``None`` for all genes.
    mask
        The boolean mask over the genes (``None``: all genes).
    """

    layer: str | None
    batch_key: str | None
    batches: pd.Series | None
    mask_var: str | np.ndarray | None
    mask: np.ndarray | None


def resolve_inputs(
    adata: AnnData,
    mdata: MuData | None,
    mod: str | None,
    *,
    layer: str | None,
    batch_key: str | None,
    mask_var: Any,
    layer_added: str | None,
    reusing: bool,
    model_batch_key: str | None = None,
) -> Inputs:
    """Resolve and check the counts, batches and genes a call uses: the tool's arguments, else the setup record.

    When reusing a model, the batch column is the tool's ``batch_key``, else the model's ``batch_key``; a model
    trained without batches takes none.
    """
    setup = read_setup(adata)
    layer = setup["layer"] if layer is None else layer
    if reusing:
        if model_batch_key is None and batch_key is not None:
            raise InputError(
                f"batch_key={batch_key!r}: the model was trained without batches, so it reads none; leave batch_key "
                "out."
            )
        batch_key = batch_key or model_batch_key
    elif batch_key is None:
        batch_key = setup["batch_key"]
    mask_param, mask = gene_mask(adata, mask_var)
    check_setup(adata, layer, None, mask)
    batches = None if batch_key is None else batch_column(adata, mdata, mod, batch_key, model_batch_key)
    if layer_added is not None:
        if layer is not None and layer_added == layer:
            raise InputError(
                f"layer_added={layer_added!r} would overwrite the counts it is computed from; name another layer, "
                "e.g. layer_added='myvae_denoised'."
            )
        if is_out_of_core(get_counts_matrix(adata, layer)):
            raise InputError(
                "layer_added= would hold a dense cells × genes matrix in memory, and these counts are on disk; leave "
                "it out, and compute the denoised expression in parts with return_model=True and "
                "model.get_normalized_expression(indices=...)."
            )
    if not reusing and adata.n_obs < MIN_CELLS:
        raise InputError(
            f"The data have {adata.n_obs} cells; training needs at least {MIN_CELLS} "
            "(10% of the cells are kept aside to score the model). Pass more cells."
        )
    return Inputs(layer, batch_key, batches, mask_param, mask)
