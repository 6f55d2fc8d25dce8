r"""Vectorisable single-precision ``exp`` and ``log1p`` over a row, for the compiled loops of the likelihood.

Numba compiles ``math.exp`` and ``math.log1p`` to one call per element, which the compiler cannot vectorise (it has
no vector math library to call), so a loop over a cell's genes that needs them runs one gene at a time. The
functions here take the exponent apart and put it back through an integer view of the row instead, and evaluate a
short polynomial on what is left: the compiler turns each of their loops into vector instructions. Both are within
a few units of single precision's last place of the exact value (``tests/module/test_single_precision.py``), as
torch's own are. They run inside the loops of :mod:`myvae.module._row_loops`, on rows that stay in the cache.

Both are inlined into those loops and compiled with their flags, which let the compiler reorder arithmetic; they are
written so that reordering loses nothing (no compensated differences), and the tests compile them with those flags.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["EXP_UNDERFLOW", "exp_row", "log1p_row"]

_F32 = np.float32
# ln 2 in two parts: the first has trailing zero bits, so that k * _LN2_HIGH is exact for every exponent k of a float
_LN2_HIGH = _F32(0.693145751953125)
_LN2_LOW = _F32(1.428606765330187e-06)
_LOG2_E = _F32(1.4426950408889634)
_SQRT_2 = _F32(1.4142135)
EXP_UNDERFLOW = -87.0
"""Arguments below this give :math:`e^{-87}` (the smallest power whose scale is a normal float), not a subnormal."""
_EXPONENT_BIAS = 127
_MANTISSA_BITS = 23
_MANTISSA_MASK = (1 << _MANTISSA_BITS) - 1
_ONE_BITS = _EXPONENT_BIAS << _MANTISSA_BITS  # the bits of 1.0f


@numba.njit(cache=True, inline="always")
def exp_row(values, shift, out, scratch):  # pragma: no cover
    r""":math:`e^{v - s}` for each entry :math:`v` of a float32 row, with :math:`v - s \le 0`, written to ``out``.

    With :math:`k = \mathrm{round}((v - s)/\ln 2)` and :math:`t = v - s - k \ln 2` (in two parts, so that it is
    exact), :math:`e^{v - s} = 2^k e^t` with :math:`|t| \le \ln 2 / 2`: :math:`e^t` from its Taylor polynomial of
    degree 7 (truncated at :math:`4 \cdot 10^{-9}`), :math:`2^k` built from its bits in ``scratch`` (an int32 row
    as long as ``values``). Arguments below :data:`EXP_UNDERFLOW` are raised to it.
    """
    n = values.shape[0]
    for j in range(n):
        t = values[j] - shift
        t = t if t > _F32(EXP_UNDERFLOW) else _F32(EXP_UNDERFLOW)
        k = np.floor(t * _LOG2_E + _F32(0.5))
        t = (t - k * _LN2_HIGH) - k * _LN2_LOW
        p = _F32(1.0 / 5040.0)
        p = p * t + _F32(1.0 / 720.0)
        p = p * t + _F32(1.0 / 120.0)
        p = p * t + _F32(1.0 / 24.0)
        p = p * t + _F32(1.0 / 6.0)
        p = p * t + _F32(0.5)
        p = p * t + _F32(1.0)
        out[j] = p * t + _F32(1.0)
        scratch[j] = (np.int32(k) + np.int32(_EXPONENT_BIAS)) << np.int32(_MANTISSA_BITS)
    powers_of_two = scratch.view(np.float32)
    for j in range(n):
        out[j] *= powers_of_two[j]


@numba.njit(cache=True, inline="always")
def log1p_row(values, out, exponents, mantissas):  # pragma: no cover
    r""":math:`\log(1 + v)` for each entry :math:`v \ge 0` of a float32 row, written to ``out`` (another row).

    It is :math:`e \ln 2 + \log(1 + f) = e \ln 2 + 2\,\mathrm{artanh}(f/(2 + f))`, with the series of artanh up to
    the 9th power (truncated at :math:`2 \cdot 10^{-9}`, as :math:`|f/(2 + f)| < 0.172`), where :math:`e = 0` and
    :math:`f = v` for :math:`v < \sqrt 2 - 1` (exact: nothing is rounded before the series), and otherwise
    :math:`1 + v = 2^e (1 + f)` with :math:`1 + f \in [\sqrt{1/2}, \sqrt 2)` taken apart through its bits (rounding
    :math:`1 + v` then changes the result by at most :math:`2^{-24}`, relative to a logarithm above 0.34).
    ``exponents`` and ``mantissas`` are float32 rows as long as ``values``, to work in.
    """
    n = values.shape[0]
    bits = mantissas.view(np.int32)
    for j in range(n):
        mantissas[j] = _F32(1.0) + values[j]
    for j in range(n):
        exponents[j] = _F32((bits[j] >> _MANTISSA_BITS) - _EXPONENT_BIAS)
        bits[j] = (bits[j] & _MANTISSA_MASK) | _ONE_BITS  # the mantissa as a float in [1, 2)
    for j in range(n):
        v = values[j]
        m = mantissas[j]
        above = m > _SQRT_2
        small = v < _SQRT_2 - _F32(1.0)
        f = v if small else (m * _F32(0.5) if above else m) - _F32(1.0)
        e = _F32(0.0) if small else (exponents[j] + _F32(1.0) if above else exponents[j])
        s = f / (_F32(2.0) + f)
        s2 = s * s
        p = _F32(1.0 / 9.0)
        p = p * s2 + _F32(1.0 / 7.0)
        p = p * s2 + _F32(1.0 / 5.0)
        p = p * s2 + _F32(1.0 / 3.0)
        p = p * s2 + _F32(1.0)
        out[j] = e * _LN2_HIGH + (_F32(2.0) * s * p + e * _LN2_LOW)
