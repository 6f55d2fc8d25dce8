import mudata as md
import numpy as np
import pytest
import scanpy as sc
from helpers import assert_finite, fast_train_kwargs

import myvae as mv


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_trains_and_writes_results(small_adata, backend):
    mv.pp.setup_counts(small_adata)
    returned = mv.tl.myvae(small_adata, backend=backend, **fast_train_kwargs(max_epochs=15))
    assert returned is None

    embedding = small_adata.obsm["X_myvae"]
    assert embedding.shape == (80, 10) and embedding.dtype == np.float32
    assert_finite(embedding)
    assert embedding.std(axis=0).max() > 0.05

    params = small_adata.uns["myvae"]["params"]
    assert params["backend"] == backend
    assert params["n_latent"] == 10 and params["max_epochs"] == 15 and params["epochs_trained"] == 15
    assert params["counts"] == "adata.X"
    assert params["early_stopping"] is True and params["train_size"] == 0.9 and params["lr"] == 3e-3 * 32 / 128
    assert params["versions"]["myvae"] == mv.__version__

    history = small_adata.uns["myvae"]["history"]
    for key in ("elbo_train", "elbo_validation"):
        assert len(history[key]) == 15
        assert_finite(history[key])
        assert np.all(history[key] < 0)
        assert np.mean(history[key][-3:]) > history[key][0]


def test_trains_on_the_recorded_layer(lognormalised_adata):
    mv.pp.setup_counts(lognormalised_adata, layer="counts")
    mv.tl.myvae(lognormalised_adata, **fast_train_kwargs(max_epochs=2))
    assert lognormalised_adata.uns["myvae"]["params"]["counts"] == "adata.layers['counts']"


def test_sets_up_with_defaults_when_not_set_up(small_adata):
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=2))
    assert "X_myvae" in small_adata.obsm
    assert dict(small_adata.uns["myvae_setup"]) == {}


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_same_random_state_gives_the_same_embedding(small_adata, backend):
    first = mv.tl.myvae(small_adata, backend=backend, random_state=3, copy=True, **fast_train_kwargs(max_epochs=3))
    second = mv.tl.myvae(small_adata, backend=backend, random_state=3, copy=True, **fast_train_kwargs(max_epochs=3))
    other = mv.tl.myvae(small_adata, backend=backend, random_state=4, copy=True, **fast_train_kwargs(max_epochs=3))
    np.testing.assert_array_equal(first.obsm["X_myvae"], second.obsm["X_myvae"])
    assert not np.allclose(first.obsm["X_myvae"], other.obsm["X_myvae"])


def test_copy_leaves_the_input_untouched(small_adata, unchanged):
    with unchanged(small_adata):
        result = mv.tl.myvae(small_adata, copy=True, **fast_train_kwargs(max_epochs=2))
    assert result is not small_adata
    assert "X_myvae" in result.obsm and "myvae" in result.uns


def test_return_model_and_key_added(small_adata):
    model = mv.tl.myvae(small_adata, key_added="vae2", return_model=True, **fast_train_kwargs(max_epochs=2))
    assert isinstance(model, mv.MyVAE)
    assert "X_vae2" in small_adata.obsm and "vae2" in small_adata.uns and "X_myvae" not in small_adata.obsm
    np.testing.assert_allclose(model.get_latent_representation(), small_adata.obsm["X_vae2"], rtol=1e-5)
    result, model = mv.tl.myvae(small_adata, copy=True, return_model=True, **fast_train_kwargs(max_epochs=2))
    assert isinstance(model, mv.MyVAE) and "X_myvae" in result.obsm


def test_overwriting_an_embedding_logs_a_warning(small_adata, scanpy_log):
    small_adata.obsm["X_myvae"] = np.zeros((small_adata.n_obs, 10), dtype=np.float32)
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=2))
    assert "WARNING: Overwriting adata.obsm['X_myvae']" in scanpy_log.readouterr().err


def test_scanpy_workflow_runs_on_the_result(small_adata, tmp_path):
    mv.pp.setup_counts(small_adata)
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=5))
    sc.pp.neighbors(small_adata, use_rep="X_myvae", n_neighbors=10)
    sc.tl.umap(small_adata)
    sc.tl.leiden(small_adata, flavor="igraph", n_iterations=2)
    # the graph is that of the embedding: every cell is linked to its nearest cell in X_myvae
    embedding = small_adata.obsm["X_myvae"]
    distances = np.linalg.norm(embedding[:, None] - embedding[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    connectivities = small_adata.obsp["connectivities"]
    assert all(connectivities[cell, nearest] > 0 for cell, nearest in enumerate(distances.argmin(axis=1)))
    assert small_adata.obsm["X_umap"].shape == (80, 2)
    assert_finite(small_adata.obsm["X_umap"])
    # the cells of PBMC types fall into several clusters, each cell into one
    assert small_adata.obs["leiden"].notna().all() and small_adata.obs["leiden"].nunique() >= 2
    small_adata.write_h5ad(tmp_path / "result.h5ad")
    reread = sc.read_h5ad(tmp_path / "result.h5ad")
    np.testing.assert_array_equal(reread.obsm["X_myvae"], small_adata.obsm["X_myvae"])
    assert reread.uns["myvae"]["params"]["backend"] == "torch"


def test_unknown_backend_lists_the_choices(small_adata, unchanged):
    with unchanged(small_adata), pytest.raises(ValueError, match=r"Unknown backend 'jax'.*'torch', 'pyro'"):
        mv.tl.myvae(small_adata, backend="jax")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_size": 1.5}, "train_size must be a fraction of the cells"),
        ({"train_size": 1.0}, "leaves none of the 80 cells out to score the model"),
        ({"gene_likelihood": "nb"}, "takes no gene_likelihood=: myvae is the simple scVI model"),
        ({"shuffle_set_split": False}, "takes no shuffle_set_split="),
    ],
)
def test_training_options_out_of_range_are_refused_before_any_work(small_adata, unchanged, kwargs, message):
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(small_adata, progress=False, **kwargs)


def test_too_few_cells(small_adata):
    tiny = small_adata[:5].copy()
    with pytest.raises(mv.InputError, match=r"5 cells; training needs at least 10"):
        mv.tl.myvae(tiny)
    assert "myvae" not in tiny.uns


def test_lognormalised_x_without_setup(lognormalised_adata, unchanged):
    with unchanged(lognormalised_adata), pytest.raises(mv.InputError, match=r"adata.X holds non-integer values"):
        mv.tl.myvae(lognormalised_adata, **fast_train_kwargs())


def test_data_changed_after_setup_is_checked_again(small_adata, unchanged):
    mv.pp.setup_counts(small_adata)
    small_adata.X = small_adata.X * 0.5
    with unchanged(small_adata), pytest.raises(mv.InputError, match="non-integer"):
        mv.tl.myvae(small_adata, **fast_train_kwargs())


def test_recorded_layer_that_disappeared(small_adata, unchanged):
    small_adata.layers["counts"] = small_adata.X.copy()
    mv.pp.setup_counts(small_adata, layer="counts")
    del small_adata.layers["counts"]
    with unchanged(small_adata), pytest.raises(mv.InputError, match="Layer 'counts' does not exist"):
        mv.tl.myvae(small_adata, **fast_train_kwargs())


def test_mudata_without_mod_lists_the_modalities(small_adata):
    with pytest.raises(mv.InputError, match=r"got a MuData; pass mod=.*\(modalities: 'rna'\)"):
        mv.tl.myvae(md.MuData({"rna": small_adata}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_latent": 0}, "n_latent must be a positive integer"),
        ({"n_hidden": 2.5}, "n_hidden must be a positive integer"),
        ({"max_epochs": -1}, "max_epochs must be a positive integer or None"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a finite number greater than 0"),
        ({"key_added": ""}, "key_added must be a non-empty string"),
        ({"layer_added": "a/b"}, "layer_added must be a non-empty string without '/'"),
        ({"library_size": 0}, "library_size must be a finite number greater than 0"),
        ({"mod": "rna"}, "mod='rna' applies to a MuData, but myvae got an AnnData"),
    ],
)
def test_bad_arguments(small_adata, unchanged, kwargs, message):
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(small_adata, **kwargs)


def test_fit_metrics_are_recorded(small_adata, tmp_path):
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=3))
    metrics = small_adata.uns["myvae"]["metrics"]
    kept = metrics["restored_epoch"] - 1  # early stopping keeps the best epoch's weights, and its figures
    assert metrics["final_elbo_validation"] == small_adata.uns["myvae"]["history"]["elbo_validation"][kept]
    assert metrics["final_elbo_train"] == small_adata.uns["myvae"]["history"]["elbo_train"][kept]
    # the held-out ELBO is minus the reconstruction term minus the KL term (never negative), so it lies below minus
    # the reconstruction error of the same epoch
    logged_reconstruction = float(model.history["reconstruction_loss_validation"].to_numpy(dtype=float).ravel()[kept])
    assert 0 < logged_reconstruction <= -metrics["final_elbo_validation"]
    # the recorded reconstruction error is that of the kept epoch's held-out pass, whose weights the model has: the
    # model gives the same on those cells (up to another draw of z)
    assert metrics["reconstruction_error_validation"] == logged_reconstruction
    validation = np.sort(model.validation_indices)
    again = model.get_reconstruction_error(indices=validation)["reconstruction_loss"]
    assert again == pytest.approx(logged_reconstruction, rel=0.05)
    model.save(tmp_path / "model")
    reused = small_adata.copy()
    mv.tl.myvae(reused, model=tmp_path / "model", progress=False)
    assert set(reused.uns["myvae"]["metrics"]) == {"elbo", "reconstruction_error"}


def test_pyro_fit_metrics_score_the_held_out_cells_with_the_returned_model(small_adata):
    """The Pyro backend logs the held-out ELBO alone: the reconstruction error comes from one more pass."""
    model = mv.tl.myvae(small_adata, backend="pyro", return_model=True, **fast_train_kwargs(max_epochs=3))
    assert "reconstruction_loss_validation" not in model.history
    recorded = small_adata.uns["myvae"]["metrics"]["reconstruction_error_validation"]
    validation = np.sort(model.validation_indices)
    again = model.get_reconstruction_error(indices=validation)["reconstruction_loss"]
    assert 0 < recorded == pytest.approx(again, rel=0.05)


def test_layer_added_is_normalised_expression(small_adata):
    mv.tl.myvae(small_adata, layer_added="denoised", library_size=5000.0, **fast_train_kwargs(max_epochs=3))
    denoised = small_adata.layers["denoised"]
    assert denoised.shape == small_adata.shape and denoised.dtype == np.float32
    assert (denoised >= 0).all()
    np.testing.assert_allclose(denoised.sum(axis=1), 5000.0, rtol=1e-4)
    outputs = small_adata.uns["myvae"]["params"]["outputs"]
    assert outputs["layers"] == "denoised" and outputs["library_size"] == 5000.0


def test_only_what_was_asked_for_is_written(small_adata):
    layers = list(small_adata.layers)  # anndata >= 0.13 lists X here, as the layer None
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=2))
    assert list(small_adata.layers) == layers
    assert dict(small_adata.uns["myvae"]["params"]["outputs"]) == {"obsm": "X_myvae"}
