"""The tool's own arguments: the counts layer, the batch column and the genes (mask_var) as scanpy's tools take
them, every keyword checked before any work, and layer_added that never destroys the counts."""

import re

import anndata as ad
import numpy as np
import pytest
import torch
from helpers import fast_train_kwargs

import myvae as mv


@pytest.fixture
def hvg_adata(two_batch_adata):
    """The two-batch cells with a `highly_variable` column marking every other gene, counts also in layers."""
    two_batch_adata.var["highly_variable"] = np.arange(two_batch_adata.n_vars) % 2 == 0
    two_batch_adata.layers["counts"] = two_batch_adata.X.copy()
    return two_batch_adata


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_layer_and_batch_key_on_the_tool_without_setup(lognormalised_adata, backend):
    lognormalised_adata.obs["sample"] = np.where(np.arange(lognormalised_adata.n_obs) % 2, "b", "a")
    model = mv.tl.myvae(
        lognormalised_adata,
        layer="counts",
        batch_key="sample",
        backend=backend,
        return_model=True,
        **fast_train_kwargs(max_epochs=2),
    )
    params = lognormalised_adata.uns["myvae"]["params"]
    assert params["counts"] == "adata.layers['counts']" and params["layer"] == "counts"
    assert params["batch_key"] == "sample" and list(params["batches"]) == ["a", "b"]
    assert model.n_batch == 2


def test_tool_arguments_override_the_setup_record(hvg_adata):
    hvg_adata.obs["run"] = np.arange(hvg_adata.n_obs) % 3
    hvg_adata.layers["other_counts"] = hvg_adata.X.copy()
    mv.pp.setup_counts(hvg_adata, layer="counts", batch_key="sample")
    mv.tl.myvae(hvg_adata, **fast_train_kwargs(max_epochs=1))
    params = hvg_adata.uns["myvae"]["params"]
    assert params["layer"] == "counts" and params["batch_key"] == "sample"
    mv.tl.myvae(hvg_adata, layer="other_counts", batch_key="run", **fast_train_kwargs(max_epochs=1))
    params = hvg_adata.uns["myvae"]["params"]
    assert params["layer"] == "other_counts" and params["batch_key"] == "run"
    assert list(params["batches"]) == ["0", "1", "2"]
    assert dict(hvg_adata.uns["myvae_setup"]) == {"layer": "counts", "batch_key": "sample"}  # the record stays


def test_mask_var_defaults_to_highly_variable_genes_like_pca(hvg_adata):
    model = mv.tl.myvae(hvg_adata, return_model=True, **fast_train_kwargs(max_epochs=1))
    hvg = hvg_adata.var_names[hvg_adata.var["highly_variable"]]
    assert list(model.adata.var_names) == list(hvg)
    params = hvg_adata.uns["myvae"]["params"]
    assert params["mask_var"] == "highly_variable" and params["n_genes"] == len(hvg) == 115

    model = mv.tl.myvae(hvg_adata, mask_var=None, return_model=True, **fast_train_kwargs(max_epochs=1))
    assert model.adata.n_vars == 230 and hvg_adata.uns["myvae"]["params"]["mask_var"] is None


def test_mask_var_takes_a_column_or_a_boolean_mask(hvg_adata):
    totals = np.asarray(hvg_adata.X.sum(axis=0)).ravel()
    top = totals >= np.sort(totals)[-100]  # the 100 genes with most counts: every cell has some
    hvg_adata.var["top"] = top
    model = mv.tl.myvae(hvg_adata, mask_var="top", return_model=True, **fast_train_kwargs(max_epochs=1))
    assert list(model.adata.var_names) == list(hvg_adata.var_names[top])
    model = mv.tl.myvae(hvg_adata, mask_var=~top, return_model=True, **fast_train_kwargs(max_epochs=1))
    assert list(model.adata.var_names) == list(hvg_adata.var_names[~top])
    np.testing.assert_array_equal(hvg_adata.uns["myvae"]["params"]["mask_var"], ~top)


def test_layer_added_holds_nan_for_the_genes_mask_var_leaves_out(hvg_adata):
    mv.tl.myvae(hvg_adata, layer_added="denoised", **fast_train_kwargs(max_epochs=2))
    denoised, hvg = hvg_adata.layers["denoised"], hvg_adata.var["highly_variable"].to_numpy()
    assert denoised.shape == hvg_adata.shape
    assert np.isnan(denoised[:, ~hvg]).all() and np.isfinite(denoised[:, hvg]).all()
    np.testing.assert_allclose(denoised[:, hvg].sum(axis=1), 1e4, rtol=1e-4)


@pytest.mark.parametrize(
    ("mask_var", "message"),
    [
        ("nope", r"mask_var='nope' is not a column of adata.var"),
        ("gene_score", r"adata.var\['gene_score'\] must be boolean"),
        (np.ones(3, dtype=bool), r"mask_var has shape \(3,\); it must hold one boolean per gene \(230\)"),
        (np.zeros(230, dtype=bool), "selects no gene"),
        (5, "mask_var takes the name of a boolean var column"),
    ],
)
def test_bad_mask_var_is_refused_before_work(hvg_adata, unchanged, mask_var, message):
    hvg_adata.var["gene_score"] = np.linspace(0, 1, hvg_adata.n_vars)
    with unchanged(hvg_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(hvg_adata, mask_var=mask_var, **fast_train_kwargs())


@pytest.mark.parametrize(
    ("accelerator", "message"),
    [
        (0, "accelerator must be a name such as 'auto'"),
        *(
            (name, f"accelerator='{name}' asks for a GPU, but torch finds none here.*Pass accelerator='auto'")
            for name in ("gpu", "cuda", "mps")
            if not (torch.cuda.is_available() or torch.backends.mps.is_available())
        ),
    ],
)
def test_an_accelerator_that_is_not_there_is_refused_before_work(small_adata, unchanged, accelerator, message):
    arguments = {**fast_train_kwargs(), "accelerator": accelerator}
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(small_adata, **arguments)
    trained_on = small_adata.copy()
    mv.MyVAE.setup_anndata(trained_on)
    model = mv.MyVAE(trained_on)
    with pytest.raises(mv.InputError, match=message):
        model.train(**arguments)
    assert not model.is_trained


def test_counts_are_checked_on_the_masked_genes(small_adata, unchanged):
    small_adata.var["highly_variable"] = np.asarray(small_adata.X.sum(axis=0)).ravel() == 0
    small_adata.var.loc[small_adata.var_names[0], "highly_variable"] = True
    with (
        unchanged(small_adata),
        pytest.raises(mv.InputError, match=r"adata.X \(its \d+ genes.*\) has \d+ cells? with zero"),
    ):
        mv.tl.myvae(small_adata, **fast_train_kwargs())


def test_the_advice_for_cells_without_counts_in_the_masked_genes_removes_them(small_adata, unchanged):
    expressing = np.asarray((small_adata.X > 0).sum(axis=0)).ravel()
    small_adata.var["highly_variable"] = expressing == expressing.max()  # the most common gene; some cells lack it
    in_genes = np.asarray(small_adata[:, small_adata.var["highly_variable"]].X.sum(axis=1)).ravel()
    assert 10 < (in_genes > 0).sum() < small_adata.n_obs
    small_adata.layers["counts"] = small_adata.X.copy()
    with unchanged(small_adata), pytest.raises(mv.InputError, match=r"filter_cells` keeps them") as error:
        mv.tl.myvae(small_adata, layer="counts", **fast_train_kwargs())
    advice = str(error.value).split("`adata = ")[1].removesuffix("`.")
    fixed = eval(advice, {"np": np, "adata": small_adata, "genes": small_adata.var["highly_variable"]})
    assert 10 < fixed.n_obs < small_adata.n_obs
    mv.tl.myvae(fixed, layer="counts", **fast_train_kwargs(max_epochs=1))
    assert fixed.obsm["X_myvae"].shape == (fixed.n_obs, 10)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
@pytest.mark.parametrize(
    ("keyword", "suggestion"),
    [("max_epoch", "max_epochs"), ("batch_kye", "batch_key"), ("layer_add", "layer_added"), ("mask_vars", "mask_var")],
)
def test_an_unknown_keyword_names_the_closest_valid_one_before_any_work(
    two_batch_adata, unchanged, backend, keyword, suggestion
):
    with unchanged(two_batch_adata), pytest.raises(mv.InputError) as error:
        mv.tl.myvae(two_batch_adata, backend=backend, **{keyword: 2}, **fast_train_kwargs())
    message = str(error.value)
    assert f"unknown keyword argument {keyword!r}; did you mean {suggestion!r}?" in message
    valid = message.split("closest first: ")[1]
    assert valid.startswith(suggestion) and "gradient_clip_val" in valid and "train_size" in valid
    assert error.value.__cause__ is None and error.value.__context__ is None  # no Lightning trace behind it


@pytest.mark.parametrize(
    ("keyword", "value", "advice"),
    [
        ("use_highly_variable", True, "scanpy's older name for mask_var="),
        ("n_comps", 20, "the size of the embedding is n_latent="),
        ("seed", 1, "the seed is random_state="),
        ("n_epochs", 5, "the number of epochs is max_epochs="),
        ("n_layers", 2, "one hidden layer of n_hidden= units; scvi-tools' SCVI builds deeper networks"),
        ("gene_likelihood", "zinb", "for a zero-inflated or a Poisson likelihood use scvi-tools' SCVI"),
    ],
)
def test_keywords_of_scanpy_and_scvi_tools_habits_are_explained_before_any_work(
    small_adata, unchanged, keyword, value, advice
):
    with (
        unchanged(small_adata),
        pytest.raises(mv.InputError, match=rf"tl.myvae takes no {keyword}=: .*{re.escape(advice)}"),
    ):
        mv.tl.myvae(small_adata, **{keyword: value}, **fast_train_kwargs())


def test_train_and_lightning_keywords_pass_through(small_adata):
    mv.tl.myvae(small_adata, train_size=0.8, gradient_clip_val=1.0, **fast_train_kwargs(max_epochs=1))
    params = small_adata.uns["myvae"]["params"]
    assert params["train_size"] == 0.8 and params["gradient_clip_val"] == 1.0


def test_the_model_class_checks_its_trainer_keywords(small_adata):
    mv.MyVAE.setup_anndata(small_adata)
    model = mv.MyVAE(small_adata)
    with pytest.raises(mv.InputError, match="MyVAE.train got an unknown keyword argument 'max_epoch'"):
        model.train(max_epoch=2)
    assert not model.is_trained


def test_layer_added_never_overwrites_the_counts(lognormalised_adata, unchanged):
    with unchanged(lognormalised_adata), pytest.raises(mv.InputError, match="would overwrite the counts"):
        mv.tl.myvae(lognormalised_adata, layer="counts", layer_added="counts", **fast_train_kwargs())
    mv.pp.setup_counts(lognormalised_adata, layer="counts")
    with unchanged(lognormalised_adata), pytest.raises(mv.InputError, match="would overwrite the counts"):
        mv.tl.myvae(lognormalised_adata, layer_added="counts", **fast_train_kwargs())


def test_layer_added_warns_when_it_replaces_another_layer(small_adata, scanpy_log):
    small_adata.layers["denoised"] = small_adata.X.copy()
    mv.tl.myvae(small_adata, layer_added="denoised", **fast_train_kwargs(max_epochs=1))
    assert "WARNING: Overwriting adata.layers['denoised']" in scanpy_log.readouterr().err
    assert small_adata.layers["denoised"].dtype == np.float32


def test_params_record_the_inputs_through_h5ad(hvg_adata, tmp_path):
    hvg_adata.var["first_half"] = np.arange(hvg_adata.n_vars) < 115
    mv.tl.myvae(hvg_adata, layer="counts", batch_key="sample", mask_var="first_half", **fast_train_kwargs(max_epochs=1))
    hvg_adata.write_h5ad(tmp_path / "result.h5ad")
    reread = ad.read_h5ad(tmp_path / "result.h5ad").uns["myvae"]["params"]
    assert reread["layer"] == "counts" and reread["batch_key"] == "sample" and reread["mask_var"] == "first_half"
    assert reread["n_genes"] == 115
