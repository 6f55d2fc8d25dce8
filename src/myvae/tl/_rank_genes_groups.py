"""``tl.rank_genes_groups``: Bayesian differential expression from the model, written as scanpy writes its ranking."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from myvae import _logging as logg
from myvae._batches import batch_labels, check_batch_values
from myvae._checks import (
    check_key_added,
    check_keywords,
    check_positive_int,
)
from myvae._counts import get_counts_matrix
from myvae._data import copy_data, obs_column, obs_columns_listing, resolve_data
from myvae._exceptions import InputError
from myvae._setup import model_counts, trained_layer
from myvae._wording import counted
from myvae.model import MyVAE
from myvae.model._differential import (
    DEFAULT_N_SAMPLES,
    Comparison,
    check_options,
    differential_expression,
    pseudocount_for,
    ranking,
)
from myvae.model._record import carried_model

from ._expressing import expressing_fractions

__all__ = ["rank_genes_groups"]


MIN_GROUP_CELLS = 2
"""Fewest cells a group (or its reference) may have: scanpy's own limit."""
_FIELDS = {
    # scanpy's fields, with scanpy's dtypes
    "names": "O",
    "scores": "float32",
    "logfoldchanges": "float32",
    "pvals": "float64",
    "pvals_adj": "float64",
    # scvi-tools' quantities that scanpy does not have
    "proba_de": "float64",
    "bayes_factor": "float32",
    "lfc_median": "float32",
    "lfc_std": "float32",
    "is_de_fdr": "bool",
}
_COLUMNS = {
    "scores": "lfc_mean",
    "logfoldchanges": "lfc_mean",
    "pvals_adj": "expected_fdr",
    "proba_de": "proba_de",
    "bayes_factor": "bayes_factor",
    "lfc_median": "lfc_median",
    "lfc_std": "lfc_std",
    "is_de_fdr": "is_de_fdr",
}
"""Where each field's values come from in the table of :func:`~myvae.model._differential.differential_expression`."""


def _group_labels(adata: AnnData, mdata: MuData | None, mod: str | None, groupby: Any) -> pd.Categorical:
    """``obs[groupby]`` as categories named by strings (in the column's category order, sorted otherwise).

    For a MuData's modality the column may also be one of ``mdata.obs`` (see ``obs_column``).
    """
    if not isinstance(groupby, str):
        raise InputError(f"groupby must name a column of adata.obs, got {groupby!r}.")
    column = obs_column(adata, mdata, mod, groupby)
    if column is None:
        where, listed = obs_columns_listing(adata, mdata, mod)
        raise InputError(f"groupby={groupby!r} is not a column of {where} (columns: {listed}).")
    if pd.api.types.is_float_dtype(column) and not isinstance(column.dtype, pd.CategoricalDtype):
        raise InputError(
            f"groupby={groupby!r} holds floating-point numbers, not groups; pass a column of labels such as "
            "clusters (e.g. 'leiden') or cell types, or convert it with `.astype('category')` if these are labels."
        )
    categories = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else None
    if pd.api.types.is_numeric_dtype(categories if categories is not None else column):
        logg.warning(
            f"obs[{groupby!r}] holds numbers; they are ranked as groups, but scanpy's plots of the ranking (e.g. "
            "sc.pl.rank_genes_groups_dotplot) cut numbers into ranges or fail on them. Make them labels first: "
            f"`adata.obs[{groupby!r}] = adata.obs[{groupby!r}].astype(str).astype('category')`."
        )
    categorical = pd.Categorical(column)
    return pd.Categorical.from_codes(categorical.codes, categories=[str(c) for c in categorical.categories])


def _selected_groups(labels: pd.Categorical, groupby: str, groups: Any, reference: Any) -> list[str]:
    """The groups to rank, in the order given (the column's order for ``"all"``), refusing bad choices."""
    categories = list(labels.categories)
    shown = ", ".join(map(repr, categories[:20])) + (", …" if len(categories) > 20 else "")
    if not isinstance(reference, str) or (reference != "rest" and reference not in categories):
        raise InputError(f"reference={reference!r} is neither 'rest' nor a group of obs[{groupby!r}] ({shown}).")
    if isinstance(groups, str) and groups == "all":
        selected = [name for name in categories if name != reference]
    elif isinstance(groups, str) or not isinstance(groups, Iterable):
        raise InputError(f"groups= takes 'all' or a list of groups, e.g. groups=[{categories[0]!r}]; got {groups!r}.")
    else:
        selected = [str(group) for group in groups]
        unknown = [group for group in selected if group not in categories]
        if unknown:
            raise InputError(f"groups {unknown} are not groups of obs[{groupby!r}] ({shown}).")
        if len(set(selected)) < len(selected):
            raise InputError(f"groups= names a group more than once: {selected}.")
        if reference in selected:
            raise InputError(
                f"reference={reference!r} is also in groups=; a group cannot be compared with itself. Leave it out "
                "of groups= or choose another reference."
            )
    if not selected:
        raise InputError(f"No group to rank: obs[{groupby!r}] has no group besides the reference {reference!r}.")
    return selected


def _comparisons(labels: pd.Categorical, groupby: str, selected: Sequence[str], reference: str) -> list[Comparison]:
    """Each selected group's cells and its reference's cells (every other cell for ``"rest"``, as in scanpy)."""
    values = np.asarray(labels.astype(object))
    comparisons = []
    for group in selected:
        in_group = values == group
        in_reference = values == reference if reference != "rest" else ~in_group
        for side, mask in ((group, in_group), (reference, in_reference)):
            if mask.sum() < MIN_GROUP_CELLS:
                raise InputError(_too_few_cells(side, group, groupby, int(mask.sum())))
        comparisons.append(Comparison(group, np.flatnonzero(in_group), np.flatnonzero(in_reference)))
    return comparisons


def _too_few_cells(side: str, group: str, groupby: str, n_cells: int) -> str:
    """The message for a comparison one of whose sides (``side``: the group, or its reference) has too few cells."""
    cells = counted(n_cells, "cell")
    if side == group:
        where, fix = f"Group {group!r} of obs[{groupby!r}] has {cells}", "leave it out with groups=[...]"
    elif side == "rest":
        where = f"The rest of obs[{groupby!r}] (the cells outside group {group!r}) has {cells}"
        fix = "leave that group out with groups=[...]"
    else:
        where, fix = f"The reference group {side!r} of obs[{groupby!r}] has {cells}", "choose another reference"
    return (
        f"{where}; differential expression needs at least {MIN_GROUP_CELLS} on each side. Either {fix}, or merge "
        "the small group with another."
    )


_SCANPY_ONLY = {
    "method": "the ranking is Bayesian differential expression from the model, not a test to choose; "
    "mode='change' (the default) or mode='vanilla' choose what is asked of the posterior, and scanpy's tests stay "
    "with sc.tl.rank_genes_groups",
    "corr_method": "pvals_adj is the posterior expected false discovery rate, which needs no correction for "
    "multiple testing; set its target with fdr=",
    "use_raw": "the model reads raw counts from layer= (by default the layer it was trained on), never adata.raw",
    "tie_correct": "there are no ranks to correct for ties: the ranking is by the posterior mean log fold change",
    "rankby_abs": "genes up in the group come first and genes down in it last, as scanpy ranks them by default",
    "mask_var": "the model's genes are ranked, the genes it was trained on (mask_var= of tl.myvae)",
}
"""Keywords of :func:`scanpy.tl.rank_genes_groups` that do not apply here, with the reason."""


def _refuse_scanpy_keywords(keywords: dict[str, Any]) -> None:
    """Refuse keywords outside the signature: scanpy's own with the reason, any other with the closest valid one."""
    parameters = [name for name in inspect.signature(rank_genes_groups).parameters if name != "scanpy_keywords"]
    check_keywords(keywords, parameters[1:], "tl.rank_genes_groups", known=_SCANPY_ONLY)


def _check_options(
    mode: Any, delta: Any, n_samples: Any, fdr: Any, batch_correction: Any, random_state: Any, n_genes: Any, pts: Any
) -> None:
    check_options(mode, delta, n_samples, fdr, batch_correction, random_state)
    if not isinstance(pts, bool | np.bool_):
        raise InputError(f"pts must be True or False, got {pts!r}.")
    check_positive_int(n_genes, "n_genes", allow_none=True)


def _trained_model(adata: AnnData, model: Any) -> MyVAE:
    """The model to query: the one given, or the one ``tl.myvae`` stored in ``adata.uns`` (under its ``key_added``)."""
    if model is None:  # the counts are read below (model_counts): the model needs only its genes
        return carried_model(adata, "tl.rank_genes_groups")
    if not isinstance(model, MyVAE):
        raise InputError(f"model= takes a trained MyVAE (or None for the model adata.uns carries); got {model!r}.")
    if not model.is_trained:
        raise InputError("model= got an untrained MyVAE; train it first, e.g. with mv.tl.myvae(adata).")
    return model


def _batch_codes(
    adata: AnnData, mdata: MuData | None, mod: str | None, model: MyVAE, batch_correction: bool
) -> np.ndarray | None:
    """Each cell's batch code in the model's batches (``None`` for a model without batches)."""
    if model.n_batch == 1:
        if batch_correction:
            raise InputError(
                "batch_correction=True needs a model trained with batches; set up the data with "
                "mv.pp.setup_counts(adata, batch_key=...) and train again, or leave batch_correction=False."
            )
        return None
    batch_key = model.adata_manager.registry["setup_args"]["batch_key"]
    column = obs_column(adata, mdata, mod, batch_key)
    if column is None:
        where, listed = obs_columns_listing(adata, mdata, mod)
        raise InputError(
            f"The model was trained with batches from obs[{batch_key!r}], and {where} has no such column (columns: "
            f"{listed}); add the cells' batches under that name."
        )
    check_batch_values(column, batch_key)
    return batch_labels(column, model.batch_categories).codes.astype(np.int64)


def _records(tables: dict[str, pd.DataFrame], field: str, orders: dict[str, np.ndarray]) -> np.recarray:
    """One field as scanpy stores it: a record array with one column per group, each in its group's rank order."""
    columns = {}
    for group, table in tables.items():
        if field == "names":
            values = table.index.to_numpy(dtype=object)
        elif field == "pvals":
            values = np.clip(1.0 - table["proba_de"].to_numpy(), 0.0, 1.0)
        else:
            values = table[_COLUMNS[field]].to_numpy()
        columns[group] = values[orders[group]]
    return pd.DataFrame(columns).to_records(index=False, column_dtypes=_FIELDS[field])


def _with_every_gene(table: pd.DataFrame, var_names: pd.Index) -> pd.DataFrame:
    """The table with the genes the model leaves out appended, without values: ranked last, never called DE.

    scanpy's ranking plots (e.g. ``values_to_plot=`` of the dot plot) expect every gene of the AnnData.
    """
    extended = table.reindex(table.index.append(var_names.difference(table.index, sort=False)))
    extended["is_de_fdr"] = extended["is_de_fdr"].astype("boolean").fillna(False).astype(bool)
    return extended


def rank_genes_groups(
    data: AnnData | MuData,
    groupby: str,
    *,
    groups: Literal["all"] | Iterable[str] = "all",
    reference: str = "rest",
    n_genes: int | None = None,
    pts: bool = False,
    mode: Literal["change", "vanilla"] = "change",
    delta: float = 0.25,
    batch_correction: bool = False,
    n_samples: int = DEFAULT_N_SAMPLES,
    fdr: float = 0.05,
    key_added: str = "rank_genes_groups",
    model: MyVAE | None = None,
    random_state: int = 0,
    mod: str | None = None,
    layer: str | None = None,
    copy: bool = False,
    **scanpy_keywords: Any,
) -> AnnData | MuData | None:
    r"""Rank genes for characterising groups by Bayesian differential expression from the model's posterior.

    For each group A and its reference B (the other cells, or one group), ``n_samples`` random cells of each are
    drawn, a latent code :math:`z \sim q(z \mid x)` for each, and decoded to normalised expression
    :math:`\rho = \mathrm{softmax}(f(z, s))`; the draws of A and B are paired and compared gene by gene, as in
    scvi-tools' ``differential_expression`` (:cite:p:`Lopez2018`, :cite:p:`Boyeau2019`). In ``"change"`` mode the
    quantity is the log fold change :math:`\mathrm{LFC} = \log_2(\rho_A + \epsilon) - \log_2(\rho_B + \epsilon)`
    (:math:`\epsilon` = 0.1 / number of genes) and a gene is differentially expressed (DE) when
    :math:`|\mathrm{LFC}| > \delta`; in ``"vanilla"`` mode it is whether :math:`\rho_A > \rho_B`.

    The result is written in exactly the structure :func:`scanpy.tl.rank_genes_groups` writes, so
    :func:`scanpy.get.rank_genes_groups_df`, :func:`scanpy.pl.rank_genes_groups`,
    :func:`scanpy.pl.rank_genes_groups_dotplot` and the other ranking plots work unchanged. The numbers are
    posterior quantities, not the results of a test: ``scores``, ``pvals`` and ``pvals_adj`` mean what the Returns
    section says.

    Parameters
    ----------
    data
        Annotated data with (at least) the model's genes, in memory or backed (only the sampled cells are read, a
        chunk of rows at a time), or a MuData with ``mod`` naming the RNA modality.
    groupby
        Column of ``obs`` with the groups (clusters, cell types); strings, integers or categories.
    groups
        Groups to rank, or ``"all"``.
    reference
        ``"rest"`` compares each group with every other cell (as scanpy does, cells without a group included);
        a group's name compares with that group.
    n_genes
        The number of genes in the record arrays, the top of each group's ranking; ``None`` keeps every gene.
    pts
        Also write the fraction of cells with a non-zero count of each gene (every gene of ``adata``), per group
        (``pts``, with the reference group as a column when ``reference`` is one) and, against ``"rest"``, among the
        cells outside each group (``pts_rest``), as scanpy does: :func:`scanpy.get.rank_genes_groups_df` then adds
        ``pct_nz_group`` and ``pct_nz_reference``, and :func:`scanpy.tl.filter_rank_genes_groups` reads them.
    mode
        ``"change"`` (the posterior of the log fold change, with the threshold ``delta``) or ``"vanilla"``
        (the probability that the group's expression is higher).
    delta
        Smallest :math:`|\mathrm{LFC}|` (log2) that counts as differential expression in ``"change"`` mode.
    batch_correction
        Decode every drawn cell in every batch of the model and average the expression, so that the comparison
        does not see the batches (as scvi-tools' ``batch_correction=True``); otherwise each cell is decoded in its
        own batch. Needs a model trained with batches.
    n_samples
        Posterior draws per group (and per reference) of each comparison.
    fdr
        Target of the posterior expected false discovery rate: ``is_de_fdr`` marks the longest list of genes, by
        decreasing ``proba_de``, whose expected FDR is at most ``fdr``.
    key_added
        The ``uns`` entry to write.
    model
        The trained :class:`~myvae.MyVAE`; ``None`` uses the model that :func:`myvae.tl.myvae` stored in
        ``adata.uns[key_added]`` (``"myvae"`` by default; whatever its ``key_added``, if only one is stored, else
        choose with ``model=mv.MyVAE.from_anndata(adata, key=...)``).
    random_state
        Seed of every random draw; the same seed gives the same result, and the caller's random state is left as
        it was.
    mod
        For a MuData: the modality holding the RNA counts; the results go into that modality's ``uns``.
    layer
        Layer holding the raw counts; ``None`` uses the layer :func:`myvae.tl.myvae` trained on (recorded in
        ``uns["myvae"]["params"]``), else the one recorded by :func:`myvae.pp.setup_counts`, else ``X``. The data may
        hold more genes than the model (e.g. all genes of a model trained on the highly variable ones): the model's
        genes are ranked.
    copy
        Return a copy instead of writing to ``data``.
    **scanpy_keywords
        None are taken: those of :func:`scanpy.tl.rank_genes_groups` that do not apply to a ranking from the model
        (``method``, ``corr_method``, ``use_raw``, ``tie_correct``, ``rankby_abs``, ``mask_var``) are refused with the
        reason and what to use instead, any other with the closest valid keyword.

    Returns
    -------
    ``None``, or with ``copy=True`` the new AnnData (MuData). Sets ``adata.uns[key_added]``, with, as in scanpy,
    record arrays with one field per group, each sorted by decreasing score (ties by decreasing ``proba_de``):

    ``names``
        Gene names.
    ``scores``
        The ranking statistic, in both modes: the posterior mean of the log2 fold change (the same values as
        ``logfoldchanges``), an effect size. Genes up in the group come first and genes down in it last, as in
        scanpy. Against ``"rest"`` it is the average of the group's fold changes against each other group,
        weighted by their shares of the cells, so a marker that a minority of the other cells also express keeps
        most of its score (see the documentation's *Differential expression* page for why the ranking is not by a
        probability).
    ``logfoldchanges``
        Posterior mean of the log2 fold change of normalised expression.
    ``pvals``
        ``1 - proba_de``: the posterior probability that the gene is *not* DE (either direction). Not a p-value.
    ``pvals_adj``
        Posterior expected false discovery rate of the list of genes with at least this gene's ``proba_de``:
        ``pvals_adj <= fdr`` exactly for the genes with ``is_de_fdr``, so ``sc.get.rank_genes_groups_df(...,
        pval_cutoff=fdr)`` returns the DE calls.
    ``proba_de``
        Posterior probability of differential expression: :math:`P(|\mathrm{LFC}| > \delta)` (``"change"``), or
        the probability of the more likely direction (``"vanilla"``).
    ``bayes_factor``
        Log odds of ``proba_de`` (``"change"``, scvi-tools' ``bayes_factor``) or of :math:`\rho_A > \rho_B`
        (``"vanilla"``).
    ``lfc_median``, ``lfc_std``
        Posterior median and standard deviation of the log2 fold change.
    ``is_de_fdr``
        Whether the gene is called DE at the target ``fdr``.
    ``pts``, ``pts_rest``
        With ``pts=True``: data frames, genes × groups, of the fraction of cells with a non-zero count.
    ``params``
        ``groupby``, ``reference``, ``method`` (``"myvae"``), ``use_raw`` (``False``), ``layer`` (the counts
        read), ``corr_method`` (``"posterior expected FDR"``), as scanpy records them, and ``mode``, ``delta``,
        ``batch_correction``, ``n_samples``, ``fdr``, ``pseudocount``, ``random_state``.

    Examples
    --------
    >>> import scanpy as sc
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()[:600].copy()
    >>> adata = adata[adata.obs["cell_type"].notna()].copy()
    >>> sc.pp.filter_genes(adata, min_cells=60)
    >>> mv.pp.setup_counts(adata)
    >>> model = mv.tl.myvae(adata, max_epochs=20, progress=False, return_model=True)
    >>> mv.tl.rank_genes_groups(adata, "cell_type", groups=["B", "NK"], model=model)
    >>> sc.get.rank_genes_groups_df(adata, "B").columns.tolist()
    ['names', 'scores', 'logfoldchanges', 'pvals', 'pvals_adj']
    """
    _refuse_scanpy_keywords(scanpy_keywords)
    adata, mdata = resolve_data(data, mod, "rank_genes_groups", copy=copy)
    check_key_added(key_added)
    _check_options(mode, delta, n_samples, fdr, batch_correction, random_state, n_genes, pts)
    if isinstance(reference, Integral) and not isinstance(reference, bool):
        reference = str(reference)  # a group of a column of numbers, named by its number (as groups= may be)
    labels = _group_labels(adata, mdata, mod, groupby)
    selected = _selected_groups(labels, groupby, groups, reference)
    comparisons = _comparisons(labels, groupby, selected, reference)
    trained = _trained_model(adata, model)
    layer = trained_layer(adata) if layer is None else layer
    counts, genes = model_counts(adata, trained.adata.var_names, layer)
    batch_codes = _batch_codes(adata, mdata, mod, trained, batch_correction)

    start = logg.info(f"ranking genes: {counted(len(comparisons), 'group')} of obs[{groupby!r}] against {reference!r}")
    tables = differential_expression(
        trained.module.networks,
        counts,
        comparisons,
        genes=genes,
        batch_codes=batch_codes,
        mode=mode,
        delta=float(delta),
        n_samples=int(n_samples),
        fdr=float(fdr),
        batch_correction=bool(batch_correction),
        random_state=int(random_state),
    )
    if len(genes) < adata.n_vars:
        tables = {group: _with_every_gene(table, adata.var_names) for group, table in tables.items()}
    orders = {group: ranking(table)[:n_genes] for group, table in tables.items()}
    result = {
        "params": {
            "groupby": groupby,
            "reference": reference,
            "method": "myvae",
            "use_raw": False,
            "layer": layer,
            "corr_method": "posterior expected FDR",
            "mode": mode,
            "delta": float(delta),
            "batch_correction": bool(batch_correction),
            "n_samples": int(n_samples),
            "fdr": float(fdr),
            "pseudocount": pseudocount_for(len(genes)),
            "random_state": int(random_state),
        },
        **{field: _records(tables, field, orders) for field in _FIELDS},
    }
    if pts:
        columns = selected if reference == "rest" else [*selected, reference]
        all_genes = get_counts_matrix(adata, layer)
        result |= expressing_fractions(all_genes, labels, columns, adata.var_names, with_rest=reference == "rest")

    if copy:
        adata, mdata = copy_data(adata, mdata, mod)
    if key_added in adata.uns:
        logg.warning(f"Overwriting adata.uns[{key_added!r}] with the new ranking.")
    adata.uns[key_added] = result
    logg.info(
        f"    finished ({{time_passed}}): added {key_added!r} (uns)",
        time=start,
        deep=f"added\n    {key_added!r}, ranked genes per group in scanpy's format: {', '.join(_FIELDS)} (uns)",
    )
    if copy:
        return adata if mdata is None else mdata
    return None
