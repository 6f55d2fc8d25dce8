import anndata as ad
import mudata as md
import numpy as np
import pytest
from scipy import sparse

import myvae as mv


def test_records_the_choices(small_adata):
    small_adata.layers["counts"] = small_adata.X.copy()
    assert mv.pp.setup_counts(small_adata, layer="counts", batch_key="groups") is None
    assert dict(small_adata.uns["myvae_setup"]) == {"layer": "counts", "batch_key": "groups"}


def test_default_record_uses_x(small_adata):
    mv.pp.setup_counts(small_adata)
    assert dict(small_adata.uns["myvae_setup"]) == {}
    assert mv.pp._setup_counts.read_setup(small_adata) == {"layer": None, "batch_key": None}


def test_record_survives_h5ad_round_trip(small_adata, tmp_path):
    small_adata.layers["counts"] = small_adata.X.copy()
    mv.pp.setup_counts(small_adata, layer="counts", batch_key="groups")
    small_adata.write_h5ad(tmp_path / "setup.h5ad")
    reread = ad.read_h5ad(tmp_path / "setup.h5ad")
    assert mv.pp._setup_counts.read_setup(reread) == {"layer": "counts", "batch_key": "groups"}


def test_copy_returns_new_object_and_leaves_input(small_adata, unchanged):
    with unchanged(small_adata):
        result = mv.pp.setup_counts(small_adata, copy=True)
    assert result is not small_adata
    assert "myvae_setup" in result.uns


@pytest.mark.parametrize(
    "as_counts",
    [
        pytest.param(lambda x: x.toarray(), id="dense"),
        pytest.param(lambda x: x.toarray().astype(np.int64), id="dense-int"),
        pytest.param(lambda x: sparse.csc_matrix(x), id="csc"),
        pytest.param(lambda x: x.astype(np.int32), id="csr-int"),
    ],
)
def test_accepts_counts_in_any_common_storage(small_adata, as_counts):
    small_adata.X = as_counts(small_adata.X)
    given = small_adata.X
    assert mv.pp.setup_counts(small_adata) is None
    assert dict(small_adata.uns["myvae_setup"]) == {}
    assert small_adata.X is given  # checked where it is, neither converted nor copied


def _set_value(value):
    def corrupt(adata):
        x = adata.X.toarray()
        x[3, 5] = value
        adata.X = sparse.csr_matrix(x)

    return corrupt


def _zero_cells(adata):
    x = adata.X.toarray()
    x[[1, 7]] = 0
    adata.X = sparse.csr_matrix(x)


@pytest.mark.parametrize(
    ("corrupt", "kwargs", "message"),
    [
        pytest.param(_set_value(-2.0), {}, r"negative values .* raw counts", id="negative"),
        pytest.param(_set_value(np.nan), {}, r"NaN or infinite", id="nan"),
        pytest.param(_set_value(np.inf), {}, r"NaN or infinite", id="inf"),
        pytest.param(_set_value(0.5), {}, r"non-integer values .* layer='counts'", id="fraction"),
        pytest.param(_zero_cells, {}, r"has 2 cells with zero total counts.*filter_cells", id="empty-cells"),
        pytest.param(None, {"layer": "spliced"}, r"Layer 'spliced' does not exist", id="missing-layer"),
        pytest.param(None, {"batch_key": "sample"}, r"batch_key='sample' is not a column .* 'groups'", id="no-batch"),
    ],
)
def test_bad_input_raises_before_writing(small_adata, unchanged, corrupt, kwargs, message):
    if corrupt is not None:
        corrupt(small_adata)
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.pp.setup_counts(small_adata, **kwargs)


def test_lognormalised_x_names_the_fix(lognormalised_adata, unchanged):
    with unchanged(lognormalised_adata), pytest.raises(mv.InputError, match=r"log-normalised.*layer='counts'"):
        mv.pp.setup_counts(lognormalised_adata)
    mv.pp.setup_counts(lognormalised_adata, layer="counts")
    assert lognormalised_adata.uns["myvae_setup"]["layer"] == "counts"


def test_mudata_needs_an_existing_modality(small_adata):
    mdata = md.MuData({"rna": small_adata})
    with pytest.raises(mv.InputError, match=r"got a MuData; pass mod=.*'rna'"):
        mv.pp.setup_counts(mdata)
    with pytest.raises(mv.InputError, match=r"mod='gex' is not a modality of the MuData \(modalities: 'rna'\)"):
        mv.pp.setup_counts(mdata, mod="gex")
    assert "myvae_setup" not in mdata.uns and "myvae_setup" not in small_adata.uns


def test_not_anndata_is_refused(small_adata):
    with pytest.raises(mv.InputError, match="expects an AnnData"):
        mv.pp.setup_counts(small_adata.X)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (lambda n: np.where(np.arange(n) < 3, None, "a"), r"3 cells without a batch \(NaN\)"),
        (lambda n: np.linspace(0, 1, n), "holds non-integer numbers"),
        (lambda n: np.arange(n), "numeric with 80 distinct values, which looks like a continuous covariate"),
    ],
    ids=["missing", "fractional", "continuous"],
)
def test_bad_batch_columns_are_refused_with_the_fix(small_adata, unchanged, column, message):
    small_adata.obs["batch"] = column(small_adata.n_obs)
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.pp.setup_counts(small_adata, batch_key="batch")
