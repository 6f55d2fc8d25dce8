"""The learning rate's warm-up: its schedule in both backends, and the encoder it keeps alive."""

import numpy as np
import pytest
import torch
from helpers import fast_train_kwargs
from lightning.pytorch.callbacks import Callback

import myvae as mv
from myvae.model import JointAdam
from myvae.model._lr_warmup import check_warmup_steps, warm_up_learning_rate


def test_the_learning_rate_rises_linearly_then_is_left_alone():
    groups = [{"lr": 0.0}, {"lr": 0.0}]
    seen = []
    for step in range(4):
        warm_up_learning_rate(groups, [0.3, 0.6], step, warmup_steps=3)
        seen.append([group["lr"] for group in groups])
    np.testing.assert_allclose(seen[:3], [[0.1, 0.2], [0.2, 0.4], [0.3, 0.6]])
    groups[0]["lr"] = 0.05  # a schedule of the user's, after the warm-up: not overwritten
    warm_up_learning_rate(groups, [0.3, 0.6], 5, warmup_steps=3)
    assert groups[0]["lr"] == 0.05
    warm_up_learning_rate(groups, [0.3, 0.6], 0, warmup_steps=0)  # no warm-up
    assert groups[0]["lr"] == 0.05


@pytest.mark.parametrize("steps", [-1, 2.5, True, "100", None])
def test_a_warmup_that_is_not_a_whole_number_of_steps_is_refused(steps):
    with pytest.raises(mv.InputError, match=r"lr_warmup_steps must be an integer of at least 0 \(optimiser steps"):
        check_warmup_steps(steps)


@pytest.mark.parametrize("steps", [0, 3, np.int64(3)])
def test_a_whole_number_of_steps_is_taken(steps):
    check_warmup_steps(steps)


def test_the_plans_refuse_a_bad_warmup_before_training(small_adata):
    module = mv.module.TorchVAEModule(small_adata.n_vars)
    with pytest.raises(mv.InputError, match="lr_warmup_steps"):
        mv.model.LeanTrainingPlan(module, lr_warmup_steps=-5)
    with pytest.raises(mv.InputError, match="lr_warmup_steps"):
        mv.model.ValidatedPyroTrainingPlan(mv.module.PyroVAEModule(small_adata.n_vars), lr_warmup_steps=1.5)


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_tl_myvae_refuses_a_bad_warmup_and_leaves_the_data_as_it_was(small_adata, unchanged, backend):
    with unchanged(small_adata), pytest.raises(mv.InputError, match="lr_warmup_steps must be an integer of at least 0"):
        mv.tl.myvae(small_adata, backend=backend, plan_kwargs={"lr_warmup_steps": -1}, **fast_train_kwargs())


class _LearningRates(Callback):
    """The learning rate each training step of the PyTorch plan used."""

    def __init__(self):
        self.rates = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_torch_plan_warms_up_over_its_first_steps(small_adata):
    recorder = _LearningRates()
    # 72 training cells at 32 per batch: 3 steps per epoch, 9 in all
    mv.tl.myvae(
        small_adata,
        lr=0.03,
        train_size=0.9,
        plan_kwargs={"lr_warmup_steps": 4},
        callbacks=[recorder],
        **fast_train_kwargs(max_epochs=3, early_stopping=False),
    )
    np.testing.assert_allclose(recorder.rates, [0.0075, 0.015, 0.0225] + [0.03] * 6)


def test_joint_adam_warms_up_over_its_first_steps():
    weight = torch.nn.Parameter(torch.ones(3))
    optimiser = JointAdam({"lr": 0.2}, warmup_steps=2)
    rates = []
    for _ in range(4):
        weight.grad = torch.ones(3)  # released by each step
        optimiser([weight])
        rates.append(optimiser._optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(rates, [0.1, 0.2, 0.2, 0.2])


def test_the_default_call_keeps_every_cell_distinct_and_every_latent_dimension_active():
    """Without the warm-up, the default learning rate killed nearly all of the mean encoder's ReLU units.

    On PBMC 3k 125 of its 128 units died in the first epochs, 241 cells had none active left, so they all got one and
    the same embedding, and the embedding had rank 3 of 10 (with the KL annealing of today's defaults and no warm-up,
    26 distinct embeddings and none of the 10 dimensions active).
    """
    import scanpy as sc

    adata = mv.datasets.pbmc3k()
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", subset=True)
    mv.tl.myvae(adata, progress=False, accelerator="cpu")
    embedding = adata.obsm["X_myvae"]
    assert len(np.unique(embedding, axis=0)) == adata.n_obs
    # active units (Burda et al. 2016): the posterior mean of each dimension varies across cells by more than 0.01
    assert embedding.var(axis=0).min() > 0.01
    singular_values = np.linalg.svd(embedding - embedding.mean(axis=0), compute_uv=False)
    assert singular_values[-1] > 0.01 * singular_values[0]  # full rank
