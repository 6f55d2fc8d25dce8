"""The fraction of each group's cells that express each gene: scanpy's ``pts`` and ``pts_rest`` of a ranking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from myvae._counts import RowChunks

__all__ = ["expressing_fractions"]


def expressing_fractions(
    counts: Any, labels: pd.Categorical, groups: Sequence[str], var_names: pd.Index, *, with_rest: bool
) -> dict[str, pd.DataFrame]:
    """The fraction of cells with a non-zero count of each gene, in each group and (optionally) outside it.

    The counts are read a chunk of cells at a time, so that backed data stay on disk.

    Parameters
    ----------
    counts
        Cells × genes counts, in memory or on disk.
    labels
        Each cell's group (cells of no group, or of a group not in ``groups``, count only for the rest).
    groups
        The groups, in the order of the columns.
    var_names
        The genes, the rows of the tables.
    with_rest
        Whether to return the fractions among each group's rest too (every cell outside the group).

    Returns
    -------
    ``{"pts": ...}``, with ``"pts_rest"`` too if ``with_rest``: genes × groups, as :func:`scanpy.tl.rank_genes_groups`
    writes them into its ``uns`` entry.
    """
    codes = pd.Index(groups).get_indexer(labels)
    n_groups = len(groups)
    codes = np.where(codes < 0, n_groups, codes)  # the cells outside every group: one more row
    expressing = np.zeros((n_groups + 1, len(var_names)))
    for start, block in RowChunks(counts):
        block_codes = codes[start : start + block.shape[0]]
        membership = sparse.csr_matrix(
            (np.ones(len(block_codes)), (block_codes, np.arange(len(block_codes)))),
            shape=(n_groups + 1, len(block_codes)),
        )
        expressing += (membership @ (block != 0).astype(np.float64)).toarray()
    n_cells = np.bincount(codes, minlength=n_groups + 1).astype(np.float64)[:, None]
    fractions = {"pts": expressing[:n_groups] / n_cells[:n_groups]}
    if with_rest:
        fractions["pts_rest"] = (expressing.sum(axis=0) - expressing[:n_groups]) / (n_cells.sum() - n_cells[:n_groups])
    return {key: pd.DataFrame(values.T, index=var_names, columns=list(groups)) for key, values in fractions.items()}
