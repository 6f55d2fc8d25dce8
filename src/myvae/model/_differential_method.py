"""``MyVAE.differential_expression``: the model's Bayesian differential expression as scvi-tools' models return it.

One table for all comparisons (genes × statistics, with ``comparison``, ``group1`` and ``group2`` columns), from the
same posterior sampling as :func:`myvae.tl.rank_genes_groups` (:mod:`myvae.model._differential`), for those who
work with the model object as they do with scvi-tools' ``SCVI``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi import REGISTRY_KEYS

from myvae._checks import check_keywords, check_positive_int
from myvae._exceptions import InputError

from ._differential import DEFAULT_N_SAMPLES, Comparison, check_options, differential_expression, ranking

__all__ = ["DifferentialExpressionMixin"]

MIN_CELLS = 2
"""Fewest cells a side of a comparison may have."""

_SCVI_ONLY = {
    "n_samples_overall": "the posterior draws per group are n_samples= (5,000 by default, as scvi-tools draws)",
    "all_stats": "the table holds the posterior statistics; the fraction of each group's cells that express a gene "
    "is mv.tl.rank_genes_groups(..., pts=True)'s",
    "batchid1": "batch_correction=True decodes every draw in each of the model's batches and averages them",
    "batchid2": "batch_correction=True decodes every draw in each of the model's batches and averages them",
    "weights": "the draws are of random cells of each group, each cell alike",
    "filter_outlier_cells": "the draws are of random cells of each group, each cell alike",
    "importance_weighting_kwargs": "the draws are of random cells of each group, each cell alike",
    "pseudocounts": "the pseudocount added before taking logs is fixed, a tenth of the mean proportion (0.1 / genes)",
    "test_mode": "proba_de is the posterior probability that |LFC| > delta",
    "silent": "nothing is printed",
}
"""Keywords of scvi-tools' ``differential_expression`` that do not apply here, with what there is instead."""


class DifferentialExpressionMixin:
    """``differential_expression`` for a model whose module holds the shared networks (``module.networks``)."""

    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | np.ndarray | None = None,
        idx2: Sequence[int] | Sequence[bool] | np.ndarray | None = None,
        mode: Literal["change", "vanilla"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        batch_correction: bool = False,
        fdr_target: float = 0.05,
        *,
        n_samples: int = DEFAULT_N_SAMPLES,
        random_state: int = 0,
        **scvi_keywords: Any,
    ) -> pd.DataFrame:
        r"""Bayesian differential expression between groups of cells, as scvi-tools' ``differential_expression``.

        The same posterior sampling, statistics and FDR rule as :func:`myvae.tl.rank_genes_groups` (the docs'
        *Differential expression* page), returned as scvi-tools' models return it: one table for all comparisons,
        indexed by gene. Each comparison's genes come in the ranking's order (decreasing posterior mean LFC).

        Parameters
        ----------
        adata
            Cells with the model's genes; ``None`` uses the model's AnnData (for a model from
            :meth:`~myvae.MyVAE.from_anndata`, with a copy of that AnnData's ``obs``). Its counts are read as for the
            other queries.
        groupby
            ``obs`` column of the groups.
        group1
            Group, or list of groups, each compared with ``group2``; ``None``: every group of ``groupby``.
        group2
            The reference group; ``None``: the rest of the cells.
        idx1, idx2
            Instead of ``groupby``: the cells of one comparison (indices or a boolean mask); ``idx2=None`` compares
            ``idx1`` with the rest.
        mode
            ``"change"`` (``proba_de`` is :math:`P(|\mathrm{LFC}| > \delta)`) or ``"vanilla"``
            (:math:`P(\rho_1 > \rho_2)`).
        delta
            Smallest :math:`|\mathrm{LFC}|` that counts as a change.
        batch_size
            Cells encoded at a time (``None``: 1,024).
        batch_correction
            Decode every draw in each of the model's batches and average, instead of in its cell's own batch.
        fdr_target
            Target of the posterior expected FDR that ``is_de_fdr_<fdr_target>`` calls.
        n_samples
            Posterior draws per group and comparison.
        random_state
            Seed of the draws.
        **scvi_keywords
            scvi-tools' other options, each refused with what there is instead.

        Returns
        -------
        Genes × ``proba_de``, ``proba_not_de``, ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``,
        ``expected_fdr``, ``is_de_fdr_<fdr_target>``, ``comparison`` (``"<group1> vs <group2>"``), ``group1``,
        ``group2``; the comparisons one after another.
        """
        parameters = inspect.signature(DifferentialExpressionMixin.differential_expression).parameters
        valid = [name for name in parameters if name not in ("self", "scvi_keywords")]
        check_keywords(scvi_keywords, valid, "MyVAE.differential_expression", known=_SCVI_ONLY)
        check_options(mode, delta, n_samples, fdr_target, batch_correction, random_state, fdr_name="fdr_target")
        check_positive_int(batch_size, "batch_size", allow_none=True)
        if batch_correction and self.n_batch == 1:
            raise InputError("batch_correction=True needs a model trained with batches; leave it False.")
        data = self._validate_anndata(adata)
        if idx1 is not None:
            if groupby is not None or group1 is not None or group2 is not None:
                raise InputError("Pass either idx1= (and idx2=) or groupby= with group1=/group2=, not both.")
            comparisons = [_cells_comparison(idx1, idx2, data.n_obs)]
        else:
            comparisons = _group_comparisons(data, groupby, group1, group2, own=adata is None)
        manager = self.get_anndata_manager(data, required=True)
        codes = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY) if self.n_batch > 1 else None
        tables = differential_expression(
            self.module.networks,
            manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            [comparison for comparison, _ in comparisons],
            genes=self.adata.var_names,
            batch_codes=None if codes is None else np.asarray(codes).reshape(-1).astype(np.int64),
            mode=mode,
            delta=float(delta),
            n_samples=int(n_samples),
            fdr=float(fdr_target),
            batch_correction=bool(batch_correction),
            random_state=int(random_state),
            batch_size=batch_size or 1024,
        )
        parts = []
        for comparison, reference in comparisons:
            table = tables[comparison.name]
            table = table.iloc[ranking(table)].rename(columns={"is_de_fdr": f"is_de_fdr_{fdr_target}"})
            table.insert(1, "proba_not_de", 1.0 - table["proba_de"])
            parts.append(
                table.assign(comparison=f"{comparison.name} vs {reference}", group1=comparison.name, group2=reference)
            )
        return pd.concat(parts)


def _group_comparisons(
    data: AnnData, groupby: Any, group1: Any, group2: Any, *, own: bool
) -> list[tuple[Comparison, str]]:
    """Each group of ``group1`` (every group for ``None``) against ``group2`` (the rest for ``None``)."""
    if groupby is None:
        raise InputError("Pass groupby= (an obs column of groups) or idx1= (the cells of one side).")
    if not isinstance(groupby, str) or groupby not in data.obs.columns:
        columns = ", ".join(repr(column) for column in data.obs.columns if not column.startswith("_scvi")) or "none"
        hint = " Pass adata= the AnnData whose obs has it." if own else ""
        raise InputError(f"groupby={groupby!r} is not a column of the cells' obs (columns: {columns}).{hint}")
    groups = pd.Categorical(data.obs[groupby])  # in the column's category order, as scanpy lists groups
    labels = pd.Series(np.asarray(groups.astype(object)).astype(str))
    present = [str(group) for group in groups.categories if (groups == group).any()]
    chosen = present if group1 is None else [group1] if isinstance(group1, str) else list(group1)
    reference = "Rest" if group2 is None else group2
    unknown = [group for group in [*chosen, *([] if group2 is None else [group2])] if group not in present]
    if unknown:
        shown = ", ".join(repr(group) for group in present[:20])
        raise InputError(f"{unknown} are not groups of obs[{groupby!r}] ({shown}).")
    if group2 is not None:
        chosen = [group for group in chosen if group != group2]
    comparisons = []
    for group in chosen:
        in_group = (labels == group).to_numpy()
        in_reference = ~in_group if group2 is None else (labels == group2).to_numpy()
        for side, mask in ((group, in_group), (reference, in_reference)):
            if mask.sum() < MIN_CELLS:
                raise InputError(
                    f"{side!r} of obs[{groupby!r}] has {int(mask.sum())} cells for the comparison of {group!r}; each "
                    f"side needs at least {MIN_CELLS}. Leave that group out of group1=."
                )
        comparisons.append((Comparison(group, np.flatnonzero(in_group), np.flatnonzero(in_reference)), reference))
    return comparisons


def _cells_comparison(idx1: Any, idx2: Any, n_obs: int) -> tuple[Comparison, str]:
    """The comparison of the cells ``idx1`` with ``idx2`` (the rest for ``None``)."""
    first = _cell_indices(idx1, n_obs, "idx1")
    if idx2 is None:
        second = np.setdiff1d(np.arange(n_obs), first)
    else:
        second = _cell_indices(idx2, n_obs, "idx2")
    for name, cells in (("idx1", first), ("idx2" if idx2 is not None else "the rest", second)):
        if len(cells) < MIN_CELLS:
            raise InputError(f"{name} holds {len(cells)} cells; each side needs at least {MIN_CELLS}.")
    return Comparison("idx1", first, second), "Rest" if idx2 is None else "idx2"


def _cell_indices(selection: Any, n_obs: int, name: str) -> np.ndarray:
    """A selection of cells (a boolean mask over them, or their indices) as sorted unique indices."""
    values = np.asarray(selection)
    if values.dtype == bool:
        if values.shape != (n_obs,):
            raise InputError(f"{name} as a boolean mask needs one value per cell ({n_obs}), got shape {values.shape}.")
        return np.flatnonzero(values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise InputError(f"{name} takes cell indices or a boolean mask over the cells, got {selection!r}.")
    if len(values) and (values.min() < -n_obs or values.max() >= n_obs):
        raise InputError(f"{name} has indices outside the {n_obs} cells.")
    return np.unique(np.where(values < 0, values + n_obs, values))
