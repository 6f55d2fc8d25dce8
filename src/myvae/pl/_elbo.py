"""``pl.elbo``: training curves of a :func:`myvae.tl.myvae` run."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
from anndata import AnnData
from matplotlib.axes import Axes
from mudata import MuData

from myvae._data import resolve_data
from myvae._exceptions import InputError

from ._save import check_save, save_or_show

__all__ = ["elbo"]

_CURVES = {"elbo_train": "training cells", "elbo_validation": "held-out cells"}


def elbo(
    adata: AnnData | MuData,
    key: str = "myvae",
    *,
    mod: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | None = None,
) -> Axes | None:
    """Plot the ELBO per cell at each epoch, on the training and on the held-out cells.

    A held-out curve that flattens means training has converged; one that falls while the training curve still
    rises means the model overfits.

    Parameters
    ----------
    adata
        AnnData (or MuData) on which :func:`myvae.tl.myvae` ran.
    key
        The ``key_added`` of that run.
    mod
        For a MuData: the modality the model was trained on.
    ax
        Axes to draw into; a new figure if ``None``.
    show
        Show the figure; ``None`` follows :attr:`scanpy.settings.autoshow`. The axes are returned when it is not
        shown.
    save
        Save the figure into :attr:`scanpy.settings.figdir`, as scanpy's plotting functions do: ``True`` writes
        ``elbo.<ext>`` with ``ext`` = :attr:`scanpy.settings.file_format_figs`; a string is appended to the name
        (``save="_run1.pdf"`` writes ``elbo_run1.pdf``, its extension choosing the format). ``None`` follows
        :attr:`scanpy.settings.autosave`.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes`, unless the figure is shown.

    Examples
    --------
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()[:300, :800].copy()
    >>> mv.tl.myvae(adata, max_epochs=3, progress=False)
    >>> ax = mv.pl.elbo(adata, show=False)
    """
    check_save(save)
    adata, _ = resolve_data(adata, mod, "elbo")
    run = adata.uns.get(key)
    history = run.get("history") if isinstance(run, Mapping) else None
    if not history:
        raise InputError(
            f"adata.uns[{key!r}] holds no myvae training history; run `mv.tl.myvae(adata, key_added={key!r})` first."
        )
    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, label in _CURVES.items():
        if name in history:
            values = history[name]
            ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per cell")
    ax.set_title(f"myvae training ({key})")
    ax.legend(frameon=False)
    return save_or_show("elbo", ax, show=show, save=save, own_figure=own_figure)
