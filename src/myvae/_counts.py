"""The counts and the batches: where they are, how they are read, and the checks they must pass.

Everything that reads a counts matrix or a batch column goes through here — :func:`myvae.pp.setup_counts`,
:func:`myvae.tl.myvae`, the model and the napari plugin alike — so that the rules and their messages exist once.
A matrix in memory (NumPy or SciPy sparse) is checked whole; a matrix on disk or computed lazily (a backed
AnnData's ``X``, an h5py or zarr array, a dask array) is read and checked a chunk of rows at a time
(:class:`RowChunks`), with the same rules and messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

from myvae._checked_files import once_per_open_file
from myvae._exceptions import InputError
from myvae._wording import counted

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CountsSummary",
    "RowChunks",
    "check_counts",
    "check_counts_in_chunks",
    "counts_location",
    "get_counts_matrix",
    "is_out_of_core",
    "raw_counts_advice",
    "select_genes",
    "summarise_counts",
]

DEFAULT_CHUNK_SIZE = 4096
"""Cells read from disk at a time."""


def get_counts_matrix(adata: AnnData, layer: str | None) -> Any:
    """The matrix holding the counts: ``adata.layers[layer]``, or ``adata.X`` when ``layer`` is ``None``."""
    if layer is None:
        if adata.X is None:
            raise InputError("adata.X is empty; pass `layer=` naming the layer that holds the raw counts.")
        return adata.X
    if layer not in adata.layers:
        # anndata >= 0.13 lists adata.X among the layers, under the key None
        available = ", ".join(repr(key) for key in adata.layers if key is not None) or "none"
        raise InputError(
            f"Layer {layer!r} does not exist (layers: {available}); pass one of them, or layer=None to use adata.X."
        )
    return adata.layers[layer]


def counts_location(layer: str | None) -> str:
    """How the user names the counts matrix, for messages: ``adata.X`` or ``adata.layers['…']``."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _is_dask(matrix: Any) -> bool:
    return type(matrix).__module__.startswith("dask.") and hasattr(matrix, "compute")


def _is_backed_sparse(matrix: Any) -> bool:
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(matrix, CSRDataset | CSCDataset)


def is_out_of_core(matrix: Any) -> bool:
    """Whether ``matrix`` lives on disk or is computed lazily.

    That is: a backed AnnData's ``X``, an h5py or zarr array, or a dask array.
    """
    package = type(matrix).__module__.split(".")[0]
    return _is_backed_sparse(matrix) or _is_dask(matrix) or package in ("h5py", "zarr")


class RowChunks:
    """A counts matrix read a chunk of consecutive rows (cells) at a time, as SciPy CSR matrices.

    Parameters
    ----------
    matrix
        Cells × genes: a NumPy array or SciPy sparse matrix, a backed AnnData's ``X`` (HDF5 or zarr, sparse or
        dense), a zarr or h5py array, or a dask array.
    chunk_size
        Rows per chunk.
    """

    def __init__(self, matrix: Any, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if len(getattr(matrix, "shape", ())) != 2:
            raise InputError(f"The counts must be a cells × genes matrix; got a {type(matrix).__name__}.")
        self.matrix = matrix
        self.shape = tuple(int(n) for n in matrix.shape)
        self.n_obs, self.n_vars = self.shape
        self.chunk_size = int(chunk_size)
        self._csr_group = _stored_csr_group(matrix)

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return ceil(self.n_obs / self.chunk_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """First row and one past the last row of chunk ``chunk``."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_obs)

    def read(self, start: int, stop: int, dtype: np.dtype | None = np.float32) -> sparse.csr_matrix:
        """Rows ``start:stop`` as a CSR matrix of ``dtype`` (``None``: the stored type)."""
        if self._csr_group is not None:
            return _read_csr_ranges(self._csr_group, [(start, stop)], self.n_vars, dtype, _new_array)
        block = self.matrix[start:stop]
        if _is_dask(block):
            block = block.compute()
        if not sparse.issparse(block):
            block = np.asarray(block)
        return sparse.csr_matrix(block, dtype=dtype)

    def read_chunks(self, chunks: Sequence[int], *, into: ReusedArrays | None = None) -> sparse.csr_matrix:
        """The rows of several chunks, one chunk after the other, as one float32 CSR matrix.

        Stored CSR counts are read straight into the arrays of the result, so memory holds the result and nothing
        else; other matrices are read a chunk at a time and stacked.

        Parameters
        ----------
        chunks
            The chunks, in the order their rows come in the result.
        into
            Read stored CSR counts into these arrays, overwriting the result of the previous read into them: for a
            caller that is done with it. Fresh memory costs the system about as much
            time as the reading itself.
        """
        ranges = [self.bounds(chunk) for chunk in chunks]
        if self._csr_group is not None:
            allocate = _new_array if into is None else into.take
            return _read_csr_ranges(self._csr_group, ranges, self.n_vars, np.float32, allocate)
        blocks = [self.read(start, stop) for start, stop in ranges]
        return blocks[0] if len(blocks) == 1 else sparse.vstack(blocks, format="csr")

    def stored_values(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every chunk's stored values (of the stored type) and the total counts of its cells, in row order.

        Stored CSR counts are summed from their values and row pointers alone, read into the same array each time;
        the values of a chunk are overwritten by the next one's.
        """
        if self._csr_group is None:
            for chunk in range(self.n_chunks):
                block = self.read(*self.bounds(chunk), dtype=None)
                yield block.data, np.asarray(block.sum(axis=1)).ravel()
            return
        stored, arrays = self._csr_group["data"], ReusedArrays()
        for chunk in range(self.n_chunks):
            start, stop = self.bounds(chunk)
            pointers = np.asarray(self._csr_group["indptr"][start : stop + 1], dtype=np.int64)
            values = arrays.take("values", int(pointers[-1] - pointers[0]), stored.dtype)
            _read_into(values, slice(0, len(values)), stored, slice(int(pointers[0]), int(pointers[-1])))
            yield values, _row_totals(values, pointers - pointers[0])

    def __iter__(self) -> Iterator[tuple[int, sparse.csr_matrix]]:
        """Every chunk in order, with its first row."""
        for chunk in range(self.n_chunks):
            start, stop = self.bounds(chunk)
            yield start, self.read(start, stop)


def _stored_csr_group(matrix: Any) -> Any | None:
    """The HDF5 or zarr group of a backed CSR matrix (its ``data``, ``indices`` and ``indptr``), else ``None``."""
    from anndata.abc import CSRDataset

    group = getattr(matrix, "group", None) if isinstance(matrix, CSRDataset) else None
    if group is None or not all(name in group for name in ("data", "indices", "indptr")):
        return None
    return group


def _read_csr_ranges(
    group: Any,
    ranges: Sequence[tuple[int, int]],
    n_vars: int,
    dtype: np.dtype | None,
    allocate: Callable[[str, int, np.dtype], np.ndarray],
) -> sparse.csr_matrix:
    """Row ranges of the CSR matrix stored in ``group``, one after the other, as a CSR matrix of ``dtype``.

    Each range is three contiguous reads (its ``indptr``, then its ``data`` and ``indices`` straight into the arrays
    of the result, which ``allocate(name, size, dtype)`` gives), without anndata's per-read checks (a package version
    lookup among them), which cost as much as reading the rows.
    """
    pointers = [np.asarray(group["indptr"][start : stop + 1], dtype=np.int64) for start, stop in ranges]
    sizes = np.array([pointer[-1] - pointer[0] for pointer in pointers], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n_stored = int(starts[-1])
    index_dtype = np.dtype(np.int32 if max(n_stored, n_vars) <= np.iinfo(np.int32).max else np.int64)
    stored_data, stored_indices = group["data"], group["indices"]
    data = allocate("data", n_stored, stored_data.dtype if dtype is None else np.dtype(dtype))
    indices = allocate("indices", n_stored, index_dtype)
    for pointer, start, size in zip(pointers, starts, sizes, strict=False):
        if size:
            source, target = slice(int(pointer[0]), int(pointer[-1])), slice(int(start), int(start + size))
            _read_into(data, target, stored_data, source)
            _read_into(indices, target, stored_indices, source)
    indptr = np.concatenate(
        [[0]] + [pointer[1:] - pointer[0] + start for pointer, start in zip(pointers, starts, strict=False)]
    )
    n_rows = sum(stop - start for start, stop in ranges)
    return sparse.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(n_rows, n_vars))


def _row_totals(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """The sum of each row of a CSR matrix, from its stored values and row pointers (64-bit, so no overflow)."""
    totals_dtype = np.float64 if np.issubdtype(values.dtype, np.floating) else np.int64
    totals = np.zeros(len(indptr) - 1, dtype=totals_dtype)
    stored = np.flatnonzero(np.diff(indptr))  # rows with stored values; each sums up to the next one's start
    if len(stored):
        totals[stored] = np.add.reduceat(values, indptr[stored], dtype=totals_dtype)
    return totals


def _new_array(name: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A new, uninitialised array (``name`` says what it is for, as :meth:`ReusedArrays.take` is told)."""
    return np.empty(size, dtype=dtype)


class ReusedArrays:
    """Flat arrays handed out again for each read, one per purpose, so that reading does not ask for fresh memory.

    An array too small or of another type is let go and replaced by a larger one, with room to spare so that
    slightly larger reads do not replace it again.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def take(self, name: str, size: int, dtype: np.dtype) -> np.ndarray:
        """The first ``size`` elements of the array for ``name``; whatever an earlier caller read there is lost."""
        array = self._arrays.pop(name, None)
        if array is None or array.dtype != dtype or array.size < size:
            capacity = size if array is None or array.dtype != dtype else max(size, array.size + array.size // 8)
            del array  # the old one goes before the new one is made
            array = np.empty(capacity, dtype=dtype)
        self._arrays[name] = array
        return array[:size]


def _read_into(target: np.ndarray, where: slice, dataset: Any, source: slice) -> None:
    """``target[where] = dataset[source]``, straight from the file for an HDF5 dataset (no intermediate array)."""
    if hasattr(dataset, "read_direct"):
        dataset.read_direct(target, source_sel=np.s_[source], dest_sel=np.s_[where])
    else:
        target[where] = dataset[source]


def _stored_values(matrix: Any) -> np.ndarray:
    """The explicitly stored values: every entry of a dense array, the non-zeros of a sparse one."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix)


def _refuse_non_numeric(dtype: np.dtype, where: str) -> None:
    """Refuse values that cannot be counts: booleans, complex numbers, strings, objects."""
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{where} has dtype {dtype}; it must hold counts as integers or floats.")


@dataclass
class CountsSummary:
    """What :func:`check_counts` needs to know about a matrix, summed over the row chunks it was read in.

    Attributes
    ----------
    dtype
        Data type of the stored values.
    n_not_finite
        NaN or infinite values.
    minimum
        Smallest stored value (0 when nothing is stored).
    non_integer
        Whether some value is not a whole number.
    n_empty
        Cells (rows) with zero total counts.
    """

    dtype: np.dtype
    n_not_finite: int = 0
    minimum: float = 0.0
    non_integer: bool = False
    n_empty: int = 0

    @classmethod
    def of(cls, matrix: Any, where: str) -> CountsSummary:
        """Summarise ``matrix`` (cells × genes, NumPy or SciPy sparse); refuse other types and shapes at once."""
        if not (sparse.issparse(matrix) or isinstance(matrix, np.ndarray)):
            raise InputError(
                f"{where} is a {type(matrix).__name__}; myvae takes a NumPy array or a SciPy sparse matrix of counts."
            )
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise InputError(f"{where} has shape {matrix.shape}; it needs at least one cell and one gene.")
        values = _stored_values(matrix)
        _refuse_non_numeric(values.dtype, where)
        return cls.of_values(values, np.asarray(matrix.sum(axis=1)).ravel(), where)

    @classmethod
    def of_values(cls, values: np.ndarray, row_totals: np.ndarray, where: str) -> CountsSummary:
        """Summarise a matrix from its stored values and the total counts of its cells."""
        _refuse_non_numeric(values.dtype, where)
        summary = cls(values.dtype, minimum=float(values.min()) if values.size else 0.0)
        if np.issubdtype(values.dtype, np.floating):
            finite = np.isfinite(values)
            summary.n_not_finite = values.size - int(np.count_nonzero(finite))
            if summary.n_not_finite:
                values = values[finite]
            summary.non_integer = not np.array_equal(values, np.round(values))
        summary.n_empty = int(np.count_nonzero(row_totals == 0))
        return summary

    def __add__(self, other: CountsSummary) -> CountsSummary:
        return CountsSummary(
            self.dtype,
            self.n_not_finite + other.n_not_finite,
            min(self.minimum, other.minimum),
            self.non_integer or other.non_integer,
            self.n_empty + other.n_empty,
        )

    @property
    def holds_counts(self) -> bool:
        """Whether every value is a finite, non-negative whole number (cells without counts aside)."""
        return not (self.n_not_finite or self.minimum < 0 or self.non_integer)

    def raise_for_problems(
        self,
        where: str,
        counts_elsewhere: Callable[[], str | None] | None = None,
        empty_cells_fix: str | None = None,
    ) -> None:
        """Raise an :class:`~myvae.InputError` naming the first problem and its fix, if the summary shows one.

        ``counts_elsewhere``, called only when the values look normalised, may name where the raw counts are and
        how to use them; the generic advice is given otherwise. ``empty_cells_fix`` replaces the advice for cells
        without counts (``sc.pp.filter_cells``, which counts every gene).
        """
        if self.n_not_finite:
            raise InputError(
                f"{where} holds {self.n_not_finite} NaN or infinite values; pass a matrix of raw counts "
                "(e.g. layer='counts'), or fix or remove the affected cells."
            )
        if self.minimum < 0:
            raise InputError(
                f"{where} holds negative values (minimum {self.minimum:g}); it looks scaled or centred. "
                "Pass the raw counts, e.g. layer='counts'."
            )
        if self.non_integer:
            fix = counts_elsewhere() if counts_elsewhere is not None else None
            raise InputError(
                f"{where} holds non-integer values (it looks log-normalised); "
                + (
                    fix
                    or "pass layer='counts' or the raw counts (for example, keep "
                    "`adata.layers['counts'] = adata.X.copy()` before normalising)."
                )
            )
        if self.n_empty:
            raise InputError(
                f"{where} has {counted(self.n_empty, 'cell')} with zero total counts; remove such cells first "
                + (empty_cells_fix or "with `sc.pp.filter_cells(adata, min_counts=1)`.")
            )


def summarise_counts(matrix: Any, where: str) -> CountsSummary:
    """The :class:`CountsSummary` of a whole matrix, read a chunk of rows at a time when it is on disk or lazy.

    A matrix without cells or genes is refused at once (:class:`~myvae.InputError`). Counts in an HDF5 file opened
    read-only are read once while the file stays unchanged (:mod:`myvae._checked_files`).
    """
    if is_out_of_core(matrix):
        return once_per_open_file(matrix, lambda: _summary_in_chunks(matrix, where, DEFAULT_CHUNK_SIZE))
    summary = CountsSummary.of(matrix, where)
    if matrix.shape[0] == 0:
        raise InputError(f"{where} has shape {matrix.shape}; it needs at least one cell and one gene.")
    return summary


def _summary_in_chunks(matrix: Any, where: str, chunk_size: int) -> CountsSummary:
    rows = RowChunks(matrix, chunk_size)
    if rows.n_obs == 0 or rows.n_vars == 0:
        raise InputError(f"{where} has shape {rows.shape}; it needs at least one cell and one gene.")
    summary = None
    for values, row_totals in rows.stored_values():
        chunk_summary = CountsSummary.of_values(values, row_totals, where)
        summary = chunk_summary if summary is None else summary + chunk_summary
    return summary


def check_counts(
    matrix: Any,
    where: str,
    *,
    counts_elsewhere: Callable[[], str | None] | None = None,
    empty_cells_fix: str | None = None,
) -> None:
    """Check that ``matrix`` holds raw counts: finite, non-negative integers, and no cell without counts.

    A matrix on disk or computed lazily (:func:`is_out_of_core`) is checked a chunk of rows at a time
    (:func:`check_counts_in_chunks`), with the same rules and messages.

    Parameters
    ----------
    matrix
        Cells × genes: a NumPy array or a SciPy sparse matrix, or anything :class:`RowChunks` reads.
    where
        How the user names the matrix (``"adata.X"``, ``"adata.layers['counts']"``), for the messages.
    counts_elsewhere
        Called only if the values look normalised: the advice naming where the raw counts are, or ``None``.
    empty_cells_fix
        How to remove cells without counts, where ``sc.pp.filter_cells`` would not (a subset of the genes).
    """
    summarise_counts(matrix, where).raise_for_problems(where, counts_elsewhere, empty_cells_fix)


def check_counts_in_chunks(matrix: Any, where: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
    """:func:`check_counts` for a matrix read a chunk of rows at a time (bounded memory).

    The rules and messages are those of the in-memory check; the counts of problems are summed over all chunks.
    """
    _summary_in_chunks(matrix, where, chunk_size).raise_for_problems(where)


def raw_counts_advice(adata: AnnData) -> str | None:
    """How to train on ``adata.raw`` when it holds raw counts for every gene of ``adata``; ``None`` otherwise.

    ``adata.raw`` always has the cells of ``adata``; it often keeps more genes (those dropped by selecting highly
    variable genes), so its counts are taken for ``adata``'s genes.
    """
    raw = adata.raw
    if raw is None or not adata.var_names.isin(raw.var_names).all():
        return None
    same_genes = raw.var_names.equals(adata.var_names)
    source = "adata.raw.X" if same_genes else "adata.raw[:, adata.var_names].X"
    try:
        summary = summarise_counts(raw.X if same_genes else raw[:, adata.var_names].X, source)
    except InputError:
        return None
    if not summary.holds_counts:
        return None
    return (
        "adata.raw holds the raw counts of these cells and genes: put them in a layer and pass it, "
        f"`adata.layers['counts'] = {source}`, then layer='counts'."
    )


def select_genes(matrix: Any, mask: np.ndarray | None) -> Any:
    """The columns (genes) of a counts matrix that ``mask`` selects, read as lazily as the matrix is.

    A matrix in memory is subset at once; a dask array stays lazy; a matrix on disk (a backed AnnData's ``X``, an
    h5py or zarr array) becomes a dask array that reads a chunk of rows at a time and keeps the selected columns.
    ``None`` (or a mask selecting every gene) returns ``matrix`` itself.
    """
    if mask is None or mask.all():
        return matrix
    if not is_out_of_core(matrix) or _is_dask(matrix):
        return matrix[:, mask]
    try:
        import dask
        import dask.array as da
    except ImportError as error:  # pragma: no cover - dask comes with anndata's lazy reading
        raise InputError(
            "Selecting genes of counts on disk needs dask (`pip install dask`); or pass mask_var=None to use all genes."
        ) from error
    rows = RowChunks(matrix)
    dtype = np.dtype(getattr(matrix, "dtype", np.float32))
    meta = sparse.csr_matrix((0, int(mask.sum())), dtype=dtype)

    def read(start: int, stop: int) -> sparse.csr_matrix:
        return rows.read(start, stop, dtype=None)[:, mask]

    blocks = []
    for chunk in range(rows.n_chunks):
        start, stop = rows.bounds(chunk)
        blocks.append(da.from_delayed(dask.delayed(read)(start, stop), shape=(stop - start, meta.shape[1]), meta=meta))
    return da.concatenate(blocks, axis=0)
