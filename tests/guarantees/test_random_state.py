"""A call leaves the caller's random state as it was, and its results depend only on its random_state."""

import random

import numpy as np
import pytest
import scvi
import torch
from helpers import fast_train_kwargs

import myvae as mv


def _draws() -> tuple:
    return np.random.rand(), random.random(), torch.rand(1).item()


@pytest.mark.parametrize("backend", ["torch", "pyro"])
def test_the_callers_random_state_is_left_as_it_was(small_adata, backend):
    scvi.settings.seed = 11
    np.random.seed(123), random.seed(123), torch.manual_seed(123)
    expected = _draws()
    np.random.seed(123), random.seed(123), torch.manual_seed(123)
    cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    mv.tl.myvae(small_adata, backend=backend, random_state=5, **fast_train_kwargs(max_epochs=1))
    mv.tl.myvae(small_adata[:30].copy(), model=small_adata, layer_added="denoised")

    assert _draws() == expected
    assert scvi.settings.seed == 11
    if cuda_before is not None:
        assert all(torch.equal(a, b) for a, b in zip(cuda_before, torch.cuda.get_rng_state_all(), strict=True))


def test_results_depend_only_on_random_state(small_adata):
    np.random.seed(1), torch.manual_seed(1)
    first = mv.tl.myvae(small_adata, random_state=3, copy=True, layer_added="d", **fast_train_kwargs(max_epochs=2))
    np.random.seed(2), torch.manual_seed(2), random.seed(2)
    second = mv.tl.myvae(small_adata, random_state=3, copy=True, layer_added="d", **fast_train_kwargs(max_epochs=2))
    np.testing.assert_array_equal(first.obsm["X_myvae"], second.obsm["X_myvae"])
    np.testing.assert_array_equal(first.layers["d"], second.layers["d"])


def test_random_state_takes_a_generator_or_none_as_scanpy_does(small_adata):
    runs = [
        mv.tl.myvae(small_adata, random_state=state, copy=True, **fast_train_kwargs(max_epochs=2))
        for state in (np.random.default_rng(0), np.random.default_rng(0), np.random.RandomState(0), None)
    ]
    np.testing.assert_array_equal(runs[0].obsm["X_myvae"], runs[1].obsm["X_myvae"])
    # the seed drawn is recorded, and reproduces the run
    for run in runs[2:]:
        seed = run.uns["myvae"]["params"]["random_state"]
        assert isinstance(seed, int)
        again = mv.tl.myvae(small_adata, random_state=seed, copy=True, **fast_train_kwargs(max_epochs=2))
        np.testing.assert_array_equal(run.obsm["X_myvae"], again.obsm["X_myvae"])


@pytest.mark.parametrize(
    ("random_state", "message"),
    [(-1, "between 0 and"), (2**32, "between 0 and"), ("0", "must be None, an integer"), (True, "must be None")],
)
def test_a_bad_random_state_is_refused_before_work(small_adata, unchanged, random_state, message):
    with unchanged(small_adata), pytest.raises(mv.InputError, match=message):
        mv.tl.myvae(small_adata, random_state=random_state, **fast_train_kwargs())
