import signal

import numpy as np
import pytest
from helpers import fast_train_kwargs
from lightning.pytorch.callbacks import Callback

import myvae as mv
from myvae import TrainingDivergedError


class _RaiseAtEpoch(Callback):
    """Raise ``error`` when the given epoch starts, as a Ctrl+C or a crash in the middle of training would."""

    def __init__(self, error: BaseException, epoch: int = 1):
        self.error, self.epoch = error, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise self.error


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_divergence_is_a_clear_error_and_leaves_the_data_untouched(small_adata, unchanged, backend):
    mv.pp.setup_counts(small_adata)
    with unchanged(small_adata), pytest.raises(TrainingDivergedError, match=r"lower the learning rate \(lr=10000"):
        mv.tl.myvae(small_adata, backend=backend, **fast_train_kwargs(max_epochs=5, lr=1e4))


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_ctrl_c_during_training_leaves_the_data_untouched_and_ctrl_c_working(small_adata, unchanged, backend):
    mv.pp.setup_counts(small_adata)
    handler = signal.getsignal(signal.SIGINT)
    with unchanged(small_adata), pytest.raises(KeyboardInterrupt, match="nothing was written"):
        mv.tl.myvae(
            small_adata,
            backend=backend,
            callbacks=[_RaiseAtEpoch(KeyboardInterrupt())],
            **fast_train_kwargs(max_epochs=4),
        )
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning had set it to SIG_IGN


def test_an_error_during_training_leaves_the_data_untouched(small_adata, unchanged):
    mv.pp.setup_counts(small_adata)
    small_adata.obsm["X_myvae"] = np.zeros((small_adata.n_obs, 2), dtype=np.float32)  # an earlier result stays
    with unchanged(small_adata), pytest.raises(RuntimeError, match="disk full"):
        mv.tl.myvae(
            small_adata, callbacks=[_RaiseAtEpoch(RuntimeError("disk full"))], **fast_train_kwargs(max_epochs=4)
        )


def test_a_model_with_non_finite_weights_writes_no_nan_embedding(small_adata, unchanged):
    mv.pp.setup_counts(small_adata)
    model = mv.tl.myvae(small_adata, return_model=True, **fast_train_kwargs(max_epochs=2))
    del small_adata.obsm["X_myvae"], small_adata.uns["myvae"]
    model.module.networks.z_mean_encoder[2].bias.data.fill_(float("nan"))
    with unchanged(small_adata), pytest.raises(TrainingDivergedError, match="non-finite embedding"):
        mv.tl.myvae(small_adata, model=model, progress=False)
