"""Query mapping: embedding new cells with a trained model, ``tl.myvae(query, model=...)``.

The encoder reads only the counts, so cells of any batch — those the model was trained on and those it never saw —
get their place in the latent space. The batch matters only to the decoder: cells of unseen batches are given one of
the model's batches as a stand-in (which does not change their embedding), and their denoised expression
(``layer_added``) needs ``transform_batch`` to name a batch the model knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from myvae._batches import batch_code, batch_labels, transform_batches
from myvae._exceptions import InputError
from myvae.model import MyVAE
from myvae.model._record import model_for_query

__all__ = [
    "QueryBatches",
    "check_transform_batch",
    "model_batch_key",
    "query_batches",
    "reusable_model",
    "unseen_record",
]


def reusable_model(model: MyVAE | AnnData | MuData | str | PathLike, accelerator: str) -> MyVAE:
    """The trained model ``model=`` names: the object itself, the model saved in a folder, or carried by an AnnData."""
    if isinstance(model, MyVAE):
        if not model.is_trained:
            raise InputError("model= got an untrained MyVAE; train it first, or leave model= out to train here.")
        return model
    if not isinstance(model, AnnData | MuData) and (
        not isinstance(model, str | PathLike) or not Path(model, "model.pt").is_file()
    ):
        raise InputError(
            "model= takes a trained MyVAE, a folder written by `model.save(...)` or an AnnData that carries a model; "
            f"got {model!r}, which is none of these."
        )
    return model_for_query(model, accelerator=accelerator)


def model_batch_key(model: MyVAE) -> str | None:
    """The ``obs`` column the model was trained with batches from (``None``: trained without batches)."""
    return model.adata_manager.registry["setup_args"].get("batch_key") if model.n_batch > 1 else None


def check_transform_batch(transform_batch: str | list[str] | None, categories: list[str], source: str) -> None:
    """Check ``transform_batch`` (one batch, or a list to average over) against ``categories``."""
    for batch in transform_batches(transform_batch):
        batch_code(batch, categories, source)


@dataclass(frozen=True)
class QueryBatches:
    """The batches of the query's cells as the model reads them.

    Attributes
    ----------
    labels
        Each cell's batch among the model's, a stand-in (the model's first batch) for cells of unseen batches;
        ``None`` for a model trained without batches.
    unseen
        Whether each cell's batch is one the model never saw.
    unseen_batches
        Those batches, sorted.
    """

    labels: pd.Categorical | None
    unseen: np.ndarray
    unseen_batches: list[str]


def query_batches(
    model: MyVAE,
    column: pd.Series | None,
    *,
    n_obs: int,
    layer_added: str | None,
    transform_batch: str | list[str] | None,
) -> QueryBatches:
    """Map the query's batch column onto the model's batches; refuse what the model cannot decode.

    ``transform_batch`` is checked against the model's batches; ``layer_added`` for cells of unseen batches needs
    it (their own batch cannot be decoded).
    """
    categories = model.batch_categories
    check_transform_batch(transform_batch, categories if model.n_batch > 1 else [], "the model")
    if column is None:
        return QueryBatches(None, np.zeros(n_obs, dtype=bool), [])
    labels = column.astype(str).to_numpy()
    unseen = ~np.isin(labels, categories)
    unseen_batches = sorted(set(labels[unseen]))
    if unseen.any() and layer_added is not None and transform_batch is None:
        raise InputError(
            f"layer_added={layer_added!r}: {int(unseen.sum())} cells come from batches the model never saw "
            f"({', '.join(map(repr, unseen_batches[:5]))}{', …' if len(unseen_batches) > 5 else ''}), and the model "
            f"cannot decode them as their own batch; pass transform_batch= naming one of the model's batches "
            f"({', '.join(map(repr, categories))}), or leave layer_added out."
        )
    stand_in = np.where(unseen, categories[0], labels)
    named = pd.Series(stand_in, index=column.index, name=column.name)
    return QueryBatches(batch_labels(named, categories), unseen, unseen_batches)


def unseen_record(batches: QueryBatches) -> dict[str, Any]:
    """What ``uns[key]["params"]`` records about cells of unseen batches."""
    return {
        "unseen_batches": np.asarray(batches.unseen_batches, dtype=object),
        "n_cells_unseen_batches": int(batches.unseen.sum()),
    }
