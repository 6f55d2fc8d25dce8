"""The trained model as a record of plain arrays and scalars, carried by an AnnData in ``uns``.

:func:`myvae.tl.myvae` stores :func:`~myvae.model.model_to_record`'s record in ``adata.uns[key_added]["model"]``, where
it survives ``write_h5ad``/``read_h5ad`` and, in a MuData's modality, ``.h5mu`` files: the weights as ``float32``
arrays, the constructor arguments, the genes, the setup (layer, batch column, batches), the backend's name, the format
and a SHA-256 checksum. :func:`model_from_record` builds the model back. Like :meth:`myvae.MyVAE.load` it runs no code
from the record: nothing in it is unpickled or evaluated, and every entry — keys, types, dtypes, the backend, the
weights' shapes against the constructor arguments, the checksum — is checked before a model is built.

The checksum detects a record changed after it was written (a damaged file, an edited weight). It is not a
signature: whoever can edit the record can also recompute it, so trust a record as far as the file it came in.
The record holds the same weights, settings and history as :meth:`~myvae.MyVAE.save`'s ``model.pt``
(:func:`~myvae.model._save_load.model_payload`), but not the indices of the training and held-out cells, whose size
grows with the number of cells.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData

from myvae import _logging as logg
from myvae._data import resolve_data
from myvae._docs import LOAD_DEVICE, doc_params
from myvae._exceptions import InputError
from myvae._setup import counts_copy, model_genes_mask

from ._backends import BACKENDS
from ._myvae import MyVAE
from ._quiet import quiet_training_logs
from ._save_load import model_payload, placeholder_anndata, read_model_file, restore_model

__all__ = [
    "RECORD_FORMAT",
    "carried_model",
    "model_for_query",
    "model_from_anndata",
    "model_from_record",
    "model_to_record",
]

RECORD_FORMAT = "myvae-record/1"
"""Written into every record; a record of another format is refused."""
_ENTRIES = ("format", "backend", "init_params", "var_names", "setup", "is_trained", "history", "weights", "checksum")
_REMAKE = (
    "Store the model again with mv.tl.myvae(adata) (store_model=True, the default) or mv.model.model_to_record(model)"
)


def model_to_record(model: MyVAE) -> dict[str, Any]:
    """The model as a dict of arrays and scalars that ``adata.uns`` can hold and h5ad/h5mu files can store.

    Parameters
    ----------
    model
        A :class:`~myvae.MyVAE` (usually trained).

    Returns
    -------
    ``format``, ``backend``, ``init_params`` (``n_latent``, ``n_hidden``), ``var_names`` (the genes, in order),
    ``setup`` (``batch_categories``, and ``layer`` and ``batch_key`` when set), ``is_trained``, ``history`` (one
    ``float64`` array per metric), ``weights`` (one ``float32`` array per entry of the module's ``state_dict``) and
    ``checksum``. About 1.6 KB per gene at the default sizes (``n_latent=10``, ``n_hidden=128``): 3.2 MB for 2,000
    genes in an h5ad file.
    """
    payload = model_payload(model)
    # h5ad stores no None: a setting that was not made is left out
    setup = {key: value for key, value in payload["setup"].items() if value is not None}
    setup["batch_categories"] = np.asarray(setup["batch_categories"], dtype=object)
    record = {
        "format": RECORD_FORMAT,
        "backend": str(payload["init_params"]["backend"]),
        "init_params": {name: int(payload["init_params"][name]) for name in ("n_latent", "n_hidden")},
        "var_names": np.asarray(payload["var_names"], dtype=object),
        "setup": setup,
        "is_trained": bool(payload["is_trained"]),
        "history": {key: np.asarray(values, dtype=np.float64) for key, values in payload["history"].items()},
        "weights": {name: tensor.numpy().astype(np.float32) for name, tensor in payload["model_state_dict"].items()},
    }
    record["checksum"] = _checksum(_read({**record, "checksum": ""}))
    return record


@doc_params(load_device=LOAD_DEVICE)
def model_from_record(
    record: Mapping[str, Any], adata: AnnData | None = None, *, accelerator: str = "auto", device: int | str = "auto"
) -> MyVAE:
    """Build the model a record (:func:`~myvae.model.model_to_record`) describes, after checking every entry of it.

    Nothing in the record is run: it holds only arrays and scalars, and its keys, types, ``float32`` weights, their
    shapes against the constructor arguments, the backend and the checksum are all checked before the model is built.

    Parameters
    ----------
    record
        ``adata.uns[key]["model"]``, in memory or read back from an h5ad/h5mu file.
    adata
        Cells to attach, with the model's genes in the model's order. The model gets a new AnnData around their
        counts (the layer their :func:`~myvae.tl.myvae` or :func:`~myvae.pp.setup_counts` record names; without
        one, the model's layer, else ``X``) and, for a model trained with batches, their batch column; ``adata``
        itself is not modified. ``None``
        attaches a placeholder with the model's genes and one empty cell: pass cells to the model's methods then,
        e.g. ``model.get_latent_representation(new_cells)``, or embed them with ``mv.tl.myvae(new_cells, model=...)``.
    {load_device}

    Returns
    -------
    The :class:`~myvae.MyVAE`, in evaluation mode.

    Raises
    ------
    myvae.InputError
        If the record is malformed, was altered after it was written, names a backend not registered in this
        session, or ``adata`` lacks the model's genes, counts or batches.

    Examples
    --------
    >>> import myvae as mv
    >>> adata = mv.datasets.pbmc3k()[:300, :500].copy()
    >>> mv.tl.myvae(adata, max_epochs=2, progress=False)
    >>> record = adata.uns["myvae"]["model"]  # the same after adata.write_h5ad(...) and ad.read_h5ad(...)
    >>> model = mv.model.model_from_record(record, adata[:100])
    >>> model.get_latent_representation().shape
    (100, 10)
    """
    return _attach(_checked(record), adata, accelerator=accelerator, device=device)


def model_from_anndata(
    data: AnnData | MuData,
    key: str = "myvae",
    *,
    mod: str | None = None,
    accelerator: str = "auto",
    device: int | str = "auto",
) -> MyVAE:
    """The model ``adata.uns[key]["model"]`` holds, attached to ``adata``'s counts if it has the model's genes.

    The implementation of :meth:`myvae.MyVAE.from_anndata`. When the model was trained on some of ``adata``'s genes
    (``mask_var``), it is attached to those genes of ``adata``; without some of the model's genes (e.g. the AnnData
    was subset after training) to a placeholder, as :func:`model_from_record` does without ``adata``.
    """
    adata, mdata = resolve_data(data, mod, "MyVAE.from_anndata")
    payload = _checked(_carried_record(adata, key, "MyVAE.from_anndata"))
    model_genes = pd.Index(payload["var_names"])
    if not model_genes.equals(adata.var_names) and model_genes_mask(model_genes, adata.var_names) is None:
        logg.info("adata lacks some of the model's genes; the model is attached to a placeholder with its genes.")
        return _attach(payload, None, accelerator=accelerator, device=device)
    return _attach(payload, adata, accelerator=accelerator, device=device, key=key, mdata=mdata, mod=mod)


def carried_model(adata: AnnData, func: str) -> MyVAE:
    """The model the one ``adata.uns[key]["model"]`` holds, whatever ``key`` (the ``key_added`` of its training).

    It is attached to a placeholder with its genes, for a caller that reads the counts itself; ``func`` names it in
    the errors. Several models are an :class:`~myvae.InputError` that asks to choose one.
    """
    key = _carrying_key(adata, func)
    return _attach(_checked(_carried_record(adata, key, func)), None, accelerator="auto", device="auto")


_QUERY = "tl.myvae(model=...)"
"""How the errors of a query name the call."""


def model_for_query(model: Any, *, accelerator: str) -> MyVAE:
    """For ``tl.myvae(new_cells, model=...)``: the trained model a folder or a carrying AnnData holds.

    The model is attached to a placeholder with its genes; :func:`myvae.tl.myvae` then embeds the new cells with it.
    The carrier's single ``uns[key]["model"]`` is used; with several, an :class:`~myvae.InputError` asks for
    ``model=mv.MyVAE.from_anndata(carrier, key=...)``.
    """
    if isinstance(model, AnnData | MuData):
        payload = _checked(_carried_record(model, _carrying_key(model, _QUERY), _QUERY))
    else:
        payload = read_model_file(model)
        _check_registered(payload["init_params"]["backend"])
    if not payload["is_trained"]:
        raise InputError("model= holds a model, but the model is untrained; train it first, or leave model= out.")
    return _attach(payload, None, accelerator=accelerator, device="auto")


def model_source(model: Any) -> str:
    """How ``uns[key_added]["params"]["model"]`` names a reused model: an object, an AnnData's record or a folder."""
    if isinstance(model, MyVAE):
        return "MyVAE object"
    if isinstance(model, AnnData):
        return f"AnnData uns[{_carrying_key(model, _QUERY)!r}]['model']"
    return str(model)


def _carried_record(carrier: Any, key: str, func: str) -> Any:
    if isinstance(carrier, MuData):
        modalities = ", ".join(repr(name) for name in carrier.mod) or "none"
        raise InputError(
            f"{func} takes the AnnData that carries the model; for a MuData pass its modality, e.g. mdata['rna'] "
            f"(modalities: {modalities})."
        )
    if not isinstance(carrier, AnnData):
        raise InputError(f"{func} takes an AnnData that carries a model, got {type(carrier).__name__}.")
    if key not in carrier.uns:
        raise InputError(
            f"{func}: adata.uns has no {key!r}, so the AnnData carries no model there; train one with "
            "mv.tl.myvae(adata) (store_model=True, the default), or, for a model trained with another key_added, "
            "name that key: mv.MyVAE.from_anndata(adata, key=...)."
        )
    entry = carrier.uns[key]
    if not isinstance(entry, Mapping) or "model" not in entry:
        raise InputError(
            f"{func}: adata.uns[{key!r}] holds no model (it was trained with store_model=False); train again with "
            "store_model=True (the default), or reuse the model object or a folder written by model.save(...)."
        )
    return entry["model"]


def _carrying_key(carrier: Any, func: str) -> str:
    """The key of the one ``uns`` entry of ``carrier`` that holds a model (``"myvae"`` if none does)."""
    uns = carrier.uns if isinstance(carrier, AnnData) else {}
    keys = [key for key, entry in uns.items() if isinstance(entry, Mapping) and "model" in entry]
    if len(keys) > 1:
        raise InputError(
            f"{func}: the AnnData carries several models ({', '.join(f'uns[{key!r}]' for key in keys)}); "
            f"choose one with model=mv.MyVAE.from_anndata(adata, key={keys[0]!r})."
        )
    return keys[0] if keys else "myvae"


def _attach(
    payload: dict[str, Any],
    adata: AnnData | None,
    *,
    accelerator: str,
    device: int | str,
    key: str = "myvae",
    mdata: MuData | None = None,
    mod: str | None = None,
) -> MyVAE:
    """Build the checked model around a new AnnData of ``adata``'s counts, or around a placeholder.

    The counts are in the layer ``adata``'s records name (``key``: its ``tl.myvae`` record), else the model's, of
    the model's genes (see :func:`~myvae._setup.counts_copy`, which also finds the batches of a MuData's modality
    ``mod`` in ``mdata.obs``); counts on disk stay there.
    """
    setup = payload["setup"]
    if adata is None:
        data = placeholder_anndata(payload["var_names"], setup["batch_key"], setup["batch_categories"])
        with warnings.catch_warnings():  # scvi-tools' warning that one cell is too few to train on
            warnings.filterwarnings("ignore", message=r"Category .* has fewer than 3 cells")
            return _build(payload, data, accelerator=accelerator, device=device)
    genes = pd.Index(payload["var_names"])
    data = counts_copy(adata, genes, setup["layer"], setup["batch_key"], key=key, mdata=mdata, mod=mod)
    return _build(payload, data, accelerator=accelerator, device=device)


def _build(payload: dict[str, Any], data: AnnData, *, accelerator: str, device: int | str) -> MyVAE:
    """The model around ``data``, a bare AnnData whose ``X`` holds the counts."""
    payload = {**payload, "setup": {**payload["setup"], "layer": None}}
    with quiet_training_logs():
        return restore_model(MyVAE, payload, data, accelerator=accelerator, device=device)


def _checked(record: Any) -> dict[str, Any]:
    """The save-format payload (:func:`~myvae.model._save_load.model_payload`) of a record that passes every check.

    An :class:`~myvae.InputError` names the first problem otherwise.
    """
    payload = _read(record)
    _check_registered(payload["init_params"]["backend"])
    _check_shapes(payload)
    if record["checksum"] != _checksum(payload):
        raise InputError(
            "The model record's checksum does not match its weights and settings: it was changed after it was "
            f"written, or damaged. {_REMAKE}."
        )
    return payload


def _check_registered(backend: str) -> None:
    if backend not in BACKENDS:
        raise InputError(
            f"The model names backend {backend!r}, which is not registered in this session (backends: "
            f"{', '.join(map(repr, BACKENDS))}); register it with myvae.model.register_backend before loading."
        )


def _malformed(problem: str) -> InputError:
    return InputError(f"The model record is malformed: {problem}. {_REMAKE}.")


def _entries(
    value: Any, where: str, keys: tuple[str, ...] | None = None, optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """``value`` if it is a dict with exactly ``keys`` (and any of ``optional``); any keys when ``keys`` is None."""
    if not isinstance(value, Mapping):
        raise _malformed(f"{where} is a {type(value).__name__}, not a dict")
    if keys is None:
        return value
    missing = [key for key in keys if key not in value]
    unexpected = sorted(str(key) for key in value if key not in keys + optional)
    if missing:
        raise _malformed(f"{where} lacks {', '.join(map(repr, missing))}")
    if unexpected:
        raise _malformed(f"{where} holds unexpected entries {', '.join(map(repr, unexpected))}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _malformed(f"{where} is a {type(value).__name__}, not a string")
    return str(value)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or value < 1:
        raise _malformed(f"{where} is {value!r}, not a positive integer")
    return int(value)


def _texts(value: Any, where: str) -> list[str]:
    # object, fixed-width or (as zarr returns them with NumPy 2) variable-width strings
    is_array = isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "OUT"
    if not (is_array or isinstance(value, list | tuple)) or not all(isinstance(item, str) for item in value):
        raise _malformed(f"{where} is not a list of strings")
    if len(value) == 0:
        raise _malformed(f"{where} is empty")
    return [str(item) for item in value]


def _array(value: Any, where: str, kind: str) -> np.ndarray:
    """A NumPy array of ``float32`` (``kind="float32"``) or of any float type (``kind="float"``)."""
    fits = isinstance(value, np.ndarray) and (
        value.dtype == np.float32 if kind == "float32" else value.dtype.kind == "f"
    )
    if not fits:
        described = f"an array of {value.dtype}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
        raise _malformed(f"{where} is {described}, not an array of {kind}")
    return value


def _read(record: Any) -> dict[str, Any]:
    """The record's entries, type by type, as the save-format payload; no shape or checksum check yet."""
    if isinstance(record, Mapping) and record.get("format") != RECORD_FORMAT and isinstance(record.get("format"), str):
        raise InputError(
            f"The model record has format {record['format']!r}; this version of myvae reads {RECORD_FORMAT!r}. "
            f"Use the myvae version that wrote it, or: {_REMAKE}."
        )
    record = _entries(record, "the record", _ENTRIES)
    _text(record["format"], "'format'")
    _text(record["checksum"], "'checksum'")
    init = _entries(record["init_params"], "'init_params'", ("n_latent", "n_hidden"))
    setup = _entries(record["setup"], "'setup'", ("batch_categories",), optional=("layer", "batch_key"))
    batch_key = _text(setup["batch_key"], "setup['batch_key']") if "batch_key" in setup else None
    categories = _texts(setup["batch_categories"], "setup['batch_categories']")
    if batch_key is None and len(categories) != 1:
        raise _malformed(f"setup has {len(categories)} batch categories but no batch_key")
    if len(set(categories)) != len(categories):
        raise _malformed("setup['batch_categories'] repeats a batch")
    if not isinstance(record["is_trained"], bool | np.bool_):
        raise _malformed(f"'is_trained' is a {type(record['is_trained']).__name__}, not a bool")
    history = _entries(record["history"], "'history'")
    weights = _entries(record["weights"], "'weights'")
    return {
        "model_state_dict": {
            str(name): torch.tensor(_array(value, f"weights[{name!r}]", "float32")) for name, value in weights.items()
        },
        "var_names": _texts(record["var_names"], "'var_names'"),
        "init_params": {
            "n_latent": _positive_int(init["n_latent"], "init_params['n_latent']"),
            "n_hidden": _positive_int(init["n_hidden"], "init_params['n_hidden']"),
            "backend": _text(record["backend"], "'backend'"),
        },
        "setup": {
            "layer": _text(setup["layer"], "setup['layer']") if "layer" in setup else None,
            "batch_key": batch_key,
            "batch_categories": categories,
        },
        "is_trained": bool(record["is_trained"]),
        "history": {
            str(key): _array(value, f"history[{key!r}]", "float").astype(np.float64).ravel().tolist()
            for key, value in history.items()
        },
    }


def _check_shapes(payload: dict[str, Any]) -> None:
    """Refuse weights that are not exactly those of a module built with the record's constructor arguments."""
    init, n_genes = payload["init_params"], len(payload["var_names"])
    n_batch = len(payload["setup"]["batch_categories"])
    with torch.device("meta"):  # shapes only: no memory, no values
        module = BACKENDS[init["backend"]](
            n_genes,
            n_latent=init["n_latent"],
            n_hidden=init["n_hidden"],
            **({"n_batch": n_batch} if n_batch > 1 else {}),
        )
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    weights = payload["model_state_dict"]
    described = (
        f"a {init['backend']!r} model of {n_genes} genes, n_latent={init['n_latent']}, n_hidden={init['n_hidden']}"
        + (f" and {n_batch} batches" if n_batch > 1 else "")
    )
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise _malformed(f"its weights are not those of {described} (missing {missing}, unexpected {unexpected})")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise _malformed(f"weights[{name!r}] has shape {tuple(weights[name].shape)}; {described} has {shape}")


def _checksum(payload: dict[str, Any]) -> str:
    """SHA-256 over the format, the settings, the genes, the history and every weight's name, shape and bytes."""
    digest = hashlib.sha256()
    settings = {key: value for key, value in payload.items() if key != "model_state_dict"}
    digest.update(json.dumps({"format": RECORD_FORMAT, **settings}, sort_keys=True).encode())
    for name in sorted(payload["model_state_dict"]):
        values = payload["model_state_dict"][name].numpy()
        digest.update(f"\n{name}{list(values.shape)}\n".encode())
        digest.update(np.ascontiguousarray(values, dtype="<f4").tobytes())
    return f"sha256:{digest.hexdigest()}"
