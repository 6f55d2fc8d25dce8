"""Reference mapping as scvi-tools' scArches methods do it: a query model with the reference's weights.

:meth:`~myvae.MyVAE.load_query_data` builds a model for new cells whose batches the reference never saw: the
decoder's first layer gains a column for each new batch (the reference's batches keep theirs), every other weight
is the reference's, and training then moves only the new columns (``unfrozen=False``). The encoder does not read the
batch, so the query cells' embedding is the reference's whatever the training; what the query model learns is how
to decode the new batches (``get_normalized_expression(transform_batch=...)``, differential expression).
:meth:`~myvae.MyVAE.prepare_query_anndata` gives query cells the reference's genes in the reference's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from scipy import sparse
from scvi.model._utils import parse_device_args

from myvae._checks import check_anndata
from myvae._counts import get_counts_matrix
from myvae._exceptions import InputError
from myvae._setup import SETUP_KEY, bare_anndata, counts_copy, make_setup_record, model_genes_mask, trained_layer

from ._save_load import model_payload, read_model_file

if TYPE_CHECKING:
    from ._myvae import MyVAE

__all__ = ["FrozenReference", "QueryMixin"]

_DECODER_BATCH_WEIGHT = "networks.decoder.0.weight"
"""The decoder's first weight: hidden units × (latent dimensions, then one column per batch when there are two+)."""


class QueryMixin:
    """scvi-tools' reference mapping for :class:`~myvae.MyVAE`: ``prepare_query_anndata`` and ``load_query_data``."""

    @classmethod
    def prepare_query_anndata(
        cls,
        adata: AnnData,
        reference_model: MyVAE | str | Path,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> AnnData | pd.Index | None:
        """Give query cells the reference model's genes, in its order, with zero counts for those they lack.

        As scvi-tools' ``prepare_query_anndata``, except that the query's own AnnData is never changed: when its
        genes already are the reference's (in the reference's order, other genes between them allowed), nothing
        needs doing and ``None`` is returned; otherwise ``inplace=False`` returns a new AnnData, and ``inplace=True``
        (scvi-tools' default, which would replace the AnnData's genes) is an :class:`~myvae.InputError` that says so.

        Parameters
        ----------
        adata
            The query cells; their counts are read from the layer their records name (as :meth:`load_query_data`
            reads them).
        reference_model
            The reference: a :class:`~myvae.MyVAE` or a folder written by its ``save``.
        return_reference_var_names
            Only return the reference's genes.
        inplace
            See above.

        Returns
        -------
        The reference's genes (``return_reference_var_names=True``); ``None`` when the query needs no change; else
        (``inplace=False``) a new AnnData: the counts of the reference's genes in ``X`` (zeros for genes the query
        lacks, recorded as ``uns["myvae_setup"]``), a copy of ``obs``.
        """
        genes = pd.Index(_reference_payload(reference_model)["var_names"])
        if return_reference_var_names:
            return genes
        adata = check_anndata(adata, "MyVAE.prepare_query_anndata", takes_mudata=False)
        positions = adata.var_names.get_indexer(genes) if adata.var_names.is_unique else None
        if positions is None:
            raise InputError(
                "The query's var_names repeat names, so the reference's genes cannot be found in them by name; make "
                "them unique first (`adata.var_names_make_unique()`)."
            )
        if np.all(positions >= 0) and np.all(np.diff(positions) > 0):
            return None
        if inplace:
            raise InputError(
                f"The query {_genes_mismatch(genes, adata.var_names)}, and myvae does not change the genes of your "
                "AnnData in place; take a new AnnData instead: "
                "`query = mv.MyVAE.prepare_query_anndata(query, reference_model, inplace=False)`."
            )
        return _padded_query(adata, genes, positions)

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: MyVAE | str | Path,
        *,
        unfrozen: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> Self:
        """A query model: the reference's weights, with decoder columns for the query's new batches (scArches).

        As scvi-tools' ``load_query_data``. The query cells need the reference's genes (see
        :meth:`prepare_query_anndata`) and its batch column; their batches that the reference never saw get new
        columns in the decoder's first layer, starting at zero. With ``unfrozen=False`` training
        the query model (``query_model.train(...)``) moves only those columns: every other weight, the reference's
        batch columns included, is restored after each step, so it stays exactly the reference's (whatever the
        weight decay). The encoder does not read the batch, so ``get_latent_representation`` gives the query cells
        the embedding the reference gives them (``mv.tl.myvae(query, model=reference)`` writes it without
        training); the trained columns decode the new batches. The query's ``AnnData`` is not modified. As in
        scvi-tools, the query model counts as untrained until it is trained, and after ``save`` and ``load`` it
        trains like any model (nothing frozen).

        Parameters
        ----------
        adata
            The query cells, with the reference's genes (in its order; other genes between them are left out) and
            its ``batch_key`` column.
        reference_model
            The trained reference: a :class:`~myvae.MyVAE` or a folder written by its ``save``.
        unfrozen
            Train every weight of the query model (fine-tuning) instead of the new batches' columns alone.
        accelerator, device
            Where the query model lives, as in :meth:`load`.

        Returns
        -------
        The query model, untrained.
        """
        payload = _reference_payload(reference_model)
        if not payload["is_trained"]:
            raise InputError("reference_model is untrained; train it first (reference_model.train()).")
        setup = payload["setup"]
        batch_key = setup.get("batch_key")
        if batch_key is None and not unfrozen:
            raise InputError(
                "The reference model was trained without batches, so a query model has no batch of its own to "
                "learn: embed the query cells with mv.tl.myvae(query, model=reference_model), or pass unfrozen=True "
                "to fine-tune all its weights on them."
            )
        adata = check_anndata(adata, "MyVAE.load_query_data", takes_mudata=False)
        genes = pd.Index(payload["var_names"])
        if not adata.var_names.equals(genes) and model_genes_mask(genes, adata.var_names) is None:
            raise InputError(
                f"The query {_genes_mismatch(genes, adata.var_names)}; give it the reference's genes first: "
                "`query = mv.MyVAE.prepare_query_anndata(query, reference_model, inplace=False)`."
            )
        data = counts_copy(adata, genes, setup.get("layer"), batch_key)
        reference_batches = list(setup["batch_categories"]) if batch_key is not None else []
        if batch_key is not None:
            labels = data.obs[batch_key].astype(str)
            new_batches = sorted(set(labels) - set(reference_batches))
            categories = reference_batches + new_batches
            data.obs[batch_key] = pd.Categorical(labels, categories=categories)
        cls.setup_anndata(data, batch_key=batch_key)
        model = cls(data, **payload["init_params"])
        n_reference_batches = len(reference_batches)
        state = _query_state_dict(
            payload["model_state_dict"], model.module.state_dict(), model.n_latent, n_reference_batches
        )
        model.module.load_state_dict(state)
        model.is_trained_ = False
        model.frozen_ = None if unfrozen else _frozen_masks(model.module, model.n_latent, n_reference_batches)
        _, _, torch_device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
        model.to_device(torch_device)
        return model


class FrozenReference(Callback):
    """Keep the frozen weights of a query model where they were when training began.

    After every training step each parameter with a mask gets back its starting value wherever the mask is
    ``True``, so the optimiser's updates (weight decay included) move only the rest.

    Parameters
    ----------
    module
        The query model's module.
    masks
        Per parameter name (as in ``module.named_parameters()``), ``True`` where the weight is frozen.
    """

    def __init__(self, module: torch.nn.Module, masks: dict[str, torch.Tensor]):
        self._module = module
        self._masks = masks
        self._frozen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        parameters = dict(self._module.named_parameters())
        self._frozen = [
            (parameters[name], parameters[name].detach().clone(), mask.to(parameters[name].device))
            for name, mask in self._masks.items()
        ]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            for parameter, start, mask in self._frozen:
                parameter.copy_(torch.where(mask, start, parameter))


def _reference_payload(reference_model: Any) -> dict[str, Any]:
    """The save-format payload of a reference given as a model object or as a folder written by ``save``."""
    from ._myvae import MyVAE

    if isinstance(reference_model, MyVAE):
        return model_payload(reference_model)
    if isinstance(reference_model, str | Path):
        return read_model_file(reference_model)
    raise InputError(
        f"reference_model takes a MyVAE or a folder written by its save(), got {type(reference_model).__name__}."
    )


def _genes_mismatch(genes: pd.Index, query_genes: pd.Index) -> str:
    """How the query's genes differ from the reference's ``genes``, for a message ("The query ...")."""
    missing = int((~genes.isin(query_genes)).sum())
    return (
        f"lacks {missing} of the reference's {len(genes)} genes"
        if missing
        else "has the reference's genes in another order"
    )


def _query_state_dict(
    reference: dict[str, torch.Tensor], query: dict[str, torch.Tensor], n_latent: int, n_reference_batches: int
) -> dict[str, torch.Tensor]:
    """The reference's weights in the query model's shapes: its decoder gains the query's new batch columns.

    The new columns start at zero (a new batch is first decoded without a batch effect of its own); a reference
    without batch columns (one batch) decodes its batch as a zero column too, which leaves its decoder unchanged.
    """
    state = {name: value.clone() for name, value in reference.items()}
    old, new = reference[_DECODER_BATCH_WEIGHT], torch.zeros_like(query[_DECODER_BATCH_WEIGHT], device="cpu")
    if old.shape != new.shape:
        new[:, :n_latent] = old[:, :n_latent]
        if n_reference_batches > 1:
            new[:, n_latent : n_latent + n_reference_batches] = old[:, n_latent:]
        state[_DECODER_BATCH_WEIGHT] = new
    return state


def _frozen_masks(module: torch.nn.Module, n_latent: int, n_reference_batches: int) -> dict[str, torch.Tensor]:
    """``True`` for every weight of the query model except the decoder's columns of the new batches."""
    masks = {}
    for name, parameter in module.named_parameters():
        mask = torch.ones_like(parameter, dtype=torch.bool, device="cpu")
        if name == _DECODER_BATCH_WEIGHT:
            mask[:, n_latent + max(n_reference_batches, 1) :] = False
        masks[name] = mask
    return masks


def _padded_query(adata: AnnData, genes: pd.Index, positions: np.ndarray) -> AnnData:
    """A new AnnData of ``adata``'s counts of ``genes`` (zeros where ``positions`` is -1) and a copy of its obs."""
    counts = sparse.csr_matrix(get_counts_matrix(adata, trained_layer(adata)))
    present = positions >= 0
    selection = sparse.csc_matrix(  # column j of the result is the query's gene positions[j], or zeros
        (np.ones(int(present.sum()), dtype=counts.dtype), (positions[present], np.flatnonzero(present))),
        shape=(adata.n_vars, len(genes)),
    )
    padded = sparse.csr_matrix(counts @ selection)
    query = bare_anndata(padded, adata.obs.copy(), pd.DataFrame(index=genes.copy()))
    query.uns[SETUP_KEY] = make_setup_record(None, None)
    return query
