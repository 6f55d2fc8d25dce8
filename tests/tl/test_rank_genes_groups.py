"""mv.tl.rank_genes_groups: posterior differential expression written in scanpy's ranking format."""

import random
import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse

import myvae as mv
from myvae.model._differential import expected_fdr, log_odds, ranking

matplotlib.use("Agg")

GROUPBY = "cell_type"
MARKERS = ["MS4A1", "CD79A", "CD14", "LYZ", "GNLY", "NKG7"]
SCANPY_FIELDS = ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
FAST = {"n_samples": 500}


def _train(adata: ad.AnnData, **kwargs) -> mv.MyVAE:
    arguments = {"max_epochs": 40, "batch_size": 128, "progress": False, "accelerator": "cpu", **kwargs}
    return mv.tl.myvae(adata, return_model=True, **arguments)


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """600 annotated PBMC 3k cells × the 300 most variable genes (plus textbook markers), raw counts."""
    adata = mv.datasets.pbmc3k()
    adata = adata[adata.obs[GROUPBY].notna()][:600].copy()
    sc.pp.filter_genes(adata, min_cells=5)
    sc.pp.highly_variable_genes(adata, n_top_genes=300, flavor="seurat_v3")
    keep = adata.var["highly_variable"].to_numpy() | adata.var_names.isin(MARKERS)
    adata = adata[:, keep].copy()
    adata.obs[GROUPBY] = adata.obs[GROUPBY].cat.remove_unused_categories()
    mv.pp.setup_counts(adata)
    return adata


@pytest.fixture(scope="module")
def model(pbmc) -> mv.MyVAE:
    return _train(pbmc.copy())


@pytest.fixture(scope="module")
def ranked(pbmc, model) -> ad.AnnData:
    adata = pbmc.copy()
    mv.tl.rank_genes_groups(adata, GROUPBY, model=model, **FAST)
    return adata


@pytest.fixture
def data(pbmc) -> ad.AnnData:
    return pbmc.copy()


def _group(adata: ad.AnnData, field: str, group: str, key: str = "rank_genes_groups") -> np.ndarray:
    return np.asarray(adata.uns[key][field][group])


# ------------------------------------------------------------------ format -------------------------------------------


@pytest.mark.parametrize(
    ("groups", "reference"), [("all", "rest"), (["NK", "B"], "rest"), (["B", "CD8 T"], "CD14+ Mono")]
)
def test_format_matches_scanpy_field_by_field(pbmc, model, groups, reference):
    ours = pbmc.copy()
    mv.tl.rank_genes_groups(ours, GROUPBY, groups=groups, reference=reference, model=model, **FAST)
    theirs = pbmc.copy()
    sc.pp.normalize_total(theirs)
    sc.pp.log1p(theirs)
    sc.tl.rank_genes_groups(theirs, GROUPBY, groups=groups, reference=reference, method="wilcoxon")
    ours, theirs = ours.uns["rank_genes_groups"], theirs.uns["rank_genes_groups"]

    assert set(theirs) <= set(ours)
    assert set(theirs["params"]) <= set(ours["params"])
    for key in ("groupby", "reference", "use_raw"):
        assert ours["params"][key] == theirs["params"][key]
    for field in SCANPY_FIELDS:
        assert type(ours[field]) is type(theirs[field])
        assert ours[field].dtype == theirs[field].dtype, field  # same group names, same order, same dtypes
        assert ours[field].shape == theirs[field].shape, field
    for group in ours["names"].dtype.names:
        assert sorted(ours["names"][group]) == sorted(pbmc.var_names)
        assert np.all(np.diff(ours["scores"][group]) <= 0)


def test_extra_fields_are_record_arrays_per_group(ranked):
    result = ranked.uns["rank_genes_groups"]
    groups = result["names"].dtype.names
    for field in ("proba_de", "bayes_factor", "lfc_median", "lfc_std", "is_de_fdr"):
        assert result[field].dtype.names == groups
        assert result[field].shape == result["names"].shape
    assert result["is_de_fdr"].dtype["B"] == np.bool_


def test_posterior_quantities_mean_what_the_docs_say(ranked):
    result = ranked.uns["rank_genes_groups"]
    fdr = result["params"]["fdr"]
    for group in result["names"].dtype.names:
        proba_de = _group(ranked, "proba_de", group)
        np.testing.assert_allclose(_group(ranked, "pvals", group), 1 - proba_de)
        np.testing.assert_array_equal(_group(ranked, "pvals_adj", group) <= fdr, _group(ranked, "is_de_fdr", group))
        assert np.all((proba_de >= 0) & (proba_de <= 1))
        assert np.all(_group(ranked, "lfc_std", group) >= 0)
        np.testing.assert_allclose(
            _group(ranked, "bayes_factor", group), log_odds(proba_de, result["params"]["n_samples"]), rtol=1e-5
        )


def test_expected_fdr_of_each_list_by_hand():
    # sorted: 0.99, 0.9, 0.9 (ties enter together), 0.5 -> FDR 0.01, (0.01 + 0.1 + 0.1) / 3 twice, (0.21 + 0.5) / 4
    np.testing.assert_allclose(expected_fdr(np.array([0.9, 0.99, 0.5, 0.9])), [0.07, 0.01, 0.1775, 0.07])


def test_scores_are_the_posterior_mean_lfc_in_decreasing_order(ranked):
    for group in ranked.uns["rank_genes_groups"]["names"].dtype.names:
        scores = _group(ranked, "scores", group)
        np.testing.assert_array_equal(scores, _group(ranked, "logfoldchanges", group))
        assert np.all(np.diff(scores) <= 0)


def test_ranking_by_mean_lfc_ties_by_proba_de_by_hand():
    table = pd.DataFrame({"lfc_mean": [0.5, 2.0, 0.5, -1.0], "proba_de": [0.6, 0.9, 0.8, 0.99]})
    np.testing.assert_array_equal(ranking(table), [1, 2, 0, 3])


def test_score_against_rest_is_the_share_weighted_mean_of_scores_against_each_group(pbmc, model):
    """What the docs say of the ranking: a marker shared with a minority of the rest keeps most of its score."""
    adata = pbmc.copy()

    def scores(reference: str) -> pd.Series:
        mv.tl.rank_genes_groups(adata, GROUPBY, groups=["NK"], reference=reference, model=model, n_samples=4000)
        return sc.get.rank_genes_groups_df(adata, "NK").set_index("names")["scores"]

    against_rest = scores("rest")
    shares = adata.obs[GROUPBY][adata.obs[GROUPBY] != "NK"].value_counts(normalize=True)
    weighted = sum(share * scores(other) for other, share in shares.items() if share > 0)
    top = against_rest.index[:20]
    np.testing.assert_allclose(against_rest[top], weighted[top], atol=0.2)


def test_log_odds_are_bounded_by_the_number_of_draws():
    np.testing.assert_allclose(log_odds(np.array([1.0, 0.5, 0.0]), 100), [np.log(201), 0.0, -np.log(201)])


# ------------------------------------------------------------------ scanpy on the result ------------------------------


def test_scanpy_getters_and_plots_run_on_the_result(ranked):
    import matplotlib.pyplot as plt

    adata = ranked.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    table = sc.get.rank_genes_groups_df(adata, "B")
    assert list(table.columns) == SCANPY_FIELDS
    assert len(table) == adata.n_vars
    calls = sc.get.rank_genes_groups_df(adata, "B", pval_cutoff=0.05)
    assert set(calls["names"]) == set(_group(adata, "names", "B")[_group(adata, "is_de_fdr", "B")])
    assert len(sc.get.rank_genes_groups_df(adata, None)) == adata.n_vars * len(adata.obs[GROUPBY].cat.categories)
    sc.pl.rank_genes_groups(adata, n_genes=5, show=False)
    sc.pl.rank_genes_groups_dotplot(adata, n_genes=3, show=False)
    sc.pl.rank_genes_groups_dotplot(adata, n_genes=3, values_to_plot="logfoldchanges", show=False)
    sc.pl.rank_genes_groups_matrixplot(adata, n_genes=3, show=False)
    sc.pl.rank_genes_groups_violin(adata, groups=["B"], n_genes=3, show=False)
    plt.close("all")


def _expressing(adata: ad.AnnData, cells: np.ndarray) -> np.ndarray:
    """The fraction of ``cells`` with a non-zero count of each gene, from the dense counts."""
    return (sparse.csr_matrix(adata.X).toarray()[cells] > 0).mean(axis=0)


def test_pts_are_the_fractions_of_expressing_cells_as_scanpy_writes_them(pbmc, model, tmp_path):
    adata = pbmc.copy()
    mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B", "NK"], model=model, pts=True, **FAST)
    result, in_b = adata.uns["rank_genes_groups"], (adata.obs[GROUPBY] == "B").to_numpy()
    assert list(result["pts"].columns) == ["B", "NK"] and list(result["pts_rest"].columns) == ["B", "NK"]
    assert result["pts"].index.equals(adata.var_names)
    np.testing.assert_allclose(result["pts"]["B"], _expressing(adata, in_b))
    np.testing.assert_allclose(result["pts_rest"]["B"], _expressing(adata, ~in_b))  # cells of no type included
    table = sc.get.rank_genes_groups_df(adata, "B")
    assert list(table.columns) == [*SCANPY_FIELDS, "pct_nz_group", "pct_nz_reference"] and len(table) == adata.n_vars
    ms4a1 = table.set_index("names").loc["MS4A1"]
    assert ms4a1["pct_nz_group"] > 0.8 > 0.2 > ms4a1["pct_nz_reference"]  # the B cell marker
    adata.write_h5ad(tmp_path / "with_pts.h5ad")
    pd.testing.assert_frame_equal(
        ad.read_h5ad(tmp_path / "with_pts.h5ad").uns["rank_genes_groups"]["pts"], result["pts"]
    )
    sc.tl.filter_rank_genes_groups(adata, min_in_group_fraction=0.5, min_fold_change=1)  # reads pts and pts_rest
    kept = pd.DataFrame(adata.uns["rank_genes_groups_filtered"]["names"])["B"].dropna()
    assert "MS4A1" in set(kept) and (result["pts"]["B"][kept] >= 0.5).all()
    # against a group: that group's fractions are a column too, and there is no rest
    mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], reference="NK", model=model, pts=True, **FAST)
    result = adata.uns["rank_genes_groups"]
    assert list(result["pts"].columns) == ["B", "NK"] and "pts_rest" not in result
    np.testing.assert_allclose(result["pts"]["NK"], _expressing(adata, (adata.obs[GROUPBY] == "NK").to_numpy()))


def test_n_genes_keeps_the_top_of_each_ranking(ranked, pbmc, model):
    adata = pbmc.copy()
    mv.tl.rank_genes_groups(adata, GROUPBY, model=model, n_genes=7, **FAST)
    for field in SCANPY_FIELDS:
        for group in ("B", "NK"):
            np.testing.assert_array_equal(_group(adata, field, group), _group(ranked, field, group)[:7])
    assert len(sc.get.rank_genes_groups_df(adata, "B")) == 7


def test_round_trip_through_h5ad(ranked, tmp_path):
    ranked.write_h5ad(tmp_path / "ranked.h5ad")
    back = ad.read_h5ad(tmp_path / "ranked.h5ad")
    pd.testing.assert_frame_equal(
        sc.get.rank_genes_groups_df(back, None), sc.get.rank_genes_groups_df(ranked, None), check_dtype=False
    )
    np.testing.assert_array_equal(_group(back, "is_de_fdr", "NK"), _group(ranked, "is_de_fdr", "NK"))


# ------------------------------------------------------------------ what it finds ------------------------------------


@pytest.mark.parametrize("mode", ["change", "vanilla"])
def test_b_cells_rank_their_markers_high(ranked, pbmc, model, mode):
    if mode == "change":
        adata = ranked
    else:
        adata = pbmc.copy()
        mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], mode="vanilla", model=model, **FAST)
    top = list(_group(adata, "names", "B")[:10])
    assert "MS4A1" in top and "CD79A" in top
    bottom = list(_group(adata, "names", "B")[-300:])
    assert "LYZ" in bottom  # monocyte gene, down in B cells: ranked at the end, as scanpy does


def test_pyro_backend(pbmc):
    adata = pbmc.copy()
    model = _train(adata, backend="pyro")
    mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], model=model, **FAST)
    assert {"MS4A1", "CD79A"} <= set(_group(adata, "names", "B")[:10])


def test_batch_correction_removes_batch_driven_calls(pbmc):
    """Monocytes of two random halves, the second with a gene-wise batch effect: every DE call is batch-driven."""
    rng = np.random.default_rng(0)
    second = rng.random(pbmc.n_obs) < 0.5
    counts = sparse.csr_matrix(pbmc.X, dtype=np.float32)
    fold = np.exp(rng.normal(0, 0.7, pbmc.n_vars)).astype(np.float32)
    shifted = sparse.csr_matrix(counts[second].multiply(fold[None, :]))
    shifted.data = rng.poisson(shifted.data).astype(np.float32)
    counts = sparse.vstack([counts[~second], shifted], format="csr")
    obs = pd.concat([pbmc.obs[~second], pbmc.obs[second]])
    obs["batch"] = ["b1"] * int((~second).sum()) + ["b2"] * int(second.sum())
    obs["type_batch"] = obs[GROUPBY].astype(str) + "|" + obs["batch"]
    keep = np.asarray(counts.sum(axis=1)).ravel() > 0
    adata = ad.AnnData(counts[keep], obs=obs[keep], var=pbmc.var[[]].copy())
    mv.pp.setup_counts(adata, batch_key="batch")
    model = _train(adata)
    calls = {}
    for correction in (False, True):
        mv.tl.rank_genes_groups(
            adata,
            "type_batch",
            groups=["CD14+ Mono|b2"],
            reference="CD14+ Mono|b1",
            batch_correction=correction,
            model=model,
            **FAST,
        )
        calls[correction] = int(_group(adata, "is_de_fdr", "CD14+ Mono|b2").sum())
        assert adata.uns["rank_genes_groups"]["params"]["batch_correction"] is correction
    assert calls[False] >= 5, calls
    assert calls[True] < calls[False] / 4, calls


# ------------------------------------------------------------------ data forms ---------------------------------------


def test_mudata_with_mod_writes_into_the_modality(pbmc, model):
    mdata = md.MuData({"rna": pbmc.copy()})
    mv.tl.rank_genes_groups(mdata, GROUPBY, groups=["B"], model=model, mod="rna", **FAST)
    assert "rank_genes_groups" in mdata["rna"].uns
    assert "rank_genes_groups" not in mdata.uns
    alone = pbmc.copy()
    mv.tl.rank_genes_groups(alone, GROUPBY, groups=["B"], model=model, **FAST)
    np.testing.assert_array_equal(_group(mdata["rna"], "names", "B"), _group(alone, "names", "B"))


def test_numbers_as_groups_are_ranked_with_a_warning_for_scanpys_plots(pbmc, model, scanpy_log):
    codes = pbmc.obs[GROUPBY].cat.codes.to_numpy()
    kept = np.isin(codes, [0, 1])
    adata = pbmc[kept].copy()
    labels = {"numbers": codes[kept], "number categories": pd.Categorical(codes[kept])}
    labels["labels"] = pd.Categorical(codes[kept].astype(str))
    tables = {}
    for kind, column in labels.items():
        adata.obs["cluster"] = column
        sc.settings.verbosity = 1
        mv.tl.rank_genes_groups(adata, "cluster", groups=[1], reference=0, model=model, **FAST)
        warned = "obs['cluster'] holds numbers" in scanpy_log.readouterr().err
        assert warned == (kind != "labels"), kind
        tables[kind] = sc.get.rank_genes_groups_df(adata, "1")
    for table in tables.values():
        pd.testing.assert_frame_equal(table, tables["labels"])


def test_in_a_mudata_groups_and_batches_may_be_columns_of_the_mudatas_obs(pbmc):
    mdata = md.MuData({"rna": pbmc[:300].copy()})
    mdata.obs["sample"] = np.where(np.arange(mdata.n_obs) % 2, "a", "b")  # a global column, as muon users keep
    mdata.obs["clusters"] = mdata["rna"].obs[GROUPBY].astype(str).to_numpy()  # e.g. leiden on a joint embedding
    model = mv.tl.myvae(mdata, mod="rna", batch_key="sample", max_epochs=2, progress=False, return_model=True)
    mdata.update()  # the modality's columns become "rna:cell_type" in mdata.obs
    runs = {}
    for groupby in ("clusters", f"rna:{GROUPBY}", GROUPBY):
        mv.tl.rank_genes_groups(mdata, groupby, mod="rna", groups=["B"], batch_correction=True, model=model, **FAST)
        runs[groupby] = sc.get.rank_genes_groups_df(mdata["rna"], "B")
    for table in runs.values():
        pd.testing.assert_frame_equal(table, runs[GROUPBY])
    with pytest.raises(mv.InputError, match=r"groupby='nope' is not a column of mdata\['rna'\].obs or mdata.obs"):
        mv.tl.rank_genes_groups(mdata, "nope", mod="rna", model=model, **FAST)
    del mdata.obs["sample"]
    with pytest.raises(mv.InputError, match=r"trained with batches from obs\['sample'\].*add the cells' batches"):
        mv.tl.rank_genes_groups(mdata, "clusters", mod="rna", model=model, **FAST)


def test_backed_h5ad_gives_the_in_memory_result(pbmc, model, tmp_path):
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")
    backed = ad.read_h5ad(tmp_path / "pbmc.h5ad", backed="r")
    mv.tl.rank_genes_groups(backed, GROUPBY, groups=["B", "NK"], model=model, pts=True, **FAST)
    in_memory = pbmc.copy()
    mv.tl.rank_genes_groups(in_memory, GROUPBY, groups=["B", "NK"], model=model, pts=True, **FAST)
    for field in ("names", "scores", "logfoldchanges", "pvals_adj"):
        for group in ("B", "NK"):
            np.testing.assert_array_equal(_group(backed, field, group), _group(in_memory, field, group))
    for fractions in ("pts", "pts_rest"):  # read from disk a chunk of cells at a time
        pd.testing.assert_frame_equal(
            backed.uns["rank_genes_groups"][fractions], in_memory.uns["rank_genes_groups"][fractions]
        )
    backed.file.close()


def test_copy_returns_a_new_object_and_leaves_the_input(pbmc, model, unchanged):
    adata = pbmc.copy()
    with unchanged(adata):
        result = mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], model=model, copy=True, **FAST)
    assert "rank_genes_groups" in result.uns


def test_key_added_names_the_entry(pbmc, model):
    adata = pbmc.copy()
    assert mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], model=model, key_added="de", **FAST) is None
    assert "de" in adata.uns and "rank_genes_groups" not in adata.uns
    assert list(sc.get.rank_genes_groups_df(adata, "B", key="de")["names"][:3]) == list(
        _group(adata, "names", "B", "de")[:3]
    )


def test_repeated_gene_and_cell_names_as_trained_are_ranked_without_myvaes_warnings(pbmc):
    adata = pbmc[:300].copy()
    names = adata.var_names.to_numpy().copy()
    names[1] = names[0]  # as after concatenating data sets without making the names unique
    adata.var_names, adata.obs_names = names, ["cell"] * adata.n_obs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _train(adata, max_epochs=2)
        mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], model=model, **FAST)
    assert sc.get.rank_genes_groups_df(adata, "B")["names"].isin([names[0]]).sum() == 2
    assert [str(w.message) for w in caught if w.filename.startswith(str(Path(mv.__file__).parent))] == []
    other = adata[:, ::-1].copy()  # the same names, repeated, in another order: no gene can be found by name
    with pytest.raises(mv.InputError, match=r"repeat 1 names \(e.g. '.+'\).*var_names_make_unique"):
        mv.tl.rank_genes_groups(other, GROUPBY, groups=["B"], model=model, **FAST)


# ------------------------------------------------------------------ randomness ---------------------------------------


def test_same_seed_same_result_and_the_callers_random_state_is_untouched(pbmc, model):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    runs = []
    for seed in (3, 3, 4):
        adata = pbmc.copy()
        mv.tl.rank_genes_groups(adata, GROUPBY, groups=["NK"], model=model, random_state=seed, **FAST)
        runs.append(_group(adata, "logfoldchanges", "NK"))
    assert random.getstate() == states[0]
    np.testing.assert_array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


# ------------------------------------------------------------------ messages -----------------------------------------


def test_messages_follow_scanpys_verbosity(data, model, scanpy_log):
    """Silent at verbosity 0 (an overwrite included), the overwrite warning at 1, start and finish at info level."""
    rank = lambda: mv.tl.rank_genes_groups(data, GROUPBY, groups=["B"], model=model, **FAST)  # noqa: E731
    sc.settings.verbosity = 0
    rank()
    rank()
    captured = scanpy_log.readouterr()
    assert captured.out == "" and captured.err == ""
    sc.settings.verbosity = 1
    rank()
    assert scanpy_log.readouterr().err == "WARNING: Overwriting adata.uns['rank_genes_groups'] with the new ranking.\n"
    sc.settings.verbosity = 2
    mv.tl.rank_genes_groups(data, GROUPBY, groups=["B"], model=model, key_added="de", **FAST)
    err = scanpy_log.readouterr().err
    assert err.startswith("ranking genes: 1 group of obs['cell_type'] against 'rest'\n")
    assert "    finished (0:00:" in err and "): added 'de' (uns)" in err


# ------------------------------------------------------------------ refused input -------------------------------------


def _one_cell_group(adata):
    adata.obs["tiny"] = np.where(np.arange(adata.n_obs) == 0, "alone", "others")
    return adata


@pytest.mark.parametrize(
    ("prepare", "arguments", "message"),
    [
        (None, {"groupby": "nope"}, "not a column of adata.obs"),
        (lambda a: a.obs.__setitem__("score", 0.5), {"groupby": "score"}, "floating-point"),
        (None, {"groups": ["B", "Martians"]}, "not groups of obs"),
        (None, {"groups": "B"}, "list of groups"),
        (None, {"reference": "Martians"}, "neither 'rest' nor a group"),
        (None, {"groups": ["B", "NK"], "reference": "NK"}, "also in groups"),
        (_one_cell_group, {"groupby": "tiny"}, "Group 'alone' of obs\\['tiny'\\] has 1 cell;"),
        (
            _one_cell_group,
            {"groupby": "tiny", "groups": ["others"]},
            "The rest of obs.*outside group 'others'.* 1 cell;",
        ),
        (_one_cell_group, {"groupby": "tiny", "groups": ["others"], "reference": "alone"}, "reference group 'alone'"),
        (None, {"mode": "bayes"}, "mode must be"),
        (None, {"delta": 0}, "delta must be"),
        (None, {"delta": float("nan")}, "delta must be"),
        (None, {"fdr": 1.0}, "fdr must be"),
        (None, {"n_samples": 0}, "n_samples must be"),
        (None, {"random_state": -1}, "random_state must be"),
        (None, {"batch_correction": "yes"}, "batch_correction must be"),
        (None, {"batch_correction": True}, "needs a model trained with batches"),
        (None, {"key_added": ""}, "key_added must be"),
        (None, {"n_genes": 0}, "n_genes must be a positive integer"),
        (None, {"method": "wilcoxon"}, "takes no method=: the ranking is Bayesian .*mode='vanilla'"),
        (None, {"corr_method": "bonferroni"}, "takes no corr_method=: .*target with fdr="),
        (None, {"use_raw": True}, "takes no use_raw=: the model reads raw counts from layer="),
        (None, {"n_gene": 5}, "unknown keyword argument 'n_gene'; did you mean 'n_genes'"),
        (None, {"pts": "yes"}, "pts must be True or False"),
        (None, {"model": "my_model"}, "model= takes a trained MyVAE"),
        (None, {"mod": "rna"}, "applies to a MuData"),
    ],
)
def test_bad_input_is_refused_before_any_work(data, model, unchanged, prepare, arguments, message):
    if prepare is not None:
        prepare(data)
    arguments = {"groupby": GROUPBY, "model": model, **FAST, **arguments}
    with unchanged(data), pytest.raises(mv.InputError, match=message):
        mv.tl.rank_genes_groups(data, arguments.pop("groupby"), **arguments)


def test_data_with_other_genes_are_refused(data, model, unchanged):
    subset = data[:, 1:].copy()
    with unchanged(subset), pytest.raises(mv.InputError, match="genes differ"):
        mv.tl.rank_genes_groups(subset, GROUPBY, model=model, **FAST)


def test_an_untrained_model_is_refused(data, unchanged):
    bare = data.copy()
    mv.MyVAE.setup_anndata(bare)
    untrained = mv.MyVAE(bare)
    with unchanged(data), pytest.raises(mv.InputError, match="untrained"):
        mv.tl.rank_genes_groups(data, GROUPBY, model=untrained, **FAST)


def test_mudata_without_mod_is_refused(pbmc, model):
    mdata = md.MuData({"rna": pbmc.copy()})
    with pytest.raises(mv.InputError, match="pass mod="):
        mv.tl.rank_genes_groups(mdata, GROUPBY, model=model, **FAST)
    assert "rank_genes_groups" not in mdata["rna"].uns


def test_without_model_and_without_a_stored_model_asks_for_one(data, unchanged):
    with unchanged(data), pytest.raises(mv.InputError, match="carries no model"):
        mv.tl.rank_genes_groups(data, GROUPBY, **FAST)


def test_without_model_the_one_stored_model_is_used_whatever_its_key(data, unchanged):
    mv.tl.myvae(data, key_added="vae", max_epochs=2, batch_size=128, progress=False)
    mv.tl.rank_genes_groups(data, GROUPBY, groups=["B"], **FAST)
    expected = data.copy()
    mv.tl.rank_genes_groups(expected, GROUPBY, groups=["B"], model=mv.MyVAE.from_anndata(data, key="vae"), **FAST)
    pd.testing.assert_frame_equal(sc.get.rank_genes_groups_df(data, "B"), sc.get.rank_genes_groups_df(expected, "B"))
    mv.tl.myvae(data, key_added="vae_pyro", backend="pyro", max_epochs=2, batch_size=128, progress=False)
    match = r"several models \(uns\['vae'\], uns\['vae_pyro'\]\); choose one with model=mv.MyVAE.from_anndata"
    with unchanged(data), pytest.raises(mv.InputError, match=match):
        mv.tl.rank_genes_groups(data, GROUPBY, **FAST)


def test_without_model_the_model_the_anndata_carries_is_used(pbmc, tmp_path):
    adata = pbmc.copy()
    model = mv.tl.myvae(adata, max_epochs=2, progress=False, return_model=True)
    adata.write_h5ad(tmp_path / "carried.h5ad")
    carried = ad.read_h5ad(tmp_path / "carried.h5ad")
    mv.tl.rank_genes_groups(carried, GROUPBY, groups=["B"], **FAST)
    mv.tl.rank_genes_groups(adata, GROUPBY, groups=["B"], model=model, **FAST)
    for field in ("names", "scores", "logfoldchanges"):
        np.testing.assert_array_equal(_group(carried, field, "B"), _group(adata, field, "B"))


def test_scanpy_habits_counts_in_a_layer_and_a_model_of_the_highly_variable_genes(pbmc):
    adata = pbmc.copy()
    del adata.uns["myvae_setup"]
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 2 == 0
    mv.tl.myvae(adata, layer="counts", max_epochs=2, progress=False)
    mv.tl.rank_genes_groups(adata, GROUPBY, **FAST)
    ranked = adata.uns["rank_genes_groups"]
    assert ranked["params"]["layer"] == "counts"
    names = _group(adata, "names", "B")
    modelled = adata.var["highly_variable"].to_numpy()
    # every gene is listed, as scanpy's plots expect; those the model leaves out come last, without values
    assert set(names) == set(adata.var_names) and set(names[: modelled.sum()]) == set(adata.var_names[modelled])
    assert np.isnan(_group(adata, "logfoldchanges", "B")[modelled.sum() :]).all()
    assert not _group(adata, "is_de_fdr", "B")[modelled.sum() :].any()
    sc.pl.rank_genes_groups_dotplot(adata, n_genes=3, values_to_plot="logfoldchanges", show=False)
