import numpy as np
import pytest
from helpers import fast_train_kwargs

import myvae as mv
from myvae.model._epoch_means import EpochTotals


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
    assert mv.model.default_learning_rate(128) == pytest.approx(3e-3)
    assert mv.model.default_learning_rate(512) == pytest.approx(1.2e-2)


def _elbo_history(adata, backend: str) -> dict[str, np.ndarray]:
    import scvi

    scvi.settings.seed = 0
    data = adata.copy()
    mv.MyVAE.setup_anndata(data)
    model = mv.MyVAE(data, n_latent=4, backend=backend)
    # 40 training and 40 held-out cells: minibatches of 32 and 8 cells in both stages
    model.train(max_epochs=4, batch_size=32, train_size=0.5, early_stopping=False, progress=False, accelerator="cpu")
    return {key: model.history[key].to_numpy(dtype=float).ravel() for key in ("elbo_train", "elbo_validation")}


def test_both_backends_log_the_same_per_cell_elbo_history(small_adata):
    torch_history = _elbo_history(small_adata, "torch")
    pyro_history = _elbo_history(small_adata, "pyro")
    for key in ("elbo_train", "elbo_validation"):
        assert len(pyro_history[key]) == 4
        np.testing.assert_allclose(pyro_history[key], torch_history[key], rtol=1e-5, err_msg=key)


def test_epoch_totals_weight_each_minibatch_by_its_cells():
    totals = EpochTotals(("reconstruction_loss", "kl_local"))
    totals.add(32, reconstruction_loss=32 * 1.0, kl_local=32 * 0.5)
    totals.add(8, reconstruction_loss=8 * 6.0, kl_local=8 * 1.5)  # a smaller last minibatch
    means = {name: float(value) for name, value in totals.means().items()}
    # per cell: (32 * 1 + 8 * 6) / 40 = 2 (the mean over minibatches would be 3.5)
    assert means == pytest.approx({"reconstruction_loss": 2.0, "kl_local": 0.7, "elbo": 2.7})
    totals.reset()
    assert totals.n_obs == 0 and float(totals.sums["kl_local"]) == 0.0


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_training_on_the_cpu_loads_the_compiled_loops_before_the_first_step(small_adata, monkeypatch, backend):
    """The compiled loops (likelihood, sparse layer) are loaded before training starts, not in its first step."""
    from lightning.pytorch.callbacks import Callback

    from myvae.module import _likelihood, _sparse

    events = []
    monkeypatch.setattr(_likelihood, "load_row_loops", lambda: events.append("loaded"))
    monkeypatch.setattr(_sparse, "load_compiled_grouping", lambda: events.append("grouping loaded"))

    class FirstStep(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            events.append("step")

    kwargs = fast_train_kwargs(max_epochs=1)
    mv.tl.myvae(small_adata, backend=backend, callbacks=[FirstStep()], **kwargs)
    assert events[:3] == ["loaded", "grouping loaded", "step"] and events.count("loaded") == 1
    events.clear()
    monkeypatch.setattr(_likelihood, "_ROW_LOOPS", False)  # without them there is nothing to load
    mv.tl.myvae(small_adata, backend=backend, callbacks=[FirstStep()], **kwargs)
    assert events[0] == "grouping loaded" and "loaded" not in events and "step" in events


def test_loading_the_compiled_loops_compiles_what_training_runs():
    from myvae.module import _likelihood, _row_loops, _sparse

    _likelihood.load_row_loops()
    _sparse.load_compiled_grouping()
    loops = (_row_loops.softmax_rows, _row_loops.count_terms_into_rows, _row_loops.row_gradients)
    for loop in (*loops, _sparse._group_by_feature):
        assert any("float32" in str(signature) for signature in loop.signatures)
    assert _row_loops.per_gene_tables.signatures  # in double precision, whatever the model's
