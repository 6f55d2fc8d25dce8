import matplotlib

matplotlib.use("Agg")

import pytest
from helpers import fast_train_kwargs

import myvae as mv


def test_elbo_plots_training_and_heldout_curves(small_adata):
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=4))
    ax = mv.pl.elbo(small_adata, show=False)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["training cells", "held-out cells"]
    assert all(len(line.get_xdata()) == 4 for line in lines)
    assert ax.get_ylabel() == "ELBO per cell"


def test_elbo_draws_into_given_axes_and_shows(small_adata, monkeypatch):
    import matplotlib.pyplot as plt

    mv.tl.myvae(small_adata, key_added="run", **fast_train_kwargs(max_epochs=2))
    _, ax = plt.subplots()
    assert mv.pl.elbo(small_adata, "run", ax=ax, show=False) is ax
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    assert mv.pl.elbo(small_adata, "run", show=True) is None
    assert shown == [True]


def test_elbo_without_a_run_says_what_to_do(small_adata):
    with pytest.raises(mv.InputError, match=r"no myvae training history.*mv.tl.myvae"):
        mv.pl.elbo(small_adata)
