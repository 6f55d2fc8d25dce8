"""Saving and loading a trained :class:`~myvae.MyVAE` without pickling anything but tensors and plain data.

scvi-tools saves a model with ``torch.save`` of objects (pandas frames, registries) and loads it with
``torch.load(..., weights_only=False)``, which unpickles whatever the file holds, so loading a file from someone else
can run their code. myvae keeps scvi-tools' folder layout (``model.pt``, and ``adata.h5ad`` if asked) but writes only
tensors, strings, numbers, lists and dicts into ``model.pt``, and reads it back with ``weights_only=True``: a file
holding anything else is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad
from mudata import MuData
from scvi.model._utils import parse_device_args

from myvae._batches import batch_labels
from myvae._checks import check_same_genes
from myvae._data import resolve_data
from myvae._docs import LOAD_DEVICE, doc_params
from myvae._exceptions import InputError
from myvae._setup import bare_anndata, counts_copy, missing_batches

from ._backends import BACKENDS

if TYPE_CHECKING:
    from ._myvae import MyVAE

__all__ = [
    "FORMAT",
    "SaveLoadMixin",
    "adata_path",
    "model_path",
    "model_payload",
    "placeholder_anndata",
    "prepare_directory",
    "read_model_file",
    "restore_model",
    "write_model_file",
]

FORMAT = "myvae-model/1"
"""Written into every saved model; a file without it was not written by :meth:`myvae.MyVAE.save`."""


def model_path(dir_path: str | Path, prefix: str | None = None) -> Path:
    """The weights file of a model saved in ``dir_path``."""
    return Path(dir_path) / f"{prefix or ''}model.pt"


def adata_path(dir_path: str | Path, prefix: str | None = None) -> Path:
    """The AnnData saved beside the model, if it was saved with ``save_anndata=True``."""
    return Path(dir_path) / f"{prefix or ''}adata.h5ad"


def prepare_directory(dir_path: str | Path, overwrite: bool) -> Path:
    """Create the folder to save into, refusing an existing one unless ``overwrite`` is set."""
    path = Path(dir_path)
    if path.exists() and not overwrite:
        raise InputError(f"{str(path)!r} already exists; pass overwrite=True to replace it, or choose another folder.")
    if path.exists() and not path.is_dir():
        raise InputError(f"{str(path)!r} is a file, not a folder; choose a folder to save the model into.")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_model_file(payload: dict[str, Any], dir_path: str | Path, prefix: str | None = None) -> None:
    """Write ``payload`` (tensors and plain data only) as the model's weights file."""
    torch.save({"format": FORMAT, **payload}, model_path(dir_path, prefix))


def read_model_file(dir_path: str | Path, prefix: str | None = None) -> dict[str, Any]:
    """Read a weights file written by :func:`write_model_file`, unpickling nothing but tensors and plain data.

    Raises
    ------
    InputError
        If the file is missing, holds other objects (a pickle that could run code) or was not written by myvae.
    """
    path = model_path(dir_path, prefix)
    if not path.is_file():
        raise InputError(f"No saved model at {str(path)!r}; pass the folder given to `model.save(...)`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InputError(
            f"Refusing to load {str(path)!r}: it holds objects other than tensors and plain data, which loading "
            "could run as code, or it is damaged. Load only models saved with myvae's `model.save(...)`; "
            "re-save this one with myvae if you trust where it came from."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(
            f"{str(path)!r} was not saved by myvae (format {FORMAT!r}); save the model with `model.save(...)`."
        )
    return payload


def _optional_int(value: int | None) -> int | None:
    return None if value is None else int(value)


def _as_int_list(indices: Sequence[int] | None) -> list[int]:
    return [] if indices is None else [int(i) for i in indices]


def model_payload(model: MyVAE) -> dict[str, Any]:
    """What a saved model holds: the weights (tensors on the CPU), the settings and the history, as plain data.

    :meth:`~myvae.MyVAE.save` writes it into ``model.pt``; :func:`myvae.model.model_to_record` turns it into arrays
    for ``adata.uns``. :func:`restore_model` builds the model back from it.
    """
    setup_args = model.adata_manager.registry["setup_args"]
    history = {key: frame.to_numpy(dtype=float).ravel().tolist() for key, frame in (model.history_ or {}).items()}
    return {
        "model_state_dict": {key: value.detach().cpu() for key, value in model.module.state_dict().items()},
        "var_names": [str(name) for name in model.adata.var_names],
        "init_params": {"n_latent": model.n_latent, "n_hidden": model.n_hidden, "backend": model.backend},
        "setup": {
            "layer": setup_args.get("layer"),
            "batch_key": setup_args.get("batch_key"),
            "batch_categories": model.batch_categories,
        },
        "is_trained": bool(model.is_trained_),
        "restored_epoch": _optional_int(getattr(model, "restored_epoch_", None)),
        "history": history,
        "train_indices": _as_int_list(getattr(model, "train_indices_", None)),
        "validation_indices": _as_int_list(getattr(model, "validation_indices_", None)),
    }


def placeholder_anndata(var_names: Sequence[str], batch_key: str | None, batch_categories: Sequence[str]) -> AnnData:
    """One empty cell with the model's genes (and its first batch), to build a model around when no cells are given."""
    obs = pd.DataFrame(index=pd.Index(["placeholder"]))
    if batch_key is not None:
        obs[batch_key] = list(batch_categories)[:1]
    return bare_anndata(np.zeros((1, len(var_names)), dtype=np.float32), obs, pd.DataFrame(index=pd.Index(var_names)))


def restore_model(
    cls: type[MyVAE], payload: dict[str, Any], adata: AnnData, *, accelerator: str, device: int | str
) -> MyVAE:
    """Build the model described by a checked ``payload`` (see :func:`model_payload`) around ``adata``.

    ``adata`` must have the model's genes in the model's order and, for a model trained with batches, the batch
    column (made categorical with the model's batches, in the model's order); it is registered with
    :meth:`~myvae.MyVAE.setup_anndata`. Missing ``train_indices``/``validation_indices`` are left empty, a missing
    ``restored_epoch`` is ``None``.
    """
    setup = payload["setup"]
    batch_key = setup.get("batch_key")
    if batch_key is not None:
        if batch_key not in adata.obs.columns:
            raise InputError(missing_batches(batch_key))
        adata.obs[batch_key] = batch_labels(adata.obs[batch_key], setup["batch_categories"])
    cls._register_anndata(adata, layer=setup.get("layer"), batch_key=batch_key)
    model = cls(adata, **payload["init_params"])
    model.module.load_state_dict(payload["model_state_dict"])
    model.is_trained_ = payload["is_trained"]
    model.restored_epoch_ = payload.get("restored_epoch")  # absent in records and in files of earlier versions
    model.history_ = {key: pd.DataFrame({key: values}) for key, values in payload["history"].items()}
    model.train_indices_ = np.asarray(payload.get("train_indices", []), dtype=int)
    model.validation_indices_ = np.asarray(payload.get("validation_indices", []), dtype=int)
    _, _, torch_device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
    model.to_device(torch_device)
    model.module.eval()
    return model


class SaveLoadMixin:
    """Save and load of :class:`~myvae.MyVAE`: weights, settings and history as tensors and plain data only."""

    def save(
        self,
        dir_path: str | Path,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the trained model into a folder: weights and settings only, in a format that loads without pickle.

        Parameters
        ----------
        dir_path
            Folder to create.
        prefix
            Prefix of the file names inside the folder.
        overwrite
            Replace the folder if it exists; otherwise an existing folder is an error and nothing is written.
        save_anndata
            Also save the model's AnnData (``adata.h5ad``), so that :meth:`load` needs no ``adata``.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad`.
        """
        path = prepare_directory(dir_path, overwrite)
        write_model_file(model_payload(self), path, prefix)
        if save_anndata:
            self.adata.write_h5ad(adata_path(path, prefix), **anndata_write_kwargs)

    @classmethod
    def saved_genes(cls, dir_path: str | Path, prefix: str | None = None) -> pd.Index:
        """The genes, in order, of a model saved with :meth:`save` in ``dir_path``."""
        return pd.Index(read_model_file(dir_path, prefix)["var_names"])

    @classmethod
    @doc_params(load_device=LOAD_DEVICE)
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | MuData | None = None,
        *,
        mod: str | None = None,
        prefix: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> Self:
        """Load a model saved with :meth:`save`, refusing data with other genes and files that are not plain data.

        The weights file is read with ``torch.load(..., weights_only=True)``: a file that holds anything but
        tensors and plain data — a pickle that could run code — is refused with an :class:`~myvae.InputError`
        before any of it runs. The model is attached to a checked copy of ``adata``'s counts of its genes, from the
        layer that ``adata``'s :func:`~myvae.pp.setup_counts` or :func:`~myvae.tl.myvae` record names, else from
        the model's own; ``adata`` itself is not modified. For a model trained with batches,
        ``adata.obs[batch_key]`` must hold only the model's batches.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Data to attach, with the model's genes in the model's order (other genes may come between them);
            ``None`` uses the AnnData saved with the model (``save_anndata=True``). A MuData with ``mod``.
        mod
            For a MuData: the modality that holds the counts; the model's batch column may be one of the modality's
            or of ``mdata.obs``.
        prefix
            Prefix given to :meth:`save`.
        {load_device}

        Returns
        -------
        The trained model, in evaluation mode.
        """
        saved = read_model_file(dir_path, prefix)
        if adata is None:
            if mod is not None:
                raise InputError(f"mod={mod!r} names a modality of adata=, but adata= is not given; pass the MuData.")
            if not adata_path(dir_path, prefix).is_file():
                raise InputError(
                    f"The model in {str(dir_path)!r} was saved without its data; pass adata= with the model's genes."
                )
            adata = read_h5ad(adata_path(dir_path, prefix))
            check_same_genes(pd.Index(saved["var_names"]), adata.var_names)
        else:  # the caller's: attach the model to a checked copy of its counts, from the layer they are in
            setup = saved["setup"]
            adata, mdata = resolve_data(adata, mod, "MyVAE.load")
            genes = pd.Index(saved["var_names"])
            adata = counts_copy(adata, genes, setup.get("layer"), setup.get("batch_key"), mdata=mdata, mod=mod)
            saved = {**saved, "setup": {**setup, "layer": None}}
        backend = saved["init_params"]["backend"]
        if backend not in BACKENDS:
            raise InputError(
                f"The model was trained with backend {backend!r}, which is not registered in this session; "
                "register it with myvae.model.register_backend before loading."
            )
        return restore_model(cls, saved, adata, accelerator=accelerator, device=device)

    @classmethod
    @doc_params(load_device=LOAD_DEVICE)
    def from_anndata(
        cls,
        adata: AnnData | MuData,
        key: str = "myvae",
        *,
        mod: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> Self:
        """The model an AnnData carries in ``adata.uns[key]["model"]`` (written by :func:`myvae.tl.myvae`).

        The record holds only arrays and scalars and is checked before use (see
        :func:`~myvae.model.model_from_record`): a malformed or altered one is refused with an
        :class:`~myvae.InputError`, and loading runs no code. The model is attached to a new AnnData around the
        carrying AnnData's counts (the layer ``tl.myvae`` trained on, else ``uns["myvae_setup"]``'s, else ``X``) of
        the model's genes (all of them, or those ``mask_var`` chose; counts on disk stay there) and a copy of its
        ``obs`` columns, when it has them all; otherwise to a placeholder with the model's genes and one empty cell.
        ``adata`` itself is never modified.

        Parameters
        ----------
        adata
            AnnData written by ``mv.tl.myvae(adata, key_added=key)``, or a MuData written by
            ``mv.tl.myvae(mdata, mod=..., key_added=key)`` with the same ``mod``, in this session or read back from an
            h5ad/h5mu file.
        key
            The ``key_added`` it was trained with.
        mod
            For a MuData: the modality the model was trained on (it carries the model); the model's batch column may
            be one of the modality's or of ``mdata.obs``, as in training.
        {load_device}

        Returns
        -------
        The trained model, in evaluation mode.
        """
        from ._record import model_from_anndata  # the record module builds models of this class

        return model_from_anndata(adata, key, mod=mod, accelerator=accelerator, device=device)
