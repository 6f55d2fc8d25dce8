import math

import numpy as np
import pytest
import torch
from helpers import fast_train_kwargs
from lightning.pytorch.callbacks import Callback

import myvae as mv
from myvae.model._early_stopping import PlateauStopping


class EveryEpochsWeights(Callback):
    """Copies the module's weights after every scored epoch (a test's record of the training path)."""

    def __init__(self):
        self.states = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.states.append({name: t.detach().clone() for name, t in pl_module.module.state_dict().items()})


def _trained(adata, backend: str = "torch", **train_kwargs) -> tuple[mv.MyVAE, EveryEpochsWeights]:
    import scvi

    scvi.settings.seed = 0
    data = adata.copy()
    mv.MyVAE.setup_anndata(data)
    model = mv.MyVAE(data, n_latent=4, backend=backend)
    weights = EveryEpochsWeights()
    kwargs = fast_train_kwargs(max_epochs=12) | {"callbacks": [weights]} | train_kwargs
    kwargs.pop("max_epochs")
    model.train(max_epochs=12, **kwargs)
    return model, weights


def _same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = module.state_dict()
    return current.keys() == state.keys() and all(torch.equal(current[name], state[name]) for name in state)


def _heldout(model: mv.MyVAE) -> np.ndarray:
    return model.history["elbo_validation"].to_numpy(dtype=float).ravel()


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_early_stopping_hands_back_the_best_epochs_weights(small_adata, backend):
    # large steps: the held-out ELBO peaks within the 12 epochs and gets worse after
    model, weights = _trained(small_adata, backend, lr=0.05, early_stopping_patience=4)
    heldout = _heldout(model)
    best = int(np.argmin(heldout))
    assert best < len(heldout) - 1, "the test needs a run that ends past its best epoch"
    assert model.restored_epoch_ == best + 1
    assert _same_weights(model.module, weights.states[best])
    assert not _same_weights(model.module, weights.states[-1])
    # the model's held-out ELBO is the best epoch's, not the last one's (scored again, up to the draws of z)
    rescored = -model.get_elbo(indices=model.validation_indices)
    assert abs(rescored - heldout[best]) < abs(rescored - heldout[-1])


def test_without_early_stopping_the_last_epochs_weights_stay(small_adata):
    model, weights = _trained(small_adata, lr=0.05, early_stopping=False)
    assert len(weights.states) == 12 and model.restored_epoch_ is None
    assert _same_weights(model.module, weights.states[-1])


def test_the_rule_counts_only_gains_of_the_given_fraction():
    stopping = PlateauStopping(patience=2, min_improvement=0.01)
    decisions = [stopping._evaluate_stopping_criteria(torch.tensor(value))[0] for value in (100.0, 98.0, 97.5, 97.2)]
    assert decisions == [False, False, False, True]  # 97.5 and 97.2 gain less than 1% of 98: a plateau
    assert float(stopping.best_score) == 98.0
    counting_any_gain = PlateauStopping(patience=2, min_improvement=0.0)
    assert not any(counting_any_gain._evaluate_stopping_criteria(torch.tensor(v))[0] for v in (100.0, 98.0, 97.5, 97.2))


def test_a_plateau_stops_training_after_the_patience(small_adata):
    # no epoch gains half of the first epoch's held-out ELBO: it is the best, and 3 epochs later training stops
    model, _ = _trained(small_adata, early_stopping_patience=3, early_stopping_min_improvement=0.5)
    assert len(_heldout(model)) == 4
    settings = model.training_settings_
    assert settings.early_stopping_min_improvement == 0.5 and settings.early_stopping_patience == 3


def test_the_defaults_and_the_record(small_adata):
    import inspect

    defaults = inspect.signature(mv.MyVAE.train).parameters
    assert defaults["early_stopping_min_improvement"].default == mv.model.DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT
    assert defaults["early_stopping_patience"].default == mv.model.DEFAULT_EARLY_STOPPING_PATIENCE
    # a fast, noisy run (no warm-up, a high learning rate) that passes its best epoch well within 12 epochs
    mv.tl.myvae(
        small_adata,
        **fast_train_kwargs(max_epochs=12),
        lr=0.05,
        early_stopping_patience=4,
        plan_kwargs={"lr_warmup_steps": 0},
    )
    record = small_adata.uns["myvae"]
    assert record["params"]["early_stopping_min_improvement"] == mv.model.DEFAULT_EARLY_STOPPING_MIN_IMPROVEMENT
    assert record["params"]["early_stopping_patience"] == 4
    restored = record["metrics"]["restored_epoch"]
    heldout = record["history"]["elbo_validation"]
    assert restored == int(np.argmax(heldout)) + 1 < len(heldout)
    assert record["metrics"]["final_elbo_validation"] == heldout[restored - 1]
    assert record["metrics"]["final_elbo_train"] == record["history"]["elbo_train"][restored - 1]


@pytest.mark.parametrize("value", [-0.01, 1, 1.5, math.nan, math.inf, "0.003", True, None])
def test_an_out_of_range_min_improvement_is_refused_before_training(small_adata, unchanged, value):
    mv.MyVAE.setup_anndata(small_adata)
    model = mv.MyVAE(small_adata)
    with pytest.raises(mv.InputError, match="early_stopping_min_improvement is a fraction .* at least 0 and below 1"):
        model.train(early_stopping_min_improvement=value, **fast_train_kwargs())
    assert not model.is_trained_
    with unchanged(small_adata), pytest.raises(mv.InputError, match="early_stopping_min_improvement"):
        mv.tl.myvae(small_adata, early_stopping_min_improvement=value, **fast_train_kwargs())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"early_stopping_patience": 0}, "early_stopping_patience must be a positive integer"),
        ({"early_stopping": "yes"}, "early_stopping must be True or False"),
        ({"early_stopping_min_delta": 1.0}, "takes no early_stopping_min_delta=: an epoch counts as an improvement"),
        ({"early_stopping_monitor": "elbo_train"}, "takes no early_stopping_monitor=: early stopping always watches"),
    ],
)
def test_other_early_stopping_input_is_refused_before_training(small_adata, unchanged, kwargs, message):
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(small_adata, **kwargs, **fast_train_kwargs())


def test_a_saved_model_keeps_which_epoch_it_was_restored_to(small_adata, tmp_path):
    model, _ = _trained(small_adata, lr=0.05, early_stopping_patience=4)
    assert model.restored_epoch_ is not None
    model.save(tmp_path / "stopped", save_anndata=False)
    loaded = mv.MyVAE.load(tmp_path / "stopped", adata=model.adata, accelerator="cpu")
    assert loaded.restored_epoch_ == model.restored_epoch_
    # a file written before myvae saved it (no such entry) loads with None, as does a model trained without stopping
    path = tmp_path / "stopped" / "model.pt"
    payload = torch.load(path, weights_only=True)
    del payload["restored_epoch"]
    torch.save(payload, path)
    assert mv.MyVAE.load(tmp_path / "stopped", adata=model.adata, accelerator="cpu").restored_epoch_ is None
    unstopped, _ = _trained(small_adata, early_stopping=False)
    unstopped.save(tmp_path / "unstopped", save_anndata=False)
    assert mv.MyVAE.load(tmp_path / "unstopped", adata=unstopped.adata, accelerator="cpu").restored_epoch_ is None
