"""``tl.myvae``: train the simple scVI model (or reuse a trained one) and write its embedding into the data.

The function reads top to bottom as scanpy's tools do: check everything, train or reuse a model, compute the
outputs and the record (:mod:`myvae.tl._record`), then write them, once, at the end — so that a failed call
leaves the data as they were.
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scvi
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from mudata import MuData

from myvae._checks import MIN_CELLS, check_key_added, check_positive_float, check_positive_int, check_same_genes
from myvae._counts import batch_code, batch_labels, get_counts_matrix, is_out_of_core
from myvae._data import copy_data, resolve_data, write_aligned_obsm
from myvae._docs import COPY, DATA, MOD, doc_params
from myvae._exceptions import InputError, TrainingDivergedError
from myvae._setup import SETUP_KEY, check_setup, read_setup, training_anndata
from myvae.model import MyVAE
from myvae.model._backends import check_backend
from myvae.model._defaults import BATCH_SIZE_DOC, CALLBACKS_DOC, DEFAULT_BATCH_SIZE, LR_DOC, MAX_EPOCHS_DOC
from myvae.model._quiet import quiet_training_logs
from myvae.model._record import model_carried_by, model_to_record

from ._record import assemble_record

__all__ = ["myvae"]

logger = logging.getLogger(__name__)


@doc_params(
    data=DATA,
    mod=MOD,
    max_epochs=MAX_EPOCHS_DOC,
    batch_size=BATCH_SIZE_DOC,
    lr=LR_DOC,
    callbacks=CALLBACKS_DOC,
    copy=COPY,
)
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
    callbacks: list[Callback] | None = None,
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
    {data}
    {mod}
        Results go into that modality and, aligned to the MuData's cells (NaN rows for cells absent from the
        modality), into ``mdata.obsm``.
    backend
        ``"torch"`` (the ELBO written in PyTorch) or ``"pyro"`` (Pyro's SVI with its mean-field ELBO). Both fit
        the same model. A module of your own registered with :func:`myvae.model.register_backend` trains by its
        name too.
    n_latent
        Dimension of the embedding.
    n_hidden
        Width of the hidden layer of the encoder and decoder networks.
    {max_epochs}
        Training stops earlier once the held-out ELBO has not improved for 45 epochs, scvi-tools' default (pass
        ``early_stopping=False`` to train all epochs).
    {batch_size}
    {lr}
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
    {callbacks}
    {copy}
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
    # check: everything, before any work
    check_backend(backend)
    adata, mdata = resolve_data(data, mod, "myvae", copy=copy)
    setup = read_setup(adata)
    layer, batch_key = setup["layer"], setup["batch_key"]
    _check_arguments(
        adata,
        layer=layer,
        batch_key=batch_key,
        n_latent=n_latent,
        n_hidden=n_hidden,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        library_size=library_size,
        key_added=key_added,
        layer_added=layer_added,
        transform_batch=transform_batch,
        model=model,
        train_kwargs=train_kwargs,
    )

    # train, or reuse a trained model
    training_data = training_anndata(adata, layer, batch_key)
    with quiet_training_logs():
        scvi.settings.seed = random_state
    if model is None:
        MyVAE.setup_anndata(training_data, batch_key=batch_key)
        trained = MyVAE(training_data, n_latent=n_latent, n_hidden=n_hidden, backend=backend)
        trained.train(
            max_epochs=max_epochs,
            lr=lr,
            batch_size=batch_size,
            accelerator=accelerator,
            progress=progress,
            callbacks=callbacks,
            **train_kwargs,
        )
    else:
        trained = _reusable_model(model, training_data, accelerator)

    # assemble the outputs and the record
    obsm_key = f"X_{key_added}"
    embedding, layers = _outputs(trained, training_data, layer_added, library_size, transform_batch)
    outputs = {
        "obsm": obsm_key,
        **({"layers": layer_added, "library_size": library_size} if layers else {}),
        **({"transform_batch": transform_batch} if layers and transform_batch is not None else {}),
    }
    record = assemble_record(
        trained,
        training_data,
        reused=model,
        random_state=random_state,
        layer=layer,
        batch_key=batch_key,
        outputs=outputs,
    )

    if store_model:
        record["model"] = model_to_record(trained)

    # write, once
    if copy:
        adata, mdata = copy_data(adata, mdata, mod)
    if obsm_key in adata.obsm:
        logger.warning("Overwriting adata.obsm[%r] with the new myvae embedding.", obsm_key)
    adata.obsm[obsm_key] = embedding
    adata.layers.update(layers)
    adata.uns[key_added] = record
    if SETUP_KEY not in adata.uns:
        adata.uns[SETUP_KEY] = {}
    if mdata is not None:
        write_aligned_obsm(mdata, adata, obsm_key, embedding)
    result = adata if mdata is None else mdata
    if copy:
        return (result, trained) if return_model else result
    return trained if return_model else None


def _check_arguments(
    adata: AnnData,
    *,
    layer: str | None,
    batch_key: str | None,
    n_latent: int,
    n_hidden: int,
    max_epochs: int | None,
    batch_size: int,
    lr: float | None,
    library_size: float,
    key_added: str,
    layer_added: str | None,
    transform_batch: str | None,
    model: MyVAE | AnnData | str | PathLike | None,
    train_kwargs: dict[str, Any],
) -> None:
    """Refuse, with the fix, every argument and every state of the data that :func:`myvae` cannot use."""
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
    check_setup(adata, layer, batch_key)
    if transform_batch is not None:
        if layer_added is None:
            raise InputError("transform_batch= only shapes layer_added=; pass layer_added='...' too, or leave it out.")
        batches = [] if batch_key is None else list(batch_labels(adata.obs[batch_key]).categories)
        batch_code(transform_batch, batches, f"obs[{batch_key!r}]")
    if layer_added is not None and is_out_of_core(get_counts_matrix(adata, layer)):
        raise InputError(
            "layer_added= would hold a dense cells × genes matrix in memory, and these counts are on disk; leave it "
            "out, and compute the denoised expression in parts with return_model=True and "
            "model.get_normalized_expression(indices=...)."
        )
    if model is None:
        if adata.n_obs < MIN_CELLS:
            raise InputError(
                f"The data have {adata.n_obs} cells; training needs at least {MIN_CELLS} "
                "(10% of the cells are kept aside to score the model). Pass more cells."
            )
        return
    if train_kwargs:
        raise InputError(
            f"Training arguments ({', '.join(train_kwargs)}) do nothing when model= reuses a trained model; "
            "leave them out, or train a new model by leaving out model=."
        )
    if isinstance(model, MyVAE):
        check_same_genes(model.adata.var_names, adata.var_names)
        if not model.is_trained:
            raise InputError("model= got an untrained MyVAE; train it first, or leave model= out to train here.")
    elif isinstance(model, AnnData | MuData):
        return  # the record it carries is checked when the model is rebuilt, before anything is written
    elif not isinstance(model, str | PathLike) or not Path(model, "model.pt").is_file():
        raise InputError(
            "model= takes a trained MyVAE, a folder written by `model.save(...)` or an AnnData that carries a model; "
            f"got {model!r}, which is none of these."
        )


def _reusable_model(
    model: MyVAE | AnnData | MuData | str | PathLike, training_data: AnnData, accelerator: str
) -> MyVAE:
    """The model to embed ``training_data`` with: the object itself, or the model saved in that folder."""
    if isinstance(model, MyVAE):
        return model
    if isinstance(model, AnnData | MuData):
        return model_carried_by(model, training_data, accelerator=accelerator)
    with quiet_training_logs():
        return MyVAE.load(model, adata=training_data, accelerator=accelerator)


def _outputs(
    trained: MyVAE, training_data: AnnData, layer_added: str | None, library_size: float, transform_batch: str | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The embedding and the layers to write; a :class:`~myvae.TrainingDivergedError` if the embedding is not finite."""
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
    return embedding, layers
