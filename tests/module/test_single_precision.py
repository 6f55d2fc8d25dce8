"""The row loops' own single-precision exponential and log1p, compiled as the loops compile them, against float64."""

import numba
import numpy as np
import pytest

from myvae.module import _row_loops
from myvae.module._single_precision import EXP_UNDERFLOW, exp_row, log1p_row

ULP = 2.0**-23  # single precision's unit in the last place at 1


@numba.njit(fastmath=_row_loops._FASTMATH)
def _exp_rows(values, shifts):  # pragma: no cover
    """``exp_row`` of each row, inlined into a loop with the row loops' compiler flags."""
    out = np.empty_like(values)
    scratch = np.empty(values.shape[1], np.int32)
    for row in range(values.shape[0]):
        exp_row(values[row], shifts[row], out[row], scratch)
    return out


@numba.njit(fastmath=_row_loops._FASTMATH)
def _log1p_rows(values):  # pragma: no cover
    """``log1p_row`` of each row, inlined into a loop with the row loops' compiler flags."""
    out = np.empty_like(values)
    exponents, mantissas = np.empty(values.shape[1], np.float32), np.empty(values.shape[1], np.float32)
    for row in range(values.shape[0]):
        log1p_row(values[row], out[row], exponents, mantissas)
    return out


def test_exp_row_is_within_a_few_units_of_the_last_place():
    rng = np.random.default_rng(0)
    # v - s is exact here (s = 0 and s = 1 with v <= 1, below 2^24 apart), so only the exponential is compared
    values = np.concatenate([-(rng.exponential(10.0, 4000) % 87.0), np.linspace(-87.0, 0.0, 4000)]).astype(np.float32)
    values = values.reshape(2, -1)
    shifts = np.array([0.0, 1.0], dtype=np.float32)
    got = _exp_rows(values + shifts[:, None], shifts)
    exact = np.exp(values.astype(np.float64))
    assert np.max(np.abs(got - exact) / exact) < 4 * ULP


def test_exp_row_raises_arguments_below_its_underflow_bound_to_it():
    values = np.array([[0.0, -86.9, -87.0, -100.0, -1e30]], dtype=np.float32)
    got = _exp_rows(values, np.zeros(1, dtype=np.float32))[0]
    assert got[0] == 1.0 and got[1] > got[2]
    np.testing.assert_allclose(got[2:], np.exp(EXP_UNDERFLOW), rtol=4 * ULP)
    assert np.all(np.isfinite(got)) and np.all(got > 0)


@pytest.mark.parametrize(
    "values",
    [
        np.exp(np.random.default_rng(1).uniform(-40.0, 80.0, 8000)),  # mu / theta from tiny to e^80
        np.linspace(0.0, 3.0, 8001),  # around the switch at sqrt(2) - 1 and the mantissa's halving at sqrt(2)
        np.array([0.0, 1e-45, 1e-38, 1e-20, 1e-8, 2**-24, 0.41421354, 0.41421357, 1.0, 2.0**100, 3.4e38]),
    ],
    ids=["wide range", "around the switches", "edge values"],
)
def test_log1p_row_is_within_a_few_units_of_the_last_place(values):
    values = values.astype(np.float32)[None, :]
    got = _log1p_rows(values)[0]
    exact = np.log1p(values[0].astype(np.float64))
    smallest_normal = float(np.finfo(np.float32).tiny)  # below it, single precision has fewer digits anyway
    assert np.max(np.abs(got - exact) / np.maximum(exact, smallest_normal)) < 4 * ULP
    assert got[values[0] == 0].tolist() == [0.0] * int((values[0] == 0).sum())
