"""``tl.myvae``: train the simple scVI model (or reuse a trained one) and write its embedding into the data."""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import version
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scvi
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from myvae._checks import (
    MIN_CELLS,
    InputError,
    TrainingDivergedError,
    check_key_added,
    check_positive_float,
    check_positive_int,
    check_same_genes,
    get_counts_matrix,
)
from myvae._data import copy_data, resolve_data, write_aligned_obsm
from myvae.model import MyVAE
from myvae.model._myvae import DEFAULT_BATCH_SIZE, check_backend, default_learning_rate, default_max_epochs
from myvae.model._quiet import quiet_training_logs
from myvae.model._record import model_carried_by, model_source, model_to_record
from myvae.model._streaming import is_out_of_core
from myvae.pp._setup_counts import SETUP_KEY, check_setup, counts_location, read_setup

__all__ = ["myvae"]

logger = logging.getLogger(__name__)

_VERSIONED_PACKAGES = ("myvae", "scvi-tools", "torch", "pyro-ppl", "anndata")
_WATCHERS = ("callbacks",)
"""Training arguments that watch the training without shaping the result: not recorded in ``params``."""


def batch_labels(column: pd.Series) -> pd.Categorical:
    """A batch column as categories named by strings, in the column's category order (sorted otherwise)."""
    categorical = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    categorical = categorical.cat.remove_unused_categories()
    return pd.Categorical(
        categorical.astype(str), categories=[str(category) for category in categorical.cat.categories]
    )


def _training_anndata(adata: AnnData, layer: str | None, batch_key: str | None) -> AnnData:
    """A bare AnnData around the counts (and batches), so that scvi-tools' registration never touches the user's.

    Counts on disk (backed HDF5 or zarr, or a dask array) stay there: the bare AnnData refers to them.
    """
    counts = get_counts_matrix(adata, layer)
    if is_out_of_core(counts):
        matrix = counts  # read a chunk of cells at a time by the model, never loaded whole
    elif sparse.issparse(counts):
        matrix = sparse.csr_matrix(counts, dtype=np.float32)
    else:
        matrix = np.asarray(counts, dtype=np.float32)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    if batch_key is not None:
        obs[batch_key] = batch_labels(adata.obs[batch_key])
    var = pd.DataFrame(index=adata.var_names.copy())
    return AnnData(X=matrix, obs=obs, var=var)


def _history_as_elbo(model: MyVAE) -> dict[str, np.ndarray]:
    """Per-epoch training and held-out ELBO per cell (higher is better; scvi-tools logs its negative)."""
    return {
        key: -model.history[key].to_numpy(dtype=np.float64).ravel()
        for key in ("elbo_train", "elbo_validation")
        if model.history_ is not None and key in model.history_
    }


def _fit_metrics(
    model: MyVAE, training_data: AnnData, history: dict[str, np.ndarray], *, pretrained: bool
) -> dict[str, float]:
    """How well the model fits: final training and held-out ELBO and held-out reconstruction error per cell.

    For a reused model, the ELBO and reconstruction error of the cells it embedded.
    """
    if pretrained:
        return {
            "elbo": model.get_elbo(training_data),
            "reconstruction_error": model.get_reconstruction_error(training_data)["reconstruction_loss"],
        }
    metrics = {f"final_{key}": float(values[-1]) for key, values in history.items() if len(values)}
    if len(model.validation_indices):
        # increasing order: the mean does not depend on it, and counts on disk are read that way
        error = model.get_reconstruction_error(training_data, indices=np.sort(model.validation_indices))
        metrics["reconstruction_error_validation"] = error["reconstruction_loss"]
    return metrics


def _resolved_train_arguments(**train_kwargs: Any) -> dict[str, Any]:
    """Every argument of :meth:`MyVAE.train` that shapes the result, defaults filled in (not ``progress``)."""
    bound = inspect.signature(MyVAE.train).bind(None, **train_kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if arguments["lr"] is None:
        arguments["lr"] = default_learning_rate(arguments["batch_size"])
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


def _check_transform_batch(
    adata: AnnData, batch_key: str | None, transform_batch: str | None, layer_added: str | None
) -> None:
    """Refuse a ``transform_batch`` that would do nothing or name no batch, before any training."""
    if transform_batch is None:
        return
    if layer_added is None:
        raise InputError("transform_batch= only shapes layer_added=; pass layer_added='...' too, or leave it out.")
    if batch_key is None:
        raise InputError(
            "transform_batch= needs batches; set up the data with mv.pp.setup_counts(adata, batch_key=...)."
        )
    batches = list(batch_labels(adata.obs[batch_key]).categories)
    if str(transform_batch) not in batches:
        raise InputError(f"transform_batch={transform_batch!r} is not a batch of obs[{batch_key!r}]: {batches}.")


def _reusable_model(model: MyVAE | AnnData | str | PathLike, training_data: AnnData, accelerator: str) -> MyVAE:
    """The model to embed ``training_data`` with: the object itself, the one an AnnData carries, or a saved one."""
    if isinstance(model, AnnData | MuData):
        return model_carried_by(model, training_data, accelerator=accelerator)
    if isinstance(model, MyVAE):
        if not model.is_trained:
            raise InputError("model= got an untrained MyVAE; train it first, or leave model= out to train here.")
        return model
    if not isinstance(model, str | PathLike) or not Path(model, "model.pt").is_file():
        raise InputError(
            f"model= takes a trained MyVAE or a folder written by `model.save(...)`; got {model!r}, which is neither."
        )
    with quiet_training_logs():
        return MyVAE.load(model, adata=training_data, accelerator=accelerator)


def myvae(
    data: AnnData | MuData,
    *,
    mod: str | None = None,
    backend: str = "torch",
    n_latent: int = 10,
    n_hidden: int = 128,
    max_epochs: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float | None = None,
    random_state: int = 0,
    accelerator: str = "auto",
    key_added: str = "myvae",
    layer_added: str | None = None,
    library_size: float = 1e4,
    transform_batch: str | None = None,
    model: MyVAE | AnnData | str | PathLike | None = None,
    store_model: bool = True,
    return_model: bool = False,
    progress: bool = True,
    copy: bool = False,
    **train_kwargs: Any,
) -> AnnData | MuData | MyVAE | tuple[AnnData | MuData, MyVAE] | None:
    """Embed cells with the simple scVI model, a negative-binomial variational autoencoder of the counts.

    The model (:class:`myvae.MyVAE`) is trained on the counts recorded by :func:`myvae.pp.setup_counts`
    (or, if the AnnData was not set up, on ``adata.X`` after the same checks), keeping 10% of the cells aside to
    score it. The embedding is the posterior mean of each cell's latent code. Everything is checked before
    training starts, and results are written only once training has finished: a failed call leaves ``data`` as
    it was.

    Data larger than memory stay on disk: for an AnnData opened with ``backed="r"`` (h5ad) or one whose counts are
    a lazily read zarr or dask array, the counts are read a chunk of cells at a time, shuffled within a bounded
    buffer for training, and embedded chunk by chunk; only the small results (``obsm``, ``uns``) are written, in
    memory. Such data cannot be copied (``copy=True``) or given a dense ``layer_added``.

    Parameters
    ----------
    data
        Annotated data matrix of raw counts, cells × genes (in memory, or backed on disk), or a MuData holding an
        RNA modality.
    mod
        For a MuData: the modality holding the RNA counts (e.g. ``"rna"``). Results go into that modality and,
        aligned to the MuData's cells (NaN rows for cells absent from the modality), into ``mdata.obsm``.
    backend
        ``"torch"`` (the ELBO written in PyTorch) or ``"pyro"`` (Pyro's SVI with its mean-field ELBO). Both fit
        the same model. A module of your own registered with :func:`myvae.model.register_backend` trains by its
        name too.
    n_latent
        Dimension of the embedding.
    n_hidden
        Width of the hidden layer of the encoder and decoder networks.
    max_epochs
        Most passes over the training cells; ``None`` picks a number from the data size (400 for up to 20,000
        cells, fewer for more cells, at least 20). Training stops earlier once the held-out ELBO has not improved
        for 45 epochs, scvi-tools' default (pass ``early_stopping=False`` to train all epochs).
    batch_size
        Cells per minibatch (512 by default: four times scvi-tools' default, for throughput).
    lr
        Learning rate of the Adam optimiser; ``None`` scales scvi-tools' 1e-3 (at 128 cells per batch) linearly
        with ``batch_size``, i.e. 4e-3 at the default 512.
    random_state
        Seed of every random draw; the same seed gives the same embedding on the same machine.
    accelerator
        Where to train: ``"auto"``, ``"cpu"``, ``"gpu"``, … (as in Lightning).
    key_added
        Name of the outputs: ``obsm[f"X_{key_added}"]`` and ``uns[key_added]``.
    layer_added
        If given, ``layers[layer_added]`` gets the denoised, normalised expression: the posterior mean of the
        expression proportions ρ, scaled to ``library_size`` counts per cell.
    library_size
        Counts per cell of ``layer_added``.
    transform_batch
        With batches (``batch_key`` given to :func:`~myvae.pp.setup_counts`): write ``layer_added`` as if every
        cell came from this batch, which removes the batch effect from the expression.
    model
        A trained :class:`~myvae.MyVAE`, the folder it was saved to, or an AnnData that carries one in
        ``uns[key]["model"]`` (``store_model=True``; for a MuData pass its modality, e.g. ``mdata["rna"]``): embed the
        cells with its encoder instead of training. The data must have the model's genes in the model's order; the
        training arguments (``backend``, ``n_latent``, ``max_epochs``, …) then come from the model and may not be
        passed.
    store_model
        Store the model's weights and settings in ``uns[key_added]["model"]`` as plain arrays and scalars, so that
        the AnnData carries its model through ``write_h5ad``/``read_h5ad`` (see
        :meth:`myvae.MyVAE.from_anndata`). It takes about 1.6 KB per gene at the default ``n_latent`` and
        ``n_hidden`` (3.2 MB for 2,000 genes in an h5ad file); ``False`` leaves it out.
    return_model
        Also return the trained (or reused) :class:`~myvae.MyVAE`.
    progress
        Show a progress bar while training.
    copy
        Return a copy instead of writing to ``data``.
    **train_kwargs
        Passed to :meth:`myvae.MyVAE.train`, e.g. ``early_stopping=False`` or ``train_size=0.8``.

    Returns
    -------
    With ``copy=False``: ``None``, or the model if ``return_model=True``. With ``copy=True``: the new AnnData,
    or ``(adata, model)`` if ``return_model=True``. Sets

    ``adata.obsm[f"X_{key_added}"]``
        Posterior mean of the latent code, ``float32``, cells × ``n_latent``.
    ``adata.layers[layer_added]``
        Only if ``layer_added`` is given: normalised expression, ``float32``, every row summing to ``library_size``.
    ``adata.uns[key_added]["params"]``
        Every argument that shaped the result (those of :meth:`~myvae.MyVAE.train` included, defaults
        filled in), the number of epochs trained, ``pretrained`` (whether the model was reused),
        ``outputs`` (the keys written) and the package versions.
    ``adata.uns[key_added]["history"]``
        ``elbo_train`` and ``elbo_validation``: the ELBO per cell at each epoch, on the training and the
        held-out cells (higher is better).
    ``adata.uns[key_added]["model"]``
        Only if ``store_model=True``: the model as plain arrays and scalars (:func:`myvae.model.model_to_record`).
    ``adata.uns[key_added]["metrics"]``
        How well the model fits: ``final_elbo_train``, ``final_elbo_validation`` and
        ``reconstruction_error_validation`` (per cell, on the held-out cells; lower is better); for a reused
        model, ``elbo`` and ``reconstruction_error`` of the embedded cells.
    ``adata.uns["myvae_setup"]``
        The setup record, if the AnnData had none (counts in ``adata.X``).
    ``mdata.obsm[f"X_{key_added}"]``
        For a MuData: the embedding aligned to the MuData's cells.

    Raises
    ------
    myvae.InputError
        If the data do not hold raw counts, have fewer than 10 cells, lack the reused model's genes, or an argument
        is out of range.
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

    A MuData, and reusing the trained model on new cells with the same genes:

    >>> mdata = mv.datasets.pbmc_cite()
    >>> model = mv.tl.myvae(mdata, mod="rna", max_epochs=3, progress=False, return_model=True)
    >>> mdata.obsm["X_myvae"].shape
    (400, 10)
    >>> new_cells = mv.datasets.pbmc_cite()["rna"][:50].copy()
    >>> mv.tl.myvae(new_cells, model=model, layer_added="denoised")
    >>> new_cells.uns["myvae"]["params"]["pretrained"]
    True
    """
    check_backend(backend)
    adata, mdata = resolve_data(data, mod, "myvae", copy=copy)
    check_positive_int(n_latent, "n_latent")
    check_positive_int(n_hidden, "n_hidden")
    check_positive_int(max_epochs, "max_epochs", allow_none=True)
    check_positive_int(batch_size, "batch_size")
    if lr is not None:
        check_positive_float(lr, "lr")
    check_positive_float(library_size, "library_size")
    check_key_added(key_added)
    if layer_added is not None:
        check_key_added(layer_added, "layer_added")
    setup = read_setup(adata)
    check_setup(adata, setup["layer"], setup["batch_key"])
    _check_transform_batch(adata, setup["batch_key"], transform_batch, layer_added)
    if layer_added is not None and is_out_of_core(get_counts_matrix(adata, setup["layer"])):
        raise InputError(
            "layer_added= would hold a dense cells × genes matrix in memory, and these counts are on disk; leave it "
            "out, and compute the denoised expression in parts with return_model=True and "
            "model.get_normalized_expression(indices=...)."
        )
    if model is not None and train_kwargs:
        raise InputError(
            f"Training arguments ({', '.join(train_kwargs)}) do nothing when model= reuses a trained model; "
            "leave them out, or train a new model by leaving out model=."
        )
    if model is None and adata.n_obs < MIN_CELLS:
        raise InputError(
            f"The data have {adata.n_obs} cells; training needs at least {MIN_CELLS} "
            "(10% of the cells are kept aside to score the model). Pass more cells."
        )
    if isinstance(model, MyVAE):
        check_same_genes(model.adata.var_names, adata.var_names)

    training_data = _training_anndata(adata, setup["layer"], setup["batch_key"])
    with quiet_training_logs():
        scvi.settings.seed = random_state
    if model is None:
        train_arguments = _resolved_train_arguments(
            max_epochs=max_epochs or default_max_epochs(adata.n_obs),
            lr=lr,
            batch_size=batch_size,
            accelerator=accelerator,
            **train_kwargs,
        )
        MyVAE.setup_anndata(training_data, batch_key=setup["batch_key"])
        trained = MyVAE(training_data, n_latent=n_latent, n_hidden=n_hidden, backend=backend)
        trained.train(**train_arguments, progress=progress)
        recorded = {name: value for name, value in train_arguments.items() if name not in _WATCHERS}
        params = {"backend": backend, "n_latent": n_latent, "n_hidden": n_hidden, **_storable(recorded)}
    else:
        trained = _reusable_model(model, training_data, accelerator)
        params = {
            "backend": trained.backend,
            "n_latent": trained.n_latent,
            "n_hidden": trained.n_hidden,
            "model": model_source(model),
        }

    with quiet_training_logs():
        embedding = trained.get_latent_representation(adata=training_data, give_mean=True).astype(np.float32)
        layers = {}
        if layer_added is not None:
            layers[layer_added] = trained.get_normalized_expression(
                training_data, library_size=library_size, transform_batch=transform_batch, return_numpy=True
            ).astype(np.float32)
    if not np.isfinite(embedding).all():
        raise TrainingDivergedError(
            "The model gives a non-finite embedding for some cells (its weights are no longer finite); train it "
            "again with a lower learning rate (lr=). Nothing was written to the data."
        )
    history = _history_as_elbo(trained)
    with quiet_training_logs():
        metrics = _fit_metrics(trained, training_data, history, pretrained=model is not None)
    obsm_key = f"X_{key_added}"
    params.update(
        {
            "random_state": random_state,
            "counts": counts_location(setup["layer"]),
            **({"batch_key": setup["batch_key"], "batches": trained.batch_categories} if setup["batch_key"] else {}),
            "pretrained": model is not None,
            "epochs_trained": len(history.get("elbo_train", ())),
            "outputs": {
                "obsm": obsm_key,
                **({"layers": layer_added, "library_size": library_size} if layers else {}),
                **({"transform_batch": transform_batch} if layers and transform_batch is not None else {}),
            },
            "versions": {package: version(package) for package in _VERSIONED_PACKAGES},
        }
    )

    record = {"model": model_to_record(trained)} if store_model else {}
    if copy:
        adata, mdata = copy_data(adata, mdata, mod)
    if obsm_key in adata.obsm:
        logger.warning("Overwriting adata.obsm[%r] with the new myvae embedding.", obsm_key)
    adata.obsm[obsm_key] = embedding
    adata.layers.update(layers)
    adata.uns[key_added] = {"params": params, "history": history, "metrics": metrics, **record}
    if SETUP_KEY not in adata.uns:
        adata.uns[SETUP_KEY] = {}
    if mdata is not None:
        write_aligned_obsm(mdata, adata, obsm_key, embedding)
    result = adata if mdata is None else mdata
    if copy:
        return (result, trained) if return_model else result
    return trained if return_model else None
