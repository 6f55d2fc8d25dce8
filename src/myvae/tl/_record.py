"""The record :func:`myvae.tl.myvae` leaves in ``uns[key_added]``: what shaped the result, and how well it fits.

``params`` holds every argument that shaped the result (the training settings with their defaults filled in, or
the reused model), the counts and batches trained on, the outputs written and the package versions; ``history``
the per-epoch ELBO; ``metrics`` the fit. Everything is stored as h5ad can store it.
"""

from __future__ import annotations

from importlib.metadata import version
from os import PathLike
from typing import Any

import numpy as np
from anndata import AnnData

from myvae._counts import counts_location
from myvae.model import MyVAE
from myvae.model._defaults import DEFAULT_BATCH_SIZE
from myvae.model._quiet import quiet_training_logs
from myvae.model._record import model_source

__all__ = ["VERSIONED_PACKAGES", "assemble_record", "fit_metrics", "history_as_elbo", "storable"]

VERSIONED_PACKAGES = ("myvae", "scvi-tools", "torch", "pyro-ppl", "anndata")
"""The packages whose versions every record holds."""


def history_as_elbo(model: MyVAE) -> dict[str, np.ndarray]:
    """Per-epoch training and held-out ELBO per cell (higher is better; scvi-tools logs its negative)."""
    return {
        key: -model.history[key].to_numpy(dtype=np.float64).ravel()
        for key in ("elbo_train", "elbo_validation")
        if model.history_ is not None and key in model.history_
    }


def fit_metrics(
    model: MyVAE, training_data: AnnData, history: dict[str, np.ndarray], *, pretrained: bool
) -> dict[str, float]:
    """How well the returned model fits: its training and held-out ELBO and held-out reconstruction error per cell.

    The ELBO is the history's at the epoch whose weights the model has: the restored best epoch under early
    stopping (``restored_epoch``, counting from 1), else the last. For a reused model, the ELBO and reconstruction
    error of the cells it embedded.
    """
    if pretrained:
        return {
            "elbo": model.get_elbo(training_data, batch_size=DEFAULT_BATCH_SIZE),
            "reconstruction_error": model.get_reconstruction_error(training_data, batch_size=DEFAULT_BATCH_SIZE)[
                "reconstruction_loss"
            ],
        }
    restored = getattr(model, "restored_epoch_", None)
    epoch = -1 if restored is None else restored - 1
    metrics = {f"final_{key}": float(values[epoch]) for key, values in history.items() if len(values)}
    if restored is not None:
        metrics["restored_epoch"] = restored
    if len(model.validation_indices):
        metrics["reconstruction_error_validation"] = _held_out_reconstruction_error(model, training_data, epoch)
    return metrics


def _held_out_reconstruction_error(model: MyVAE, training_data: AnnData, epoch: int) -> float:
    """The reconstruction error per held-out cell of the model's weights, those of epoch ``epoch`` (0-based).

    The PyTorch backend's validation pass logs it at every epoch, with the weights the model keeps from that epoch,
    so it is read from the history; otherwise (the Pyro backend logs the ELBO alone, or validation skipped epochs)
    one more pass over the held-out cells computes it, with another draw of :math:`z`.
    """
    history = model.history_ or {}
    logged, epochs = history.get("reconstruction_loss_validation"), history.get("elbo_train")
    if logged is not None and epochs is not None and len(logged) == len(epochs):
        return float(logged.to_numpy(dtype=np.float64).ravel()[epoch])
    # increasing order: the mean does not depend on it, and counts on disk are read that way
    validation = np.sort(model.validation_indices)
    error = model.get_reconstruction_error(training_data, indices=validation, batch_size=DEFAULT_BATCH_SIZE)
    return error["reconstruction_loss"]


def storable(value: Any) -> Any:
    """``value`` if an h5ad file can store it as a parameter, otherwise its ``repr``."""
    if isinstance(value, str | bool | int | float | np.number):
        return value
    if isinstance(value, dict):
        return {str(key): storable(item) for key, item in value.items() if item is not None}
    return repr(value)


def assemble_record(
    trained: MyVAE,
    training_data: AnnData,
    *,
    reused: MyVAE | AnnData | str | PathLike | None,
    random_state: int,
    layer: str | None,
    batch_key: str | None,
    mask_var: str | np.ndarray | None,
    outputs: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``uns[key_added]`` for a run: its ``params``, ``history`` and ``metrics``.

    Parameters
    ----------
    trained
        The model that embedded the cells.
    training_data
        The cells it embedded, as the model reads them.
    reused
        The ``model=`` argument of a run that reused a model; ``None`` when the run trained ``trained``.
    random_state
        The run's seed.
    layer
        The layer holding the counts (``None``: ``X``).
    batch_key
        The batch column, if any.
    mask_var
        The genes modelled: a ``var`` column's name, a boolean mask, or ``None`` for all genes.
    outputs
        The keys the run writes.
    extra
        Further parameters (e.g. about cells of batches a reused model never saw).
    """
    history = history_as_elbo(trained)
    with quiet_training_logs():
        metrics = fit_metrics(trained, training_data, history, pretrained=reused is not None)
    params = {"backend": trained.backend, "n_latent": trained.n_latent, "n_hidden": trained.n_hidden}
    if reused is None:
        params.update(storable(trained.training_settings_.as_record()))
    else:
        params["model"] = model_source(reused)
    params.update(
        {
            "random_state": random_state,
            "counts": counts_location(layer),
            "layer": layer,
            **({"batch_key": batch_key, "batches": trained.batch_categories} if batch_key else {}),
            "mask_var": mask_var,
            "n_genes": training_data.n_vars,
            "pretrained": reused is not None,
            "epochs_trained": len(history.get("elbo_train", ())),
            **(extra or {}),
            "outputs": outputs,
            "versions": {package: version(package) for package in VERSIONED_PACKAGES},
        }
    )
    return {"params": params, "history": history, "metrics": metrics}
