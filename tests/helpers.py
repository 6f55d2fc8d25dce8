"""Helpers shared by the tests."""

import numpy as np


def fast_train_kwargs(**overrides):
    """Arguments that make tl.myvae train in about a second on the small data."""
    return {"max_epochs": 8, "batch_size": 32, "progress": False, "accelerator": "cpu", **overrides}


def assert_finite(array) -> None:
    assert np.isfinite(np.asarray(array)).all()
