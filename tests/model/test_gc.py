import gc

from helpers import fast_train_kwargs
from lightning.pytorch.callbacks import Callback

import myvae as mv
from myvae.model._gc import objects_frozen_while_training


class _FreezeCount(Callback):
    """Records how many objects the garbage collector holds frozen at each training step."""

    def __init__(self):
        self.counts = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counts.append(gc.get_freeze_count())


def test_training_freezes_the_sessions_objects_and_unfreezes_them_after(small_adata):
    assert gc.get_freeze_count() == 0
    frozen = _FreezeCount()
    mv.tl.myvae(small_adata, callbacks=[frozen], **fast_train_kwargs(max_epochs=2))
    assert frozen.counts and min(frozen.counts) > 0
    assert gc.get_freeze_count() == 0


def test_objects_the_process_froze_itself_stay_frozen():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with objects_frozen_while_training() as froze:
            assert not froze
        assert gc.get_freeze_count() == before
    finally:
        gc.unfreeze()


def test_an_error_in_training_unfreezes_the_objects_too():
    try:
        with objects_frozen_while_training() as froze:
            assert froze and gc.get_freeze_count() > 0
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert gc.get_freeze_count() == 0
