"""Double-double arithmetic on Python floats, step for step that of
``csrc/include/fastloss/double_double.h``: it adds the (hi, lo) partials of Dask blocks
(``fastloss._cpu.loss_partial``) and rounds the total once, as the C++ module rounds an
in-memory sum. Python floats are IEEE doubles with every operation correctly rounded, so the
error-free transformations hold here exactly as in C++ (without fused multiply-adds; the one
exact product the division needs is taken through Fraction).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np


def two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    return s, b - (s - a)


def accumulate(xh: float, xl: float, yh: float, yl: float) -> tuple[float, float]:
    """(xh, xl) + (yh, yl), not normalized, as dd::accumulate."""
    s, e = two_sum(xh, yh)
    return s, (xl + yl) + e


def normalize(hi: float, lo: float) -> tuple[float, float]:
    """As dd::normalize: hi = RN(hi + lo), lo the exact rest; (hi, 0) for a hi not finite."""
    if not math.isfinite(hi):
        return hi, 0.0
    return two_sum(hi, lo)


def total(partials) -> tuple[float, float]:
    """The partials [(hi, lo), ...] added in order, normalized."""
    hi, lo = 0.0, 0.0
    for h, l in partials:
        hi, lo = accumulate(hi, lo, float(h), float(l))
    return normalize(hi, lo)


def divide(hi: float, lo: float, n: int) -> tuple[float, float]:
    """(hi, lo) / n, as dd::divide (n > 0 below 2**53; n = 0 gives NaN)."""
    if n == 0:
        # the hardware's 0 / 0, as C++ divides: x86's default NaN has its sign bit set
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(hi) / np.float64(0.0)), 0.0
    reciprocal = 1.0 / n
    q1 = hi / n
    if not math.isfinite(q1):
        return q1, 0.0
    remainder = float(Fraction(hi) - Fraction(q1) * n)  # exact: what the C++ fma computes
    q2 = (remainder + lo) * reciprocal
    return fast_two_sum(q1, q2)


def divide_by_sum(hi: float, lo: float, dh: float, dl: float) -> tuple[float, float]:
    """(hi, lo) / (dh, dl), as dd::divide_by_sum: the mean of cross_entropy, whose divisor is
    a double-double sum of class weights. A zero divisor gives the hardware's quotient (NaN
    or an infinity), as C++ divides."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q1 = float(np.float64(hi) / np.float64(dh))
    if not math.isfinite(q1):
        return q1, 0.0
    remainder = float(Fraction(hi) - Fraction(q1) * Fraction(dh))  # exact: the C++ fma
    q2 = ((remainder + lo) - q1 * dl) / dh
    return fast_two_sum(q1, q2)


def round_to_odd(hi: float, lo: float) -> float:
    """hi with lo as the sticky bit (dd::round_to_odd): its float32 rounding is that of hi + lo."""
    bits = int(np.float64(hi).view(np.uint64))
    if lo != 0.0 and bits & 1 == 0:
        bits = bits + 1 if (lo > 0.0) == (hi > 0.0) else bits - 1
    return float(np.uint64(bits).view(np.float64))


def rounded(hi: float, lo: float, dtype) -> Any:
    """The double-double rounded once to ``dtype`` (float32 or float64), a NumPy scalar."""
    dtype = np.dtype(dtype)
    value = round_to_odd(hi, lo) if dtype == np.float32 else hi
    return np.asarray(value, dtype=dtype)[()]
