import numpy as np
import pytest
from helpers import fast_train_kwargs

import myvae as mv


def test_history_holds_scvi_tools_keys_per_epoch(small_adata):
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=3))
    for key in ("elbo_train", "elbo_validation", "reconstruction_loss_validation", "kl_local_validation"):
        assert len(model.history[key]) == 3
    elbo = model.history["elbo_validation"].to_numpy(dtype=float).ravel()
    parts = (
        model.history["reconstruction_loss_validation"].to_numpy(dtype=float).ravel()
        + model.history["kl_local_validation"].to_numpy(dtype=float).ravel()
    )
    np.testing.assert_allclose(elbo, parts, rtol=1e-5)


def test_logged_heldout_elbo_is_the_models_elbo_on_those_cells(small_adata):
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=4))
    import scvi

    scvi.settings.seed = 0
    heldout = model.get_elbo(indices=model.validation_indices)
    logged = -float(model.history["elbo_validation"].to_numpy(dtype=float).ravel()[-1])
    # one random draw of z per cell on 8 cells: agree to a few percent
    assert heldout == pytest.approx(logged, rel=0.05)


def test_default_learning_rate_scales_with_batch_size():
    assert mv.model.default_learning_rate(128) == pytest.approx(1e-3)
    assert mv.model.default_learning_rate(512) == pytest.approx(4e-3)
