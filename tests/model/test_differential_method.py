"""MyVAE.differential_expression: the model's DE in scvi-tools' table, the same numbers as tl.rank_genes_groups."""

import numpy as np
import pytest
import scanpy as sc
from helpers import fast_train_kwargs

import myvae as mv

DRAWS = 400  # posterior draws per group: enough for the comparisons below, quick on the small data


@pytest.fixture
def annotated(small_adata):
    """The small data, with the model tl.myvae stored in it."""
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=4))
    return small_adata


@pytest.fixture
def model(annotated) -> mv.MyVAE:
    return mv.MyVAE.from_anndata(annotated)  # carries a copy of obs: groupby= needs no adata=


def test_one_group_against_the_rest_is_tl_rank_genes_groups_ranking(annotated, model):
    table = model.differential_expression(groupby="cell_type", group1="NK", n_samples=DRAWS)
    mv.tl.rank_genes_groups(annotated, "cell_type", groups=["NK"], n_samples=DRAWS)
    ranked = sc.get.rank_genes_groups_df(annotated, "NK")
    assert list(table.index) == list(ranked["names"])
    np.testing.assert_allclose(table["lfc_mean"], ranked["logfoldchanges"], rtol=1e-6)
    np.testing.assert_allclose(table["proba_not_de"], ranked["pvals"], rtol=1e-12)
    np.testing.assert_allclose(table["proba_de"] + table["proba_not_de"], 1.0)
    assert set(table["comparison"]) == {"NK vs Rest"} and set(table["group1"]) == {"NK"}
    assert list(table.columns[-3:]) == ["comparison", "group1", "group2"] and "is_de_fdr_0.05" in table


def test_every_group_or_a_reference_and_cells_by_index(annotated, model):
    groups = list(annotated.obs["cell_type"].cat.categories)
    every = model.differential_expression(groupby="cell_type", n_samples=DRAWS, fdr_target=0.1)
    assert list(every["comparison"].unique()) == [f"{group} vs Rest" for group in groups]
    assert len(every) == len(groups) * annotated.n_vars and "is_de_fdr_0.1" in every

    against_b = model.differential_expression(groupby="cell_type", group1=["NK", "DC"], group2="B", n_samples=DRAWS)
    assert list(against_b["comparison"].unique()) == ["NK vs B", "DC vs B"]

    by_cells = model.differential_expression(idx1=(annotated.obs["cell_type"] == "NK").to_numpy(), n_samples=DRAWS)
    by_group = model.differential_expression(groupby="cell_type", group1="NK", n_samples=DRAWS)
    np.testing.assert_array_equal(by_cells["lfc_mean"], by_group["lfc_mean"])
    assert set(by_cells["comparison"]) == {"idx1 vs Rest"}
    first, second = (
        np.flatnonzero(annotated.obs["cell_type"] == "NK"),
        np.flatnonzero(annotated.obs["cell_type"] == "B"),
    )
    by_indices = model.differential_expression(idx1=first, idx2=second, n_samples=DRAWS)
    by_groups = model.differential_expression(groupby="cell_type", group1="NK", group2="B", n_samples=DRAWS)
    np.testing.assert_array_equal(by_indices["lfc_mean"], by_groups["lfc_mean"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"Pass groupby= \(an obs column of groups\) or idx1="),
        ({"groupby": "donor"}, r"groupby='donor' is not a column of the cells' obs \(columns: .*'cell_type'"),
        ({"groupby": "cell_type", "group1": "T"}, r"\['T'\] are not groups of obs\['cell_type'\] \('B'"),
        ({"groupby": "cell_type", "idx1": [0, 1]}, "Pass either idx1= .* or groupby= with group1=/group2=, not both"),
        ({"idx1": [0]}, "idx1 holds 1 cells; each side needs at least 2"),
        ({"idx1": [0, 500]}, "idx1 has indices outside the 80 cells"),
        ({"idx1": [True, False]}, r"idx1 as a boolean mask needs one value per cell \(80\)"),
        ({"groupby": "cell_type", "mode": "three"}, "mode must be 'change' or 'vanilla'"),
        ({"groupby": "cell_type", "fdr_target": 5}, "fdr_target must be a number between 0 and 1"),
        ({"groupby": "cell_type", "batch_correction": True}, "batch_correction=True needs a model trained with batch"),
        ({"groupby": "cell_type", "n_samples_overall": 100}, "takes no n_samples_overall=: the posterior draws per"),
        ({"groupby": "cell_type", "all_stats": False}, "takes no all_stats=: the table holds the posterior"),
        ({"groupby": "cell_type", "n_sample": 10}, "unknown keyword argument 'n_sample'; did you mean 'n_samples'"),
    ],
)
def test_bad_requests_are_refused_before_any_work(model, kwargs, message):
    with pytest.raises(mv.InputError, match=message):
        model.differential_expression(**kwargs)


def test_a_model_without_the_column_points_to_adata(annotated):
    model = mv.tl.myvae(annotated, return_model=True, **fast_train_kwargs(max_epochs=2))  # on a bare copy
    with pytest.raises(mv.InputError, match="Pass adata= the AnnData whose obs has it"):
        model.differential_expression(groupby="cell_type")
    table = model.differential_expression(annotated, groupby="cell_type", group1="B", n_samples=DRAWS)
    assert len(table) == annotated.n_vars
