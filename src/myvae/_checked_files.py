"""Counts on disk are checked once per open file: the summaries of counts in HDF5 files opened read-only.

:func:`myvae.pp.setup_counts` reads a backed AnnData's counts from end to end to check them, and
:func:`myvae.tl.myvae` checks them again before it trains, as data in memory may have changed in between (a
normalised ``X``, say). Counts in an HDF5 file that this process holds open read-only cannot change while it does
(HDF5 locks the file against writers), so their summary is kept, keyed by the open file, its path, size and
modification time, the matrix's place in it and its shape: a second check through the same open file reads
nothing. Anything else (data in memory, a file opened for writing, zarr, dask, the file opened anew) is read again.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["once_per_open_file"]

Summary = TypeVar("Summary")

_KEPT = 16
"""How many files' summaries are kept (the least recently used is forgotten first)."""

_summaries: OrderedDict[Hashable, Any] = OrderedDict()


def once_per_open_file(matrix: Any, summarise: Callable[[], Summary]) -> Summary:
    """``summarise()``, or the summary it gave for the same matrix of the same HDF5 file, still open read-only."""
    key = _identity(matrix)
    if key is None:
        return summarise()
    if key in _summaries:
        _summaries.move_to_end(key)
        return _summaries[key]
    summary = summarise()
    _summaries[key] = summary
    if len(_summaries) > _KEPT:
        _summaries.popitem(last=False)
    return summary


def _identity(matrix: Any) -> tuple | None:
    """What identifies a matrix in an HDF5 file opened read-only; ``None`` for any other matrix.

    That is the open file (its HDF5 identifier, real path, size and modification time), the matrix's path in it and
    its shape.
    """
    node = getattr(matrix, "group", matrix)  # a backed AnnData's sparse X is a group of three datasets
    if type(node).__module__.split(".")[0] != "h5py":
        return None
    file = node.file
    if file.mode != "r":
        return None
    try:
        status = os.stat(file.filename)
    except (OSError, TypeError, ValueError):  # a file object, not a path: nothing to tell a rewritten file by
        return None
    where = (os.path.realpath(file.filename), status.st_size, status.st_mtime_ns, node.name, tuple(matrix.shape))
    return file.id.id, *where
