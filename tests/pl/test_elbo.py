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


@pytest.fixture
def figdir(tmp_path):
    """scanpy's figure settings pointed at an empty folder, restored after the test.

    (``monkeypatch`` cannot restore them: on scanpy 1.11 ``sc.settings`` is a class whose metaclass holds them.)
    """
    import scanpy as sc

    names = ("figdir", "file_format_figs", "plot_suffix", "autosave")
    before = {name: getattr(sc.settings, name) for name in names}
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path / "figures", "png"
    sc.settings.plot_suffix, sc.settings.autosave = "", False
    yield tmp_path / "figures"
    for name, value in before.items():
        setattr(sc.settings, name, value)


@pytest.fixture
def trained(small_adata):
    mv.tl.myvae(small_adata, **fast_train_kwargs(max_epochs=2))
    return small_adata


_MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


@pytest.mark.parametrize(
    ("save", "file_format_figs", "plot_suffix", "written"),
    [
        pytest.param(True, "png", "", "elbo.png", id="True-default-name"),
        pytest.param("_run1.pdf", "png", "", "elbo_run1.pdf", id="suffix-with-extension"),
        pytest.param("_run2", "svg", "", "elbo_run2.svg", id="suffix-takes-file_format_figs"),
        pytest.param(True, "pdf", "_v2", "elbo_v2.pdf", id="plot_suffix"),
    ],
)
def test_elbo_save_writes_scanpys_file_name_into_figdir(trained, figdir, save, file_format_figs, plot_suffix, written):
    import matplotlib.pyplot as plt
    import scanpy as sc

    sc.settings.file_format_figs, sc.settings.plot_suffix = file_format_figs, plot_suffix
    ax = mv.pl.elbo(trained, show=False, save=save)
    assert [path.name for path in figdir.iterdir()] == [written]
    assert (figdir / written).read_bytes().startswith(_MAGIC[written.rsplit(".", 1)[1]])
    # the axes come back for more drawing, their figure closed as scanpy closes a saved one
    assert ax.get_ylabel() == "ELBO per cell"
    assert not plt.fignum_exists(ax.figure.number)


def test_elbo_save_follows_autosave_and_save_false_writes_nothing(trained, figdir):
    import scanpy as sc

    mv.pl.elbo(trained, show=False, save=False)
    assert not figdir.exists()
    sc.settings.autosave = True
    mv.pl.elbo(trained, show=False)
    assert [path.name for path in figdir.iterdir()] == ["elbo.png"]


def test_elbo_saves_then_shows_and_leaves_given_axes_open(trained, figdir, monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    assert mv.pl.elbo(trained, show=True, save="_shown") is None
    assert shown == [True] and (figdir / "elbo_shown.png").is_file()
    figure, ax = plt.subplots()
    assert mv.pl.elbo(trained, ax=ax, show=False, save="_mine.svg") is ax
    assert (figdir / "elbo_mine.svg").is_file() and plt.fignum_exists(figure.number)
    plt.close(figure)


def test_elbo_refuses_a_save_it_cannot_use_before_drawing(trained, figdir):
    import matplotlib.pyplot as plt

    n_figures = len(plt.get_fignums())
    with pytest.raises(mv.InputError, match=r"save=3 is not understood; pass True"):
        mv.pl.elbo(trained, show=False, save=3)
    assert len(plt.get_fignums()) == n_figures and not figdir.exists()
