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
from pathlib import Path
from typing import Any

import torch

from myvae._exceptions import InputError

__all__ = ["FORMAT", "adata_path", "model_path", "prepare_directory", "read_model_file", "write_model_file"]

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
