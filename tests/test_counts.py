"""myvae._counts: counts in memory and on disk read a chunk of rows at a time, and checked chunk by chunk."""

import anndata as ad
import h5py
import numpy as np
import pytest
import zarr
from scipy import sparse

from myvae import InputError
from myvae._counts import RowChunks, check_counts_in_chunks, is_out_of_core


def test_row_chunks_of_a_backed_h5ad_give_the_in_memory_rows(small_adata, backed_adata):
    rows = RowChunks(backed_adata.X, chunk_size=23)
    assert is_out_of_core(backed_adata.X) and not is_out_of_core(small_adata.X)
    assert rows.n_chunks == 4 and rows.bounds(3) == (69, 80)
    read = sparse.vstack([chunk for _, chunk in rows])
    np.testing.assert_array_equal(read.toarray(), small_adata.X.toarray())
    assert read.dtype == np.float32


@pytest.mark.parametrize("store", ["h5ad", "zarr"])
def test_row_chunks_read_stored_csr_rows_as_anndata_indexes_them(small_adata, tmp_path, monkeypatch, store):
    """Backed CSR rows are read straight from the group's arrays (not through anndata's indexing, whose checks
    cost as much as the reading): the same rows, values and stored type."""
    small_adata.X = sparse.csr_matrix(small_adata.X, dtype=np.int32)
    path = tmp_path / f"small.{store}"
    getattr(small_adata, f"write_{store}")(path)
    group = h5py.File(path, "r") if store == "h5ad" else zarr.open_group(path, mode="r")
    matrix = ad.io.sparse_dataset(group["X"])
    rows = RowChunks(matrix, chunk_size=23)
    expected = [matrix[slice(*rows.bounds(chunk))] for chunk in range(rows.n_chunks)]
    monkeypatch.setattr(type(matrix), "__getitem__", lambda *_: pytest.fail("read through anndata's indexing"))
    for chunk in range(rows.n_chunks):
        start, stop = rows.bounds(chunk)
        read = rows.read(start, stop, dtype=None)
        assert read.dtype == np.int32 and read.shape == (stop - start, small_adata.n_vars)
        np.testing.assert_array_equal(read.toarray(), expected[chunk].toarray())
        assert rows.read(start, stop).dtype == np.float32


def test_row_chunks_of_zarr_and_dask_give_the_in_memory_rows(small_adata, tmp_path):
    dask_array = pytest.importorskip("dask.array")
    dense = small_adata.X.toarray()
    matrices = [dask_array.from_array(dense, chunks=(30, -1))]
    if hasattr(ad.experimental, "read_lazy"):  # anndata >= 0.12 (the declared floor, 0.11, has no lazy reader)
        small_adata.write_zarr(tmp_path / "small.zarr")
        matrices.append(ad.experimental.read_lazy(tmp_path / "small.zarr").X)
    for matrix in matrices:
        assert is_out_of_core(matrix)
        read = sparse.vstack([chunk for _, chunk in RowChunks(matrix, chunk_size=17)])
        np.testing.assert_array_equal(read.toarray(), dense)


def test_chunked_counts_check_sums_problems_over_chunks(small_adata, backed_adata):
    check_counts_in_chunks(backed_adata.X, "adata.X", chunk_size=7)
    dense = small_adata.X.toarray()
    dense[[3, 40, 79]] = 0
    with pytest.raises(InputError, match="adata.X has 3 cells with zero total counts"):
        check_counts_in_chunks(dense, "adata.X", chunk_size=7)
    dense = small_adata.X.toarray()
    dense[[3, 40], 0] = np.nan
    with pytest.raises(InputError, match="holds 2 NaN or infinite values"):
        check_counts_in_chunks(dense, "adata.X", chunk_size=7)
    with pytest.raises(InputError, match="non-integer values"):
        check_counts_in_chunks(np.log1p(small_adata.X.toarray()), "adata.X", chunk_size=7)
    with pytest.raises(InputError, match="dtype bool"):
        check_counts_in_chunks(small_adata.X.toarray() > 0, "adata.X", chunk_size=7)


def _with_problems(counts: sparse.csr_matrix, problem: str) -> sparse.csr_matrix:
    counts = counts.astype(np.float32)
    if problem == "empty cells":  # one cell without stored values, one whose stored values are all zero
        counts = counts.tolil()
        counts[3] = 0
        counts = counts.tocsr()
        counts.data[counts.indptr[40] : counts.indptr[41]] = 0
    elif problem == "nan":
        counts.data[[5, 500]] = np.nan
    elif problem == "negative":
        counts.data[7] = -2
    elif problem == "non-integer":
        counts.data[::3] += 0.5
    elif problem == "integers":
        counts = counts.astype(np.int32)
    return counts


@pytest.mark.parametrize("problem", ["none", "empty cells", "nan", "negative", "non-integer", "integers"])
def test_stored_csr_counts_are_summarised_from_their_values_as_in_memory(small_adata, tmp_path, problem):
    """Backed CSR counts are summed up from their stored values and row pointers, chunk by chunk."""
    from dataclasses import astuple

    from myvae._counts import CountsSummary, summarise_counts

    counts = _with_problems(sparse.csr_matrix(small_adata.X), problem)
    path = tmp_path / "counts.h5ad"
    ad.AnnData(counts).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert backed.X.group["data"].shape == (counts.nnz,)  # stored zeros are kept in the file
    rows = RowChunks(backed.X, chunk_size=7)
    summary = None
    for values, totals in rows.stored_values():
        part = CountsSummary.of_values(values, totals, "adata.X")
        summary = part if summary is None else summary + part
    for expected in (CountsSummary.of(counts, "adata.X"), summarise_counts(backed.X, "adata.X")):
        np.testing.assert_equal(astuple(summary), astuple(expected))  # NaN minimum included
    assert summary.n_empty == (2 if problem == "empty cells" else 0)
    backed.file.close()


def _scanpy_workflow_with_raw(adata: ad.AnnData) -> ad.AnnData:
    """Counts kept in adata.raw, X log-normalised, then some of the genes kept (as after selecting genes)."""
    import scanpy as sc

    adata.raw = adata.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata[:, ::2].copy()


def test_counts_in_a_read_only_file_are_read_once_while_it_is_open(small_adata, tmp_path, monkeypatch):
    """setup_counts and tl.myvae check the same backed counts: the second check through the same open read-only
    file reads nothing; the file opened anew, opened for writing or given as a file object is read every time."""
    from myvae._counts import summarise_counts

    path = tmp_path / "counts.h5ad"
    small_adata.write_h5ad(path)
    reads, stored_values = [], RowChunks.stored_values

    def counting_stored_values(self):
        reads.append(self.shape)
        yield from stored_values(self)

    monkeypatch.setattr(RowChunks, "stored_values", counting_stored_values)

    backed = ad.read_h5ad(path, backed="r")
    first = summarise_counts(backed.X, "adata.X")
    assert len(reads) == 1 and first.holds_counts
    assert summarise_counts(backed.X, "adata.X") == first and len(reads) == 1
    backed.file.close()
    small_adata.X = small_adata.X * 0.5  # the file rewritten, with other values: opened anew, it is read again
    small_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert not summarise_counts(backed.X, "adata.X").holds_counts and len(reads) == 2
    backed.file.close()

    writable = ad.read_h5ad(path, backed="r+")
    for _ in range(2):
        summarise_counts(writable.X, "adata.X")
    assert len(reads) == 4
    writable.file.close()

    import h5py

    with open(path, "rb") as stream, h5py.File(stream, "r") as file:  # a file object: no path to check it by
        counts = ad.io.sparse_dataset(file["X"])
        for _ in range(2):
            assert not summarise_counts(counts, "adata.X").holds_counts
    assert len(reads) == 6


def test_lognormalised_error_says_how_to_use_counts_in_raw(small_adata, unchanged):
    import myvae as mv

    adata = _scanpy_workflow_with_raw(small_adata)
    with unchanged(adata), pytest.raises(InputError) as error:
        mv.pp.setup_counts(adata)
    message = str(error.value)
    assert message.startswith("adata.X holds non-integer values (it looks log-normalised); adata.raw holds the raw")
    assert "`adata.layers['counts'] = adata.raw[:, adata.var_names].X`, then layer='counts'" in message
    # the advice works
    adata.layers["counts"] = adata.raw[:, adata.var_names].X
    mv.pp.setup_counts(adata, layer="counts")
    assert adata.uns["myvae_setup"] == {"layer": "counts"}


def test_lognormalised_error_names_raw_x_itself_when_it_has_the_same_genes(small_adata):
    import myvae as mv

    small_adata.raw = small_adata.copy()
    small_adata.X = np.log1p(small_adata.X)
    with pytest.raises(InputError, match=r"`adata.layers\['counts'\] = adata.raw.X`, then layer='counts'"):
        mv.pp.setup_counts(small_adata)


@pytest.mark.parametrize("raw_problem", ["normalised too", "lacks a gene"])
def test_lognormalised_error_keeps_the_general_advice_when_raw_cannot_help(small_adata, raw_problem):
    import myvae as mv

    raw = small_adata.copy()
    if raw_problem == "normalised too":
        raw.X = np.log1p(raw.X)
    else:
        raw = raw[:, 1:].copy()
    small_adata.raw = raw
    small_adata.X = np.log1p(small_adata.X)
    with pytest.raises(InputError, match="non-integer values") as error:
        mv.pp.setup_counts(small_adata)
    assert "adata.raw" not in str(error.value)
    assert "keep `adata.layers['counts'] = adata.X.copy()` before normalising" in str(error.value)
