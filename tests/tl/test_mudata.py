import mudata as md
import muon as mu
import numpy as np
import pytest
import scanpy as sc
from helpers import assert_finite, fast_train_kwargs

import myvae as mv


@pytest.fixture
def cite() -> md.MuData:
    """The bundled CITE-seq MuData, its RNA cut to the 1,000 genes with most counts to keep tests fast."""
    mdata = mv.datasets.pbmc_cite()
    rna = mdata["rna"]
    top_genes = np.sort(np.argsort(np.asarray(rna.X.sum(axis=0)).ravel())[-1000:])
    mdata.mod["rna"] = rna[:, top_genes].copy()
    mdata.update()
    return mdata


def _snapshot(mdata: md.MuData) -> dict:
    return {
        "obsm": set(mdata.obsm),
        "uns": set(mdata.uns),
        "rna_obsm": set(mdata["rna"].obsm),
        "rna_uns": set(mdata["rna"].uns),
        "rna_layers": set(mdata["rna"].layers),
        "rna_X": mdata["rna"].X.copy(),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert {key: value for key, value in before.items() if key != "rna_X"} == {
        key: value for key, value in after.items() if key != "rna_X"
    }
    assert (before["rna_X"] != after["rna_X"]).nnz == 0


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_results_go_into_the_modality_and_the_mudata(cite, backend):
    mv.pp.setup_counts(cite, mod="rna")
    assert dict(cite["rna"].uns["myvae_setup"]) == {}
    assert mv.tl.myvae(cite, mod="rna", backend=backend, **fast_train_kwargs(max_epochs=3)) is None
    embedding = cite["rna"].obsm["X_myvae"]
    assert embedding.shape == (400, 10)
    assert_finite(embedding)
    np.testing.assert_array_equal(cite.obsm["X_myvae"], embedding)
    assert cite["rna"].uns["myvae"]["params"]["backend"] == backend
    assert "X_myvae" not in cite["prot"].obsm


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_copy_returns_a_new_mudata(cite, backend):
    before = _snapshot(cite)
    result = mv.tl.myvae(cite, mod="rna", backend=backend, copy=True, **fast_train_kwargs(max_epochs=2))
    _assert_same(before, _snapshot(cite))
    assert isinstance(result, md.MuData) and result is not cite
    assert result.obsm["X_myvae"].shape == (400, 10)
    assert result["rna"].obsm["X_myvae"].shape == (400, 10)

    set_up = mv.pp.setup_counts(cite, mod="rna", copy=True)
    assert isinstance(set_up, md.MuData) and "myvae_setup" in set_up["rna"].uns
    assert "myvae_setup" not in cite["rna"].uns


def test_cells_absent_from_the_modality_get_nan_rows(cite):
    rna_cells = cite.obs_names[::2][:150].append(cite.obs_names[1::2][:100])
    mdata = md.MuData({"rna": cite["rna"][rna_cells].copy(), "prot": cite["prot"].copy()})
    assert mdata.n_obs == 400
    mv.tl.myvae(mdata, mod="rna", layer_added="denoised", **fast_train_kwargs(max_epochs=2))

    aligned = mdata.obsm["X_myvae"]
    present = mdata.obs_names.isin(rna_cells)
    assert aligned.shape == (400, 10) and present.sum() == 250
    assert np.isnan(aligned[~present]).all()
    rows = mdata.obs_names.get_indexer(mdata["rna"].obs_names)
    np.testing.assert_array_equal(aligned[rows], mdata["rna"].obsm["X_myvae"])
    assert mdata["rna"].layers["denoised"].shape == (250, 1000)


def test_h5mu_round_trip_and_muon_workflow(cite, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    cite.write_h5mu(tmp_path / "cite.h5mu")
    mdata = md.read_h5mu(tmp_path / "cite.h5mu")
    mv.pp.setup_counts(mdata, mod="rna", batch_key="batch")
    mv.tl.myvae(mdata, mod="rna", **fast_train_kwargs(max_epochs=3))
    mdata.write_h5mu(tmp_path / "result.h5mu")

    reread = md.read_h5mu(tmp_path / "result.h5mu")
    np.testing.assert_array_equal(reread.obsm["X_myvae"], mdata.obsm["X_myvae"])
    assert dict(reread["rna"].uns["myvae_setup"]) == {"batch_key": "batch"}
    assert reread["rna"].uns["myvae"]["params"]["n_latent"] == 10

    sc.pp.neighbors(reread, use_rep="X_myvae", n_neighbors=10)
    sc.tl.umap(reread)
    sc.tl.leiden(reread, flavor="igraph", n_iterations=2)
    assert reread.obsm["X_umap"].shape == (400, 2)
    assert np.isfinite(reread.obsm["X_umap"]).all()
    reread.pull_obs(columns=["batch"], mods=["rna"])  # mudata >= 0.4 pulls modality columns only when asked
    mu.pl.embedding(reread, basis="X_umap", color=["leiden", "rna:batch"], show=False)


def test_elbo_plot_of_a_modality(cite):
    import matplotlib

    matplotlib.use("Agg")
    mv.tl.myvae(cite, mod="rna", **fast_train_kwargs(max_epochs=2))
    ax = mv.pl.elbo(cite, mod="rna", show=False)
    assert len(ax.get_lines()) == 2
    with pytest.raises(mv.InputError, match="got a MuData; pass mod="):
        mv.pl.elbo(cite)


def test_failed_call_on_mudata_changes_nothing(cite):
    cite["rna"].X = cite["rna"].X * 0.5
    before = _snapshot(cite)
    with pytest.raises(mv.InputError, match=r"adata.X holds non-integer values"):
        mv.tl.myvae(cite, mod="rna", **fast_train_kwargs())
    _assert_same(before, _snapshot(cite))


@pytest.mark.parametrize("where", ["mdata.obs", "rna:prefixed", "modality"])
def test_batch_key_may_be_a_column_of_the_modality_or_of_the_mudata(cite, where):
    donors = np.where(np.arange(cite.n_obs) % 2, "d2", "d1")
    if where == "mdata.obs":
        key = "donor"
        cite.obs["donor"] = donors  # muon's usual place: only in mdata.obs
        assert "donor" not in cite["rna"].obs
    elif where == "rna:prefixed":
        key = "rna:donor"
        cite["rna"].obs["donor"] = donors
        cite.update()
    else:
        key = "donor"
        cite["rna"].obs["donor"] = donors
    model = mv.tl.myvae(cite, mod="rna", batch_key=key, return_model=True, **fast_train_kwargs(max_epochs=1))
    assert model.batch_categories == ["d1", "d2"]
    assert cite["rna"].uns["myvae"]["params"]["batch_key"] == key


def test_a_batch_column_of_the_mudata_is_aligned_to_the_modalitys_cells(cite):
    rna_cells = cite.obs_names[::-1][:300]  # another order, and fewer cells than the MuData
    mdata = md.MuData({"rna": cite["rna"][rna_cells].copy(), "prot": cite["prot"].copy()})
    mdata.obs["donor"] = np.where(mdata.obs_names.isin(rna_cells[:100]), "first", "rest")
    model = mv.tl.myvae(mdata, mod="rna", batch_key="donor", return_model=True, **fast_train_kwargs(max_epochs=1))
    codes = model.adata.obs["donor"].to_numpy()
    np.testing.assert_array_equal(codes[:100], "first")
    np.testing.assert_array_equal(codes[100:], "rest")


def test_a_missing_batch_column_lists_both_places(cite):
    before = _snapshot(cite)
    with pytest.raises(mv.InputError, match=r"batch_key='nope' is not a column of mdata\['rna'\].obs or mdata.obs"):
        mv.tl.myvae(cite, mod="rna", batch_key="nope", **fast_train_kwargs())
    _assert_same(before, _snapshot(cite))
