"""The AnnData carries its trained model in uns[key]["model"]: plain arrays and scalars, checked before use."""

import copy
import os
import pickle

import anndata as ad
import mudata as md
import numpy as np
import pytest
from helpers import fast_train_kwargs, fingerprint

import myvae as mv
from myvae import InputError
from myvae.model import model_from_record, model_to_record

N_NEW = 40
"""The last cells of the small data serve as new cells, embedded with a model that other cells carry."""


class _RunsCodeWhenUnpickled:
    """An object whose unpickling would create a folder: what a smuggled pickle carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _with_batches(adata: ad.AnnData) -> ad.AnnData:
    adata.obs["sample"] = np.where(np.arange(adata.n_obs) % 2 == 0, "a", "b")
    return adata


def _round_trip(adata: ad.AnnData, path) -> ad.AnnData:
    """``adata`` written to ``path`` and read back: zarr for a ``.zarr`` path, h5ad otherwise."""
    if str(path).endswith(".zarr"):  # zarr gives strings back as NumPy's variable-width strings
        adata.write_zarr(path)
        return ad.read_zarr(path)
    adata.write_h5ad(path)
    return ad.read_h5ad(path)


@pytest.fixture(params=["torch", "pyro"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def carrier(small_adata, backend, tmp_path) -> ad.AnnData:
    """The small data after tl.myvae, written to an h5ad file and read back."""
    mv.tl.myvae(small_adata, backend=backend, **fast_train_kwargs(max_epochs=2))
    return _round_trip(small_adata, tmp_path / "carrier.h5ad")


@pytest.fixture
def new_cells(small_adata) -> ad.AnnData:
    return small_adata[-N_NEW:].copy()


@pytest.mark.parametrize("batch_key", [None, "sample"])
@pytest.mark.parametrize("store", ["h5ad", "zarr"])
def test_a_model_read_back_from_a_file_embeds_new_cells_as_the_live_model_does(
    small_adata, backend, batch_key, store, tmp_path
):
    adata = _with_batches(small_adata)
    mv.pp.setup_counts(adata, batch_key=batch_key)
    live = mv.tl.myvae(adata, backend=backend, return_model=True, **fast_train_kwargs(max_epochs=2))
    carrier = _round_trip(adata, tmp_path / f"carrier.{store}")
    weights = carrier.uns["myvae"]["model"]["weights"]
    assert all(isinstance(value, np.ndarray) and value.dtype == np.float32 for value in weights.values())

    by_record, by_object = adata[-N_NEW:].copy(), adata[-N_NEW:].copy()
    mv.tl.myvae(by_record, model=carrier)
    mv.tl.myvae(by_object, model=live)
    np.testing.assert_allclose(by_record.obsm["X_myvae"], by_object.obsm["X_myvae"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(by_record.obsm["X_myvae"], adata.obsm["X_myvae"][-N_NEW:], rtol=0, atol=1e-6)
    params = by_record.uns["myvae"]["params"]
    assert params["model"] == "AnnData uns['myvae']['model']" and params["pretrained"] is True
    assert params["backend"] == backend and params.get("batches") == (live.batch_categories if batch_key else None)
    # the new cells carry the model onwards
    assert by_record.uns["myvae"]["model"]["checksum"] == carrier.uns["myvae"]["model"]["checksum"]


def test_a_mudata_modality_carries_the_model_through_h5mu(tmp_path):
    mdata = mv.datasets.pbmc_cite()
    rna = mdata["rna"]
    mdata.mod["rna"] = rna[:, np.argsort(np.asarray(rna.X.sum(axis=0)).ravel())[-200:]].copy()
    mdata.update()
    mv.pp.setup_counts(mdata, mod="rna", batch_key="batch")
    mv.tl.myvae(mdata, mod="rna", **fast_train_kwargs(max_epochs=2))
    mdata.write_h5mu(tmp_path / "cite.h5mu")
    reread = md.read_h5mu(tmp_path / "cite.h5mu")

    new_cells = reread["rna"][:50].copy()
    mv.tl.myvae(new_cells, model=reread["rna"])
    np.testing.assert_allclose(new_cells.obsm["X_myvae"], mdata["rna"].obsm["X_myvae"][:50], rtol=0, atol=1e-6)
    model = mv.MyVAE.from_anndata(reread["rna"])
    assert model.batch_categories == mdata["rna"].uns["myvae"]["params"]["batches"]

    before = fingerprint(new_cells)
    with pytest.raises(InputError, match=r"for a MuData pass its modality, e.g. mdata\['rna'\]"):
        mv.tl.myvae(new_cells, model=reread, key_added="again")
    with pytest.raises(InputError, match="got a MuData; pass mod= naming the modality"):
        mv.MyVAE.from_anndata(reread)
    assert fingerprint(new_cells) == before
    by_modality = mv.MyVAE.from_anndata(reread, mod="rna")
    np.testing.assert_allclose(by_modality.get_latent_representation(), mdata["rna"].obsm["X_myvae"], rtol=0, atol=1e-6)


def test_from_anndata_and_load_find_the_batches_of_a_modality_in_the_mudata_obs(small_adata, tmp_path):
    """Trained with batch_key naming a column of mdata.obs, the model is got back from the MuData with mod=."""
    mdata = md.MuData({"rna": small_adata})
    mdata.obs["donor"] = np.where(np.arange(mdata.n_obs) % 3 == 0, "d1", "d2")
    mv.tl.myvae(mdata, mod="rna", batch_key="donor", **fast_train_kwargs(max_epochs=2))
    assert "donor" not in mdata["rna"].obs
    before = fingerprint(mdata["rna"])

    with pytest.raises(InputError, match=r"pass the MuData with mod= to MyVAE.from_anndata or MyVAE.load"):
        mv.MyVAE.from_anndata(mdata["rna"])
    model = mv.MyVAE.from_anndata(mdata, mod="rna")
    assert model.adata.obs["donor"].astype(str).tolist() == mdata.obs["donor"].tolist()
    np.testing.assert_allclose(model.get_latent_representation(), mdata["rna"].obsm["X_myvae"], rtol=0, atol=1e-6)

    model.save(tmp_path / "model")
    loaded = mv.MyVAE.load(tmp_path / "model", adata=mdata, mod="rna")
    np.testing.assert_allclose(loaded.get_latent_representation(), mdata["rna"].obsm["X_myvae"], rtol=0, atol=1e-6)
    assert fingerprint(mdata["rna"]) == before and "donor" not in mdata["rna"].obs

    with pytest.raises(InputError, match="adata= is not given; pass the MuData"):
        mv.MyVAE.load(tmp_path / "model", mod="rna")
    with pytest.raises(InputError, match="applies to a MuData, but MyVAE.from_anndata got an AnnData"):
        mv.MyVAE.from_anndata(mdata["rna"], mod="rna")
    mdata.obs.loc[mdata.obs_names[:5], "donor"] = np.nan
    with pytest.raises(InputError, match=r"batch_key='donor': 5 cells without a batch \(NaN\)"):
        mv.MyVAE.from_anndata(mdata, mod="rna")


def test_store_model_false_leaves_the_model_out(small_adata, new_cells, tmp_path, unchanged):
    mv.tl.myvae(small_adata, store_model=False, **fast_train_kwargs(max_epochs=2))
    assert set(small_adata.uns["myvae"]) == {"params", "history", "metrics"}
    carrier = _round_trip(small_adata, tmp_path / "carrier.h5ad")
    with unchanged(new_cells), pytest.raises(InputError, match=r"uns\['myvae'\] holds no model .*store_model=False"):
        mv.tl.myvae(new_cells, model=carrier)
    with pytest.raises(InputError, match="holds no model"):
        mv.MyVAE.from_anndata(carrier)


def test_from_anndata_reads_the_counts_layer_and_the_genes_the_model_was_trained_on(lognormalised_adata):
    """The scanpy habit: raw counts in a layer, log-normalised X, highly variable genes marked, no setup_counts."""
    adata = lognormalised_adata
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 2 == 0
    mv.tl.myvae(adata, layer="counts", **fast_train_kwargs(max_epochs=2))
    before = fingerprint(adata)
    model = mv.MyVAE.from_anndata(adata)
    assert fingerprint(adata) == before
    assert model.adata.obs_names.equals(adata.obs_names)
    assert model.adata.var_names.equals(adata.var_names[adata.var["highly_variable"].to_numpy()])
    np.testing.assert_allclose(model.get_latent_representation(), adata.obsm["X_myvae"], rtol=0, atol=1e-6)


def test_from_anndata_leaves_counts_on_disk_when_the_model_has_some_of_the_genes(small_adata, tmp_path):
    pytest.importorskip("dask")  # selecting genes of counts on disk reads them through dask
    from myvae._counts import is_out_of_core

    small_adata.var["highly_variable"] = np.arange(small_adata.n_vars) % 2 == 0
    small_adata.write_h5ad(tmp_path / "small.h5ad")
    backed = ad.read_h5ad(tmp_path / "small.h5ad", backed="r")
    try:
        mv.tl.myvae(backed, **fast_train_kwargs(max_epochs=2))
        model = mv.MyVAE.from_anndata(backed)
        assert is_out_of_core(model.adata_manager.get_from_registry("X"))  # not read into memory
        assert model.adata.var_names.equals(backed.var_names[backed.var["highly_variable"].to_numpy()])
        np.testing.assert_allclose(model.get_latent_representation(), backed.obsm["X_myvae"], rtol=0, atol=1e-6)
    finally:
        backed.file.close()


def test_from_anndata_returns_the_carried_model_attached_to_the_carrying_counts(
    small_adata, backend, tmp_path, unchanged
):
    adata = _with_batches(small_adata)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()  # X no longer holds counts; the setup names the layer that does
    mv.pp.setup_counts(adata, layer="counts", batch_key="sample")
    live = mv.tl.myvae(adata, backend=backend, return_model=True, **fast_train_kwargs(max_epochs=2))
    carrier = _round_trip(adata, tmp_path / "carrier.h5ad")
    before = fingerprint(carrier)

    model = mv.MyVAE.from_anndata(carrier, key="myvae")
    assert fingerprint(carrier) == before
    assert (model.backend, model.n_latent, model.n_hidden, model.is_trained) == (backend, 10, 128, True)
    assert model.batch_categories == ["a", "b"] and model.adata.obs_names.equals(carrier.obs_names)
    np.testing.assert_array_equal(model.adata.var_names, live.adata.var_names)
    np.testing.assert_allclose(model.get_latent_representation(), carrier.obsm["X_myvae"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        model.history["elbo_validation"].to_numpy(dtype=float), live.history["elbo_validation"].to_numpy(dtype=float)
    )

    chosen = carrier.copy()  # trained on some of its genes (mask_var): the model comes with those genes of its cells
    chosen.var["chosen"] = np.arange(chosen.n_vars) % 3 > 0
    on_chosen = mv.tl.myvae(chosen, mask_var="chosen", return_model=True, **fast_train_kwargs(max_epochs=2))
    before_chosen = fingerprint(chosen)
    attached = mv.MyVAE.from_anndata(chosen)
    assert fingerprint(chosen) == before_chosen
    assert attached.adata.obs_names.equals(chosen.obs_names)
    assert attached.adata.var_names.equals(on_chosen.adata.var_names)
    np.testing.assert_allclose(attached.get_latent_representation(), chosen.obsm["X_myvae"], rtol=0, atol=1e-6)

    subset = carrier[:, 10:].copy()  # other genes: the model comes with a placeholder instead of these cells
    placeholder = mv.MyVAE.from_anndata(subset)
    assert placeholder.adata.n_obs == 1 and placeholder.adata.var_names.equals(carrier.var_names)
    np.testing.assert_allclose(
        placeholder.get_latent_representation(model.adata), carrier.obsm["X_myvae"], rtol=0, atol=1e-6
    )
    with pytest.raises(InputError, match="adata.uns has no 'other'"):
        mv.MyVAE.from_anndata(carrier, key="other")
    no_batches = carrier.copy()
    del no_batches.obs["sample"]
    with (
        unchanged(no_batches),
        pytest.raises(InputError, match=r"batches from obs\['sample'\], and these cells' obs has no such"),
    ):
        model_from_record(no_batches.uns["myvae"]["model"], no_batches)


def test_model_from_record_attaches_new_cells_without_modifying_them(carrier, new_cells):
    before = fingerprint(new_cells)
    model = model_from_record(carrier.uns["myvae"]["model"], new_cells, accelerator="cpu")
    assert fingerprint(new_cells) == before
    assert model.adata is not new_cells and model.adata.obs_names.equals(new_cells.obs_names)
    np.testing.assert_allclose(model.get_latent_representation(), carrier.obsm["X_myvae"][-N_NEW:], rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="genes differ from the model's"):
        model_from_record(carrier.uns["myvae"]["model"], new_cells[:, :100].copy())


def test_embedding_with_a_carrier_checks_genes_and_ambiguity(carrier, new_cells, unchanged):
    with unchanged(new_cells), pytest.raises(InputError, match="genes differ from the model's"):
        mv.tl.myvae(new_cells[:, 5:].copy(), model=carrier)
    with unchanged(new_cells), pytest.raises(InputError, match=r"Training arguments \(early_stopping\) do nothing"):
        mv.tl.myvae(new_cells, model=carrier, early_stopping=False)
    carrier.uns["second"] = copy.deepcopy(carrier.uns["myvae"])
    with unchanged(new_cells), pytest.raises(InputError, match=r"several models .*MyVAE.from_anndata\(adata, key="):
        mv.tl.myvae(new_cells, model=carrier)


def _first_weight(record):
    return next(iter(record["weights"]))


def _changed_value(record, marker):
    record["weights"][_first_weight(record)][0] += 1e-3


def _wrong_shape(record, marker):
    name = "networks.decoder.2.weight"
    record["weights"][name] = record["weights"][name][:-1]


def _missing_key(record, marker):
    del record["var_names"]


def _wrong_type(record, marker):
    record["init_params"]["n_latent"] = "10"


def _wrong_dtype(record, marker):
    name = _first_weight(record)
    record["weights"][name] = record["weights"][name].astype(np.float64)


def _unknown_backend(record, marker):
    record["backend"] = "tensorflow"


def _newer_format(record, marker):
    record["format"] = "myvae-record/2"


def _smuggled_object(record, marker):
    record["weights"][_first_weight(record)] = _RunsCodeWhenUnpickled(marker)


def _smuggled_pickle_bytes(record, marker):
    record["weights"][_first_weight(record)] = pickle.dumps(_RunsCodeWhenUnpickled(marker))


def _smuggled_object_array(record, marker):
    record["history"]["elbo_train"] = np.array([_RunsCodeWhenUnpickled(marker)], dtype=object)


TAMPERINGS = {
    _changed_value: "checksum does not match",
    _wrong_shape: r"weights\['networks.decoder.2.weight'\] has shape \(229, 128\);.* 230 genes.* has \(230, 128\)",
    _missing_key: "malformed: the record lacks 'var_names'",
    _wrong_type: r"init_params\['n_latent'\] is '10', not a positive integer",
    _wrong_dtype: "is an array of float64, not an array of float32",
    _unknown_backend: "backend 'tensorflow', which is not registered",
    _newer_format: "format 'myvae-record/2'; this version of myvae reads 'myvae-record/1'",
    _smuggled_object: "is a _RunsCodeWhenUnpickled, not an array of float32",
    _smuggled_pickle_bytes: "is a bytes, not an array of float32",
    _smuggled_object_array: r"history\['elbo_train'\] is an array of object, not an array of float",
}


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda tamper: tamper.__name__.strip("_"))
def test_a_tampered_record_is_refused_and_nothing_is_written(carrier, new_cells, tamper, tmp_path, unchanged):
    marker = tmp_path / "code-ran"
    tamper(carrier.uns["myvae"]["model"], marker)
    message = TAMPERINGS[tamper]
    with unchanged(new_cells):
        with pytest.raises(InputError, match=message):
            mv.tl.myvae(new_cells, model=carrier)
        with pytest.raises(InputError, match=message):
            model_from_record(carrier.uns["myvae"]["model"], new_cells)
    with pytest.raises(InputError, match=message):
        mv.MyVAE.from_anndata(carrier)
    assert not marker.exists()


def test_a_record_is_a_dict_of_plain_values(carrier):
    with pytest.raises(InputError, match="malformed: the record is a str, not a dict"):
        model_from_record("weights.pt")
    record = copy.deepcopy(carrier.uns["myvae"]["model"])
    record["extra"] = np.zeros(3)
    with pytest.raises(InputError, match="the record holds unexpected entries 'extra'"):
        model_from_record(record)


def test_the_record_takes_about_1_6_kb_per_gene_at_the_default_sizes(small_adata, tmp_path):
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=1))
    record = small_adata.uns["myvae"]["model"]
    weight_bytes = sum(value.nbytes for value in record["weights"].values())
    assert 1.4e3 < weight_bytes / small_adata.n_vars < 2e3
    small_adata.write_h5ad(tmp_path / "with.h5ad")
    del small_adata.uns["myvae"]["model"]
    small_adata.write_h5ad(tmp_path / "without.h5ad")
    file_bytes = (tmp_path / "with.h5ad").stat().st_size - (tmp_path / "without.h5ad").stat().st_size
    assert file_bytes / small_adata.n_vars < 2048


def test_model_to_record_of_a_loaded_record_is_the_same_record(carrier):
    record = carrier.uns["myvae"]["model"]
    again = model_to_record(model_from_record(record, accelerator="cpu"))
    assert again["checksum"] == record["checksum"]
    assert set(again["weights"]) == set(record["weights"])
    for name, values in record["weights"].items():
        np.testing.assert_array_equal(again["weights"][name], values)


def test_an_untrained_model_is_not_reused(small_adata, new_cells, unchanged):
    carrier = small_adata.copy()
    mv.MyVAE.setup_anndata(carrier)
    carrier.uns["myvae"] = {"model": model_to_record(mv.MyVAE(carrier))}
    with unchanged(new_cells), pytest.raises(InputError, match="model is untrained; train it first"):
        mv.tl.myvae(new_cells, model=carrier)
