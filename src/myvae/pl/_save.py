"""Saving and showing a figure the way scanpy's plotting functions do (``save=`` into ``sc.settings.figdir``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from myvae._exceptions import InputError

__all__ = ["check_save", "figure_path", "save_or_show"]


def check_save(save: object) -> None:
    """Raise :class:`~myvae.InputError` unless ``save`` is ``None``, a bool or a file name suffix."""
    if save is not None and not isinstance(save, bool | str):
        raise InputError(
            f"save={save!r} is not understood; pass True (default file name), a suffix such as '_run1.pdf', or False."
        )


def figure_path(name: str, save: bool | str, formats: set[str]) -> Path:
    """Where scanpy would save the figure of the plotting function ``name`` for this ``save=``.

    ``True`` gives ``<figdir>/<name><plot_suffix>.<file_format_figs>`` (:data:`scanpy.settings`); a string is
    appended to ``name``, and its extension, when it is one of ``formats``, replaces ``file_format_figs``.
    """
    import scanpy as sc

    extension = sc.settings.file_format_figs
    if isinstance(save, str):
        stem, dot, suffix = save.rpartition(".")
        if dot and suffix.lower() in formats:
            save, extension = stem, suffix
        name += save
    return Path(sc.settings.figdir) / f"{name}{sc.settings.plot_suffix}.{extension}"


def save_or_show(name: str, ax: Axes, *, show: bool | None, save: bool | str | None, own_figure: bool) -> Axes | None:
    """Save the figure holding ``ax`` as scanpy does, then show it; the axes unless shown.

    ``save=None`` follows :attr:`scanpy.settings.autosave`, ``show=None`` :attr:`scanpy.settings.autoshow`. A figure
    the plotting function created (``own_figure``) is closed once saved, as in scanpy; axes the caller passed are
    left open.
    """
    import scanpy as sc

    save = sc.settings.autosave if save is None else save
    saving = isinstance(save, str) or save  # any string, even an empty suffix, saves
    show = sc.settings.autoshow if show is None else show
    figure = ax.figure
    if saving:
        path = figure_path(name, save, set(figure.canvas.get_supported_filetypes()))
        path.parent.mkdir(parents=True, exist_ok=True)
        sc.logging.info(f"saving figure to file {path}")
        figure.savefig(path, bbox_inches="tight")
    if show:
        plt.show()
    if saving and own_figure:
        plt.close(figure)
    return None if show else ax
