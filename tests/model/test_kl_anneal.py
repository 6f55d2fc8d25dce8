import numpy as np
import pytest
from helpers import fast_train_kwargs
from lightning.pytorch.callbacks import Callback

import myvae as mv
from myvae.model._kl_anneal import KL_ANNEAL_STEPS, KL_WEIGHT_START, annealed_kl_weight, resolve_kl_anneal_steps


def test_the_weight_falls_linearly_from_its_start_to_one():
    weights = [annealed_kl_weight(step, 5.0, 4) for step in range(7)]
    assert weights == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0])
    assert annealed_kl_weight(0, 5.0, 0) == 1.0  # no annealing


def test_the_default_anneals_unless_scvi_tools_warm_up_is_asked_for():
    assert resolve_kl_anneal_steps(None, KL_WEIGHT_START, scvi_warmup=False) == KL_ANNEAL_STEPS
    assert resolve_kl_anneal_steps(None, KL_WEIGHT_START, scvi_warmup=True) == 0
    assert resolve_kl_anneal_steps(0, KL_WEIGHT_START, scvi_warmup=True) == 0
    assert resolve_kl_anneal_steps(np.int64(7), 2, scvi_warmup=False) == 7


class _KLWeights(Callback):
    """The KL weight each training step used."""

    def __init__(self):
        self.weights = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights.append(float(pl_module.kl_weight))


def _weights(adata, backend: str, plan_kwargs: dict) -> list[float]:
    recorder = _KLWeights()
    # 72 training cells at 32 per batch: 3 steps per epoch, 9 in all
    mv.tl.myvae(
        adata,
        backend=backend,
        train_size=0.9,
        plan_kwargs=plan_kwargs,
        callbacks=[recorder],
        **fast_train_kwargs(max_epochs=3, early_stopping=False),
    )
    return recorder.weights


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_both_plans_anneal_the_kl_weight_over_their_first_steps(small_adata, backend):
    weights = _weights(small_adata, backend, {"kl_anneal_steps": 4, "kl_weight_start": 5.0})
    np.testing.assert_allclose(weights, [5.0, 4.0, 3.0, 2.0] + [1.0] * 5)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_scvi_tools_warm_up_replaces_the_annealing(small_adata, backend):
    weights = _weights(small_adata, backend, {"n_steps_kl_warmup": 4})
    np.testing.assert_allclose(weights[:4], np.array([0.0, 1.0, 2.0, 3.0]) / 4, atol=1e-6)
    np.testing.assert_allclose(weights[4:], 1.0)


def test_the_defaults_start_at_twenty_and_anneal_over_three_hundred_steps(small_adata):
    assert (KL_WEIGHT_START, KL_ANNEAL_STEPS) == (20.0, 300)
    # 9 steps: all within the annealing
    weights = _weights(small_adata, "torch", {})
    np.testing.assert_allclose(weights, [annealed_kl_weight(step, 20.0, 300) for step in range(9)])


@pytest.mark.parametrize(
    ("plan_kwargs", "message"),
    [
        ({"kl_anneal_steps": -1}, r"kl_anneal_steps must be an integer of at least 0 \(optimiser steps"),
        ({"kl_anneal_steps": 2.5}, "kl_anneal_steps must be an integer"),
        ({"kl_weight_start": 0.0}, "kl_weight_start must be a finite number greater than 0"),
        ({"kl_weight_start": float("inf")}, "kl_weight_start must be a finite number greater than 0"),
        ({"n_epochs_kl_warmup": 10, "kl_anneal_steps": 100}, "pass kl_anneal_steps=0 with the warm-up"),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_tl_myvae_refuses_a_bad_annealing_and_leaves_the_data_as_it_was(
    small_adata, unchanged, backend, plan_kwargs, message
):
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(small_adata, backend=backend, plan_kwargs=plan_kwargs, **fast_train_kwargs())


class _GuideWithoutKL(mv.module.PyroVAEModule):
    """A Pyro module of one's own whose guide does not keep its KL term."""

    def _guide(self, x, library, batch_index=None, kl_weight=1.0):
        super()._guide(x, library, batch_index, kl_weight)
        self.unweighted_kl_sum = None


def test_a_pyro_module_whose_guide_keeps_no_kl_term_logs_the_weighted_loss(small_adata, monkeypatch):
    monkeypatch.setitem(mv.model.BACKENDS, "pyro-without-kl", _GuideWithoutKL)
    plan_kwargs = {"kl_anneal_steps": 100, "kl_weight_start": 50.0}
    histories = {}
    for backend in ("pyro", "pyro-without-kl"):
        model = mv.tl.myvae(
            small_adata, backend=backend, plan_kwargs=plan_kwargs, return_model=True, **fast_train_kwargs(max_epochs=2)
        )
        histories[backend] = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    # the same training; the weighted loss counts the KL term up to 50 times
    assert np.isfinite(histories["pyro-without-kl"]).all()
    assert (histories["pyro-without-kl"] > histories["pyro"]).all()
