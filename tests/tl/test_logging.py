"""Messages follow scanpy's verbosity; Lightning's and scvi-tools' chatter never reaches the user."""

import warnings
from pathlib import Path

import lightning
import mudata as md
import numpy as np
import pytest
import scanpy as sc
import scvi
from helpers import fast_train_kwargs

import myvae as mv


@pytest.fixture
def verbosity(scanpy_log):
    """Set sc.settings.verbosity for the test (scanpy_log puts it back)."""
    return lambda level: setattr(sc.settings, "verbosity", level)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_at_verbosity_0_without_progress_a_call_prints_nothing(small_adata, scanpy_log, verbosity, backend):
    verbosity(0)
    small_adata.obsm["X_myvae"] = np.zeros((small_adata.n_obs, 2), dtype=np.float32)  # an overwrite warning too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mv.tl.myvae(small_adata, backend=backend, return_model=True, **fast_train_kwargs(max_epochs=2))
        mv.tl.myvae(small_adata[:20].copy(), model=model, layer_added="denoised")
    captured = scanpy_log.readouterr()
    assert captured.out == "" and captured.err == ""
    # warnings of myvae, scvi-tools or Lightning (other packages' deprecation notices are theirs to fix)
    sources = [str(Path(package.__file__).parent) for package in (mv, scvi, lightning)]
    assert [str(w.message) for w in caught if w.filename.startswith(tuple(sources))] == []


def test_at_info_level_the_call_says_what_it_added_and_how_long_it_took(small_adata, scanpy_log, verbosity):
    verbosity(2)
    mv.tl.myvae(small_adata, layer_added="denoised", **fast_train_kwargs(max_epochs=1))
    err = scanpy_log.readouterr().err
    assert err.startswith("computing myvae\n")
    assert "    finished (0:00:" in err and "): added 'X_myvae' (obsm), 'denoised' (layers), 'myvae' (uns)" in err
    assert "posterior mean" not in err  # the details are for hint level
    verbosity(3)
    mv.tl.myvae(small_adata, layer_added="denoised", **fast_train_kwargs(max_epochs=1))
    err = scanpy_log.readouterr().err
    assert "'X_myvae', the posterior mean of the latent code (obsm)" in err
    assert "'myvae', params, history, metrics (uns)" in err


def test_early_stopping_speaks_only_at_info_level(small_adata, scanpy_log, verbosity):
    stopping_early = fast_train_kwargs(max_epochs=20) | {"early_stopping_patience": 1}
    verbosity(1)
    mv.tl.myvae(small_adata, lr=0.1, **stopping_early)  # large steps: the held-out ELBO soon stops improving
    captured = scanpy_log.readouterr()
    assert small_adata.uns["myvae"]["params"]["epochs_trained"] < 20
    assert captured.out == "" and captured.err == ""
    verbosity(2)
    mv.tl.myvae(small_adata, lr=0.1, **stopping_early)
    err = scanpy_log.readouterr().err
    assert "stopped after epoch" in err and "did not beat its best" in err and "in 1 epochs" in err
    assert err.index("stopped after epoch") < err.index("kept the weights of epoch")


def test_the_default_verbosity_shows_warnings_only(small_adata, scanpy_log, verbosity):
    verbosity(1)
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=1))
    assert scanpy_log.readouterr().err == ""
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=1))
    err = scanpy_log.readouterr().err
    assert "WARNING: Overwriting adata.obsm['X_myvae']" in err and "computing" not in err


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_a_diverging_run_prints_only_its_own_error(small_adata, scanpy_log, verbosity, backend):
    verbosity(0)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(mv.TrainingDivergedError):
        warnings.simplefilter("always")
        mv.tl.myvae(small_adata, backend=backend, **fast_train_kwargs(max_epochs=5, lr=1e4))
    assert [str(w.message) for w in caught if "NaN" in str(w.message)] == []
    captured = scanpy_log.readouterr()
    assert "Exception raised during training" not in captured.out + captured.err
    assert captured.out == "" and captured.err == ""


def test_overwriting_the_mudatas_obsm_warns(small_adata, scanpy_log, verbosity):
    verbosity(1)
    mdata = md.MuData({"rna": small_adata})
    mdata.obsm["X_myvae"] = np.zeros((mdata.n_obs, 2))
    mv.tl.myvae(mdata, mod="rna", **fast_train_kwargs(max_epochs=1))
    err = scanpy_log.readouterr().err
    assert "WARNING: Overwriting mdata.obsm['X_myvae']" in err
    assert "adata.obsm['X_myvae']" not in err.replace("mdata.obsm", "")
