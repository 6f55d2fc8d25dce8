"""``tl.myvae``: train the simple scVI model and write its embedding into the AnnData."""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd
import scvi
from anndata import AnnData
from scipy import sparse

from myvae._checks import (
    MIN_CELLS,
    InputError,
    check_anndata,
    check_key_added,
    check_positive_float,
    check_positive_int,
    get_counts_matrix,
)
from myvae.model import MyVAE
from myvae.model._myvae import Backend, check_backend, default_max_epochs
from myvae.model._quiet import quiet_lightning
from myvae.pp._setup_counts import SETUP_KEY, check_setup, counts_location, read_setup

__all__ = ["myvae"]

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = ("myvae", "scvi-tools", "torch", "pyro-ppl", "anndata")


def _training_anndata(adata: AnnData, layer: str | None) -> AnnData:
    """A bare AnnData around the counts, so that scvi-tools' registration never touches the user's object."""
    counts = get_counts_matrix(adata, layer)
    if sparse.issparse(counts):
        matrix = sparse.csr_matrix(counts, dtype=np.float32)
    else:
        matrix = np.asarray(counts, dtype=np.float32)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    var = pd.DataFrame(index=adata.var_names.copy())
    return AnnData(X=matrix, obs=obs, var=var)


def _history_as_elbo(model: MyVAE) -> dict[str, np.ndarray]:
    """Per-epoch training and held-out ELBO per cell (higher is better; scvi-tools logs its negative)."""
    return {
        key: -model.history[key].to_numpy(dtype=np.float64).ravel()
        for key in ("elbo_train", "elbo_validation")
        if key in model.history
    }


def _resolved_train_arguments(**train_kwargs: Any) -> dict[str, Any]:
    """Every argument of :meth:`MyVAE.train` that shapes the result, defaults filled in (not ``progress``)."""
    bound = inspect.signature(MyVAE.train).bind(None, **train_kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.update(arguments.pop("trainer_kwargs"))
    for name in ("self", "progress"):
        arguments.pop(name)
    return arguments


def _storable(value: Any) -> Any:
    """``value`` if an h5ad file can store it as a parameter, otherwise its ``repr``."""
    if isinstance(value, str | bool | int | float | np.number):
        return value
    if isinstance(value, dict):
        return {str(key): _storable(item) for key, item in value.items() if item is not None}
    return repr(value)


def myvae(
    data: AnnData,
    *,
    backend: Backend = "torch",
    n_latent: int = 10,
    n_hidden: int = 128,
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    random_state: int = 0,
    accelerator: str = "auto",
    key_added: str = "myvae",
    return_model: bool = False,
    progress: bool = True,
    copy: bool = False,
    **train_kwargs: Any,
) -> AnnData | MyVAE | tuple[AnnData, MyVAE] | None:
    """Embed cells with the simple scVI model, a negative-binomial variational autoencoder of the counts.

    The model (:class:`myvae.model.MyVAE`) is trained on the counts recorded by :func:`myvae.pp.setup_counts`
    (or, if the AnnData was not set up, on ``adata.X`` after the same checks), keeping 10% of the cells aside to
    score it. The embedding is the posterior mean of each cell's latent code. Everything is checked before
    training starts, and results are written only once training has finished: a failed call leaves ``data`` as
    it was.

    Parameters
    ----------
    data
        Annotated data matrix of raw counts, cells × genes.
    backend
        ``"torch"`` (the ELBO written in PyTorch) or ``"pyro"`` (Pyro's SVI with its mean-field ELBO). Both fit
        the same model.
    n_latent
        Dimension of the embedding.
    n_hidden
        Width of the hidden layer of the encoder and decoder networks.
    max_epochs
        Most passes over the training cells; ``None`` picks a number from the data size (400 for up to 20,000
        cells, fewer for more cells, at least 20). Training stops earlier once the held-out ELBO has not improved
        for 20 epochs (pass ``early_stopping=False`` to train all epochs).
    batch_size
        Cells per minibatch.
    lr
        Learning rate of the Adam optimiser.
    random_state
        Seed of every random draw; the same seed gives the same embedding on the same machine.
    accelerator
        Where to train: ``"auto"``, ``"cpu"``, ``"gpu"``, … (as in Lightning).
    key_added
        Name of the outputs: ``obsm[f"X_{key_added}"]`` and ``uns[key_added]``.
    return_model
        Also return the trained :class:`~myvae.model.MyVAE`.
    progress
        Show a progress bar while training.
    copy
        Return a copy instead of writing to ``data``.
    **train_kwargs
        Passed to :meth:`myvae.model.MyVAE.train`, e.g. ``early_stopping=False`` or ``train_size=0.8``.

    Returns
    -------
    With ``copy=False``: ``None``, or the model if ``return_model=True``. With ``copy=True``: the new AnnData,
    or ``(adata, model)`` if ``return_model=True``. Sets

    ``adata.obsm[f"X_{key_added}"]``
        Posterior mean of the latent code, ``float32``, cells × ``n_latent``.
    ``adata.uns[key_added]["params"]``
        Every argument that shaped the result (those of :meth:`~myvae.model.MyVAE.train` included, defaults
        filled in), the number of epochs trained and the package versions.
    ``adata.uns[key_added]["history"]``
        ``elbo_train`` and ``elbo_validation``: the ELBO per cell at each epoch, on the training and the
        held-out cells (higher is better).
    ``adata.uns["myvae_setup"]``
        The setup record, if the AnnData had none (counts in ``adata.X``).

    Raises
    ------
    myvae.InputError
        If the data do not hold raw counts, have fewer than 10 cells, or an argument is out of range.
    ValueError
        If ``backend`` is unknown (the message lists the choices).

    Examples
    --------
    >>> import scanpy as sc
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()[:500].copy()
    >>> sc.pp.filter_genes(adata, min_cells=50)
    >>> mv.pp.setup_counts(adata)
    >>> mv.tl.myvae(adata, backend="pyro", max_epochs=5, progress=False)
    >>> adata.obsm["X_myvae"].shape
    (500, 10)
    >>> sc.pp.neighbors(adata, use_rep="X_myvae")
    """
    check_backend(backend)
    adata = check_anndata(data, "myvae")
    check_positive_int(n_latent, "n_latent")
    check_positive_int(n_hidden, "n_hidden")
    check_positive_int(max_epochs, "max_epochs", allow_none=True)
    check_positive_int(batch_size, "batch_size")
    check_positive_float(lr, "lr")
    check_key_added(key_added)
    setup = read_setup(adata)
    check_setup(adata, setup["layer"], setup["batch_key"])
    if adata.n_obs < MIN_CELLS:
        raise InputError(
            f"The data have {adata.n_obs} cells; training needs at least {MIN_CELLS} "
            "(10% of the cells are kept aside to score the model). Pass more cells."
        )

    resolved_max_epochs = max_epochs if max_epochs is not None else default_max_epochs(adata.n_obs)
    training_data = _training_anndata(adata, setup["layer"])
    with quiet_lightning():
        scvi.settings.seed = random_state
    MyVAE.setup_anndata(training_data)
    model = MyVAE(training_data, n_latent=n_latent, n_hidden=n_hidden, backend=backend)
    train_arguments = _resolved_train_arguments(
        max_epochs=resolved_max_epochs, lr=lr, batch_size=batch_size, accelerator=accelerator, **train_kwargs
    )
    model.train(**train_arguments, progress=progress)
    embedding = model.get_latent_representation(give_mean=True).astype(np.float32)
    history = _history_as_elbo(model)
    params = {
        "backend": backend,
        "n_latent": n_latent,
        "n_hidden": n_hidden,
        "random_state": random_state,
        "counts": counts_location(setup["layer"]),
        **_storable(train_arguments),
        "epochs_trained": len(history["elbo_train"]),
        "versions": {package: version(package) for package in _VERSIONED_PACKAGES},
    }

    if copy:
        adata = adata.copy()
    obsm_key = f"X_{key_added}"
    if obsm_key in adata.obsm:
        logger.warning("Overwriting adata.obsm[%r] with the new myvae embedding.", obsm_key)
    adata.obsm[obsm_key] = embedding
    adata.uns[key_added] = {"params": params, "history": history}
    if SETUP_KEY not in adata.uns:
        adata.uns[SETUP_KEY] = {}
    if copy:
        return (adata, model) if return_model else adata
    return model if return_model else None
