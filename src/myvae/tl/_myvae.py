"""``tl.myvae``: train the simple scVI model (or reuse a trained one) and write its embedding into the data.

The function reads top to bottom as scanpy's tools do: check everything (:mod:`myvae.tl._arguments`), train or
reuse a model (:mod:`myvae.tl._query` maps new cells onto a trained one), compute the outputs and the record
(:mod:`myvae.tl._record`) with the caller's random state set aside (:mod:`myvae._random`), then write them, once,
at the end — so that a failed call leaves the data as they were.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
from anndata import AnnData
from lightning.pytorch.callbacks import Callback
from mudata import MuData

from myvae import _logging as logg
from myvae._batches import batch_labels
from myvae._checks import check_same_genes
from myvae._data import copy_data, resolve_data, write_aligned_obsm
from myvae._docs import COPY, DATA, MOD, doc_params
from myvae._exceptions import InputError, TrainingDivergedError
from myvae._genes import HIGHLY_VARIABLE_IF_PRESENT, MASK_VAR_DOC, MaskVar
from myvae._random import RandomState, preserved_random_state, seed_from, seeded
from myvae._setup import SETUP_KEY, training_anndata
from myvae.model import MyVAE
from myvae.model._backends import check_backend
from myvae.model._datamodule import resolve_train_size
from myvae.model._defaults import (
    BATCH_SIZE_DOC,
    CALLBACKS_DOC,
    DEFAULT_BATCH_SIZE,
    ENCODING_BATCH_SIZE,
    LR_DOC,
    MAX_EPOCHS_DOC,
)
from myvae.model._quiet import quiet_training_logs
from myvae.model._record import model_to_record

from ._arguments import Inputs, check_tool_keywords, check_values, resolve_inputs
from ._query import check_transform_batch, model_batch_key, query_batches, reusable_model, unseen_record
from ._record import assemble_record

__all__ = ["myvae"]


@doc_params(
    data=DATA,
    mod=MOD,
    mask_var=MASK_VAR_DOC,
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
    layer: str | None = None,
    batch_key: str | None = None,
    mask_var: MaskVar = HIGHLY_VARIABLE_IF_PRESENT,
    backend: str = "torch",
    n_latent: int = 10,
    n_hidden: int = 128,
    max_epochs: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float | None = None,
    random_state: RandomState = 0,
    accelerator: str = "auto",
    key_added: str = "myvae",
    layer_added: str | None = None,
    library_size: float = 1e4,
    transform_batch: str | Sequence[str] | None = None,
    model: MyVAE | AnnData | str | PathLike | None = None,
    store_model: bool = True,
    return_model: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    copy: bool = False,
    **train_kwargs: Any,
) -> AnnData | MuData | MyVAE | tuple[AnnData | MuData, MyVAE] | None:
    """Embed cells with the simple scVI model, a negative-binomial variational autoencoder of the counts.

    The model (:class:`myvae.MyVAE`) is trained on the counts of ``layer`` (else the layer recorded by
    :func:`myvae.pp.setup_counts`, else ``adata.X``, after the same checks) and the genes of ``mask_var``, keeping
    10% of the cells aside to score it. The embedding is the posterior mean of each cell's latent code. Everything
    is checked before training starts, and results are written only once training has finished: a failed call
    leaves ``data`` as it was.

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
    layer
        Layer holding the raw counts; ``None`` takes the layer recorded by :func:`~myvae.pp.setup_counts`, else
        ``adata.X``.
    batch_key
        Column of ``obs`` naming each cell's batch (for a MuData, of the modality or of ``mdata.obs``, also as
        ``"rna:sample"``): the decoder is conditioned on it. ``None`` takes the one recorded by
        :func:`~myvae.pp.setup_counts`, if any; with ``model=``, the model's ``batch_key``.
    {mask_var}
    backend
        ``"torch"`` (the ELBO written in PyTorch) or ``"pyro"`` (Pyro's SVI with its mean-field ELBO). Both fit
        the same model. A module of your own registered with :func:`myvae.model.register_backend` trains by its
        name too.
    n_latent
        Dimension of the embedding.
    n_hidden
        Width of the hidden layer of the encoder and decoder networks.
    {max_epochs}
        Training stops earlier once the held-out ELBO has reached a plateau (no gain of 0.3% over its best in 10
        epochs) and keeps the weights of its best epoch (pass ``early_stopping=False`` to train all epochs and keep
        the last; :meth:`myvae.MyVAE.train` describes ``early_stopping_patience`` and
        ``early_stopping_min_improvement``).
    {batch_size}
    {lr}
    random_state
        Seed of every random draw: an integer, a :class:`numpy.random.Generator` or
        :class:`~numpy.random.RandomState` (a seed is drawn from it), or ``None`` (a fresh seed). The same seed
        gives the same embedding on the same machine; the caller's random state (NumPy's, ``random``'s,
        torch's, ``scvi.settings.seed``) is left as it was. The seed used is recorded.
    accelerator
        Where to train: ``"auto"``, ``"cpu"``, ``"gpu"``, … (as in Lightning).
    key_added
        Name of the outputs: ``obsm[f"X_{key_added}"]`` and ``uns[key_added]``.
    layer_added
        If given, ``layers[layer_added]`` gets the denoised, normalised expression: the posterior mean of the
        expression proportions ρ, scaled to ``library_size`` counts per cell over the modelled genes; the genes
        ``mask_var`` leaves out hold NaN (the model says nothing about them). It may not name the counts' layer.
    library_size
        Counts per cell of ``layer_added``.
    transform_batch
        With batches: write ``layer_added`` as if every cell came from this batch (one of the model's), which
        removes the batch effect from the expression; a list averages over those batches, as in scvi-tools.
    model
        A trained :class:`~myvae.MyVAE`, the folder it was saved to, or an AnnData that carries one in
        ``uns[key]["model"]`` (``store_model=True``; for a MuData pass its modality, e.g. ``mdata["rna"]``): embed the
        cells with its encoder instead of training. The genes of ``mask_var`` must be the model's, in the model's
        order; the training arguments (``backend``, ``n_latent``, ``max_epochs``, …) then come from the model and
        may not be passed. Cells of batches the model never saw are embedded too (the encoder does not read the
        batch); they are counted in ``params``, and their ``layer_added`` needs ``transform_batch``.
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
        Passed to :meth:`myvae.MyVAE.train` (e.g. ``early_stopping=False``, ``train_size=0.8``) or on to
        Lightning's trainer (e.g. ``gradient_clip_val=1.0``); any other keyword is an error naming the valid ones.

    Returns
    -------
    With ``copy=False``: ``None``, or the model if ``return_model=True``. With ``copy=True``: the new AnnData,
    or ``(adata, model)`` if ``return_model=True``. Sets

    ``adata.obsm[f"X_{key_added}"]``
        Posterior mean of the latent code, ``float32``, cells × ``n_latent``.
    ``adata.layers[layer_added]``
        Only if ``layer_added`` is given: normalised expression, ``float32``, every row summing to ``library_size``
        over the modelled genes, NaN for the genes ``mask_var`` leaves out.
    ``adata.uns[key_added]["params"]``
        Every argument that shaped the result (those of :meth:`~myvae.MyVAE.train` included, defaults
        filled in): ``counts``/``layer``, ``batch_key``, ``mask_var``, ``n_genes``, the seed as ``random_state``;
        the number of epochs trained, ``pretrained`` (whether the model was reused), ``outputs`` (the keys
        written) and the package versions. With ``model=`` and batches: ``unseen_batches`` (the query's batches the
        model never saw) and ``n_cells_unseen_batches``.
    ``adata.uns[key_added]["history"]``
        ``elbo_train`` and ``elbo_validation``: the ELBO per cell at each epoch, on the training and the
        held-out cells (higher is better).
    ``adata.uns[key_added]["model"]``
        Only if ``store_model=True``: the model as plain arrays and scalars (:func:`myvae.model.model_to_record`).
    ``adata.uns[key_added]["metrics"]``
        How well the returned model fits: ``final_elbo_train`` and ``final_elbo_validation`` (the history's ELBO
        at the epoch whose weights the model has: under early stopping the best held-out epoch, restored, whose
        number, counting from 1, is ``restored_epoch``; else the last) and ``reconstruction_error_validation``
        (per cell, on the held-out cells; lower is better); for a reused model, ``elbo`` and
        ``reconstruction_error`` of the embedded cells.
    ``adata.uns["myvae_setup"]``
        The setup record, if the AnnData had none (counts in ``adata.X``).
    ``mdata.obsm[f"X_{key_added}"]``
        For a MuData: the embedding aligned to the MuData's cells.

    Raises
    ------
    myvae.InputError
        If a keyword is unknown, the data do not hold raw counts, have fewer than 10 cells, lack the reused model's
        genes, or an argument is out of range.
    ValueError
        If ``backend`` is unknown (the message lists the choices).

    Examples
    --------
    >>> import scanpy as sc
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()[:500].copy()
    >>> sc.pp.filter_genes(adata, min_cells=50)
    >>> adata.layers["counts"] = adata.X.copy()
    >>> mv.tl.myvae(adata, layer="counts", backend="pyro", max_epochs=5, progress=False)
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
    start = logg.info("computing myvae")
    # check: every keyword, every value, then the data — before any work
    given = {"backend": backend, "n_latent": n_latent, "n_hidden": n_hidden}
    given |= {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr}
    model_arguments = {name: (value, _TOOL_DEFAULTS[name]) for name, value in given.items()}
    check_tool_keywords(train_kwargs, _TOOL_KEYWORDS, reusing=model is not None, model_arguments=model_arguments)
    check_backend(backend)
    check_values(
        n_latent=n_latent,
        n_hidden=n_hidden,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        library_size=library_size,
        key_added=key_added,
        layer_added=layer_added,
        transform_batch=transform_batch,
        accelerator=accelerator,
    )
    adata, mdata = resolve_data(data, mod, "myvae", copy=copy)
    with preserved_random_state():  # building a model draws its initial weights
        reused = None if model is None else reusable_model(model, accelerator)
    inputs = resolve_inputs(
        adata,
        mdata,
        mod,
        layer=layer,
        batch_key=batch_key,
        mask_var=mask_var,
        layer_added=layer_added,
        reusing=reused is not None,
        model_batch_key=None if reused is None else model_batch_key(reused),
    )
    extra = {}
    if reused is None:
        split = {name: train_kwargs.get(name) for name in ("train_size", "validation_size")}
        resolve_train_size(adata.n_obs, **split, early_stopping=train_kwargs.get("early_stopping", True))
        labels = None if inputs.batches is None else batch_labels(inputs.batches)
        categories = [] if labels is None else list(labels.categories)
        check_transform_batch(transform_batch, categories, f"obs[{inputs.batch_key!r}]")
        training_data = training_anndata(adata, inputs.layer, inputs.batch_key, batches=labels, mask=inputs.mask)
    else:
        _check_model_genes(reused, adata, inputs)
        mapped = query_batches(
            reused, inputs.batches, n_obs=adata.n_obs, layer_added=layer_added, transform_batch=transform_batch
        )
        training_data = training_anndata(
            adata, inputs.layer, model_batch_key(reused), batches=mapped.labels, mask=inputs.mask
        )
        extra = unseen_record(mapped) if inputs.batch_key is not None else {}
    seed = seed_from(random_state)

    # train or reuse, then the outputs and the record, with the caller's random state set aside
    with seeded(seed):
        if reused is None:
            MyVAE.setup_anndata(training_data, batch_key=inputs.batch_key)
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
            trained = reused
        obsm_key = f"X_{key_added}"
        embedding, layers = _outputs(trained, training_data, adata, inputs, layer_added, library_size, transform_batch)
        outputs = {
            "obsm": obsm_key,
            **({"layers": layer_added, "library_size": library_size} if layers else {}),
            **({"transform_batch": transform_batch} if layers and transform_batch is not None else {}),
        }
        record = assemble_record(
            trained,
            training_data,
            reused=model,
            random_state=seed,
            layer=inputs.layer,
            batch_key=inputs.batch_key,
            mask_var=inputs.mask_var,
            outputs=outputs,
            extra=extra,
        )
    if store_model:
        record["model"] = model_to_record(trained)

    # write, once
    if copy:
        adata, mdata = copy_data(adata, mdata, mod)
    _warn_on_overwrite(adata, mdata, obsm_key, layer_added, key_added)
    adata.obsm[obsm_key] = embedding
    adata.layers.update(layers)
    adata.uns[key_added] = record
    if SETUP_KEY not in adata.uns:
        adata.uns[SETUP_KEY] = {}
    if mdata is not None:
        write_aligned_obsm(mdata, adata, obsm_key, embedding)
    logg.info(*_finished(obsm_key, key_added, layer_added, mdata is not None), time=start)
    result = adata if mdata is None else mdata
    if copy:
        return (result, trained) if return_model else result
    return trained if return_model else None


_TOOL_KEYWORDS = frozenset(inspect.signature(myvae).parameters) - {"data", "train_kwargs"}
"""The keywords :func:`myvae` takes itself; the others go to :meth:`myvae.MyVAE.train`."""
_TOOL_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(myvae).parameters.items()}
"""The default of each of :func:`myvae`'s arguments (with ``model=``, the model's own arguments keep theirs)."""


def _check_model_genes(model: MyVAE, adata: AnnData, inputs: Inputs) -> None:
    """Refuse data whose genes (those of ``mask_var``) are not the reused model's."""
    genes = adata.var_names if inputs.mask is None else adata.var_names[inputs.mask]
    try:
        check_same_genes(model.adata.var_names, genes)
    except InputError as error:
        if inputs.mask is None:
            raise
        where = f"var[{inputs.mask_var!r}]" if isinstance(inputs.mask_var, str) else "the mask"
        raise InputError(f"{error} (The data's genes here are those of mask_var: {where}.)") from None


def _outputs(
    trained: MyVAE,
    training_data: AnnData,
    adata: AnnData,
    inputs: Inputs,
    layer_added: str | None,
    library_size: float,
    transform_batch: str | Sequence[str] | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The embedding and the layers to write; a :class:`~myvae.TrainingDivergedError` if the embedding is not finite.

    ``layer_added`` covers all of ``adata``'s genes: NaN for those ``mask_var`` left out.
    """
    with quiet_training_logs():
        embedding = trained._embedding(training_data, ENCODING_BATCH_SIZE).astype(np.float32)
        layers = {}
        if layer_added is not None:
            expression = trained.get_normalized_expression(
                training_data, library_size=library_size, transform_batch=transform_batch, return_numpy=True
            ).astype(np.float32)
            if inputs.mask is not None:
                full = np.full(adata.shape, np.nan, dtype=np.float32)
                full[:, inputs.mask] = expression
                expression = full
            layers[layer_added] = expression
    if not np.isfinite(embedding).all():
        raise TrainingDivergedError(
            "The model gives a non-finite embedding for some cells (its weights are no longer finite); train it "
            "again with a lower learning rate (lr=). Nothing was written to the data."
        )
    return embedding, layers


def _warn_on_overwrite(
    adata: AnnData, mdata: MuData | None, obsm_key: str, layer_added: str | None, key_added: str
) -> None:
    """Warn, through scanpy's logging, about each existing entry the results replace."""
    replaced = [f"adata.obsm[{obsm_key!r}]"] if obsm_key in adata.obsm else []
    if layer_added is not None and layer_added in adata.layers:
        replaced.append(f"adata.layers[{layer_added!r}]")
    if key_added in adata.uns:
        replaced.append(f"adata.uns[{key_added!r}]")
    if mdata is not None and obsm_key in mdata.obsm:
        replaced.append(f"mdata.obsm[{obsm_key!r}]")
    for entry in replaced:
        logg.warning(f"Overwriting {entry} with the new myvae results.")


def _finished(obsm_key: str, key_added: str, layer_added: str | None, into_mudata: bool) -> tuple[str, str]:
    """The closing info message (what was added, and the time taken) and its details (shown at hint level)."""
    short = [f"{obsm_key!r} (obsm)", *([f"{layer_added!r} (layers)"] if layer_added else []), f"{key_added!r} (uns)"]
    lines = [f"{obsm_key!r}, the posterior mean of the latent code (obsm)"]
    if layer_added is not None:
        lines.append(f"{layer_added!r}, the denoised, normalised expression (layers)")
    lines.append(f"{key_added!r}, params, history, metrics (uns)")
    if into_mudata:
        short.append(f"{obsm_key!r} (mdata.obsm)")
        lines.append(f"{obsm_key!r}, aligned to the MuData's cells (mdata.obsm)")
    return "    finished ({time_passed}): added " + ", ".join(short), "added\n    " + "\n    ".join(lines)
