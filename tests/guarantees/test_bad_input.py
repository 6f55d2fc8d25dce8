"""Property-based tests: whatever AnnData a user hands over, myvae succeeds with finite results or says why not.

Each generated AnnData varies the matrix (dense, CSR, CSC; integer or float; down to one gene and a handful of
cells; all-zero genes, cells with one expressed gene, counts up to 10⁶, and sometimes values that are not counts),
where the counts live (``X`` or a layer), whether it is a view, the ``obs`` column given as ``batch_key`` (string,
categorical, numeric) and whether obs/var names repeat. Every call must either succeed — with finite results and
only the documented keys added — or raise :class:`~myvae.InputError` (or :class:`~myvae.TrainingDivergedError`), and
leave the object as it was.
"""

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import fingerprint
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import sparse

import myvae as mv
from myvae import InputError, TrainingDivergedError

EXAMPLES = int(os.environ.get("MYVAE_PROPERTY_EXAMPLES", "200"))  # raise it locally to search harder
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.filterwarnings("ignore:(Observation|Variable) names are not unique")


@st.composite
def count_matrices(draw) -> np.ndarray:
    """Cells × genes counts with the shapes and oddities single-cell data have (and sometimes non-counts)."""
    enough_cells = draw(st.sampled_from([False, True, True, True]))  # training needs 10 cells; fewer is an error
    n_obs = draw(st.integers(min_value=10, max_value=40) if enough_cells else st.integers(min_value=1, max_value=9))
    n_vars = draw(st.integers(min_value=1, max_value=12))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    rng = np.random.default_rng(seed)
    counts = rng.poisson(draw(st.sampled_from([0.3, 2.0, 50.0])), size=(n_obs, n_vars)).astype(np.float64)
    empty = counts.sum(axis=1) == 0
    counts[empty, rng.integers(n_vars, size=int(empty.sum()))] = 1  # real cells have counts (see "empty cell")
    if n_vars > 1 and draw(st.booleans()):
        counts[:, rng.integers(n_vars)] = 0  # an all-zero gene
    if draw(st.booleans()):
        row = rng.integers(n_obs)
        counts[row] = 0
        counts[row, rng.integers(n_vars)] = draw(st.sampled_from([1.0, 7.0]))  # a cell with one expressed gene
    if draw(st.booleans()):
        counts[rng.integers(n_obs), rng.integers(n_vars)] = 1e6  # a huge count
    oddity = draw(st.sampled_from(["none"] * 6 + ["empty cell", "non-integer", "negative", "nan"]))
    if oddity == "empty cell":
        counts[rng.integers(n_obs)] = 0
    elif oddity == "non-integer":
        counts = counts + 0.5
    elif oddity == "negative":
        counts[rng.integers(n_obs), rng.integers(n_vars)] = -3
    elif oddity == "nan":
        counts[rng.integers(n_obs), rng.integers(n_vars)] = np.nan
    return counts


@st.composite
def anndatas(draw) -> tuple[ad.AnnData, str | None, str | None]:
    """An AnnData, the layer holding its counts (``None`` for X) and the batch key to pass (or ``None``)."""
    counts = draw(count_matrices())
    n_obs, n_vars = counts.shape
    dtype = draw(st.sampled_from([np.int32, np.int64, np.float32, np.float64]))
    if np.issubdtype(dtype, np.integer) and not np.isfinite(counts).all():
        dtype = np.float64  # NaN cannot be stored as an integer
    matrix = counts.astype(dtype)
    matrix = draw(st.sampled_from([np.asarray, sparse.csr_matrix, sparse.csc_matrix]))(matrix)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_obs)])
    var = pd.DataFrame(index=[f"gene{i}" for i in range(n_vars)])
    if draw(st.booleans()):
        obs.index = ["cell"] * n_obs  # repeated names
    if draw(st.booleans()):
        var.index = ["gene"] * n_vars
    batch = draw(st.sampled_from(["none", "string", "categorical", "numeric", "with NaN"]))
    labels = np.array(["a", "b"])[np.arange(n_obs) % 2]
    if batch == "string":
        obs["batch"] = labels.astype(object)
    elif batch == "categorical":
        obs["batch"] = pd.Categorical(labels)
    elif batch == "numeric":
        obs["batch"] = np.arange(n_obs) % 3
    elif batch == "with NaN":
        obs["batch"] = pd.Series(labels, dtype=object).where(np.arange(n_obs) > 0, None).to_numpy()
    layer = draw(st.sampled_from([None, "counts"]))
    adata = ad.AnnData(X=None if layer else matrix, obs=obs, var=var)
    if layer:
        adata.X = np.zeros((n_obs, n_vars), dtype=np.float32) + 0.25  # e.g. normalised values in X
        adata.layers[layer] = matrix
    if draw(st.booleans()) and n_obs > 1:
        adata = adata[: n_obs - 1]  # a view
    return adata, layer, None if batch == "none" else "batch"


def _quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@PROPERTY_SETTINGS
@given(case=anndatas())
def test_setup_counts_succeeds_or_raises_input_error(case):
    adata, layer, batch_key = case
    before = fingerprint(adata)
    try:
        _quietly(mv.pp.setup_counts, adata, layer, batch_key=batch_key)
    except InputError as error:
        event(f"refused: {str(error).split(';')[0][:40]}")
        assert str(error)
        assert fingerprint(adata) == before
        return
    event("set up")
    after = fingerprint(adata)
    assert set(after) - set(before) == {"uns/myvae_setup"}
    assert {key: after[key] for key in before} == before


@PROPERTY_SETTINGS
@given(case=anndatas(), backend=st.sampled_from(["torch", "pyro"]))
def test_myvae_succeeds_with_finite_results_or_raises_a_documented_error(case, backend):
    adata, layer, batch_key = case
    try:
        _quietly(mv.pp.setup_counts, adata, layer, batch_key=batch_key)
    except InputError:
        event("setup refused")
        return  # covered by the property above
    before = fingerprint(adata)
    try:
        _quietly(
            mv.tl.myvae,
            adata,
            backend=backend,
            max_epochs=1,
            batch_size=16,
            n_latent=3,
            progress=False,
            accelerator="cpu",
        )
    except (InputError, TrainingDivergedError) as error:
        event(f"training refused: {type(error).__name__}")
        assert str(error)
        assert fingerprint(adata) == before
        return
    event("trained")
    embedding = adata.obsm["X_myvae"]
    assert embedding.shape == (adata.n_obs, 3)
    assert np.isfinite(embedding).all()
    assert all(np.isfinite(values).all() for values in adata.uns["myvae"]["history"].values())
    after = fingerprint(adata)
    assert set(after) - set(before) == {"obsm/X_myvae", "uns/myvae"}
    assert {key: after[key] for key in before} == before
