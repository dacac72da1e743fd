"""The reductions are the exact sum (or mean) of the kernels' per-element terms, correctly
rounded once to the dtype (csrc/kernels.h): the property that makes them independent of how
the elements are grouped, and the Dask results (tests/test_dask.py) equal to these.

The terms are the kernels' own: for float64 the 'none' output is the term each element adds
(weighted), stored without a rounding; for float32 MSE the double term (x - y)**2 of two
float32 values is exact in float64, so NumPy computes it bit for bit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import fastloss
from _helpers import OPS, assert_same_bits, correctly_rounded, exact_fraction_sum, make_inputs, \
    make_weight, seed_for

CHUNK = 8192
# around the kernels' chunk and lane boundaries, and chunk counts that leave the pairwise
# tree unbalanced
SIZES = [1, 2, 7, 17, 255, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, 100_003]


def _expected(terms, reduction, dtype, n):
    total = exact_fraction_sum(terms)
    return correctly_rounded(total / n if reduction == "mean" else total, dtype)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_float64_reduction_is_the_exact_value_correctly_rounded(op, n, reduction):
    rng = np.random.default_rng(seed_for("exact64", op.name, n))
    x, y = make_inputs(op.name, (n,), np.float64, rng, soft=True)
    terms = op.loss(x, y, reduction="none")
    expected = _expected(terms, reduction, np.float64, n)
    assert_same_bits(op.loss(x, y, reduction=reduction), expected, f"{op.name} {reduction}")
    loss, _ = op.and_grad(x, y, reduction=reduction)
    assert_same_bits(loss, expected, f"{op.name}_and_grad {reduction}")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("rows", [911, 11_113])
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_weighted_float64_reduction_is_exact(op, rows, reduction):
    rng = np.random.default_rng(seed_for("exact64w", op.name, rows))
    x, y = make_inputs(op.name, (rows, 9), np.float64, rng, soft=True)
    w = make_weight("trailing", x.shape, np.float64, rng)
    terms = op.loss(x, y, weight=w, reduction="none")
    expected = _expected(terms, reduction, np.float64, x.size)
    assert_same_bits(op.loss(x, y, weight=w, reduction=reduction), expected)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("n", SIZES)
def test_float32_mse_is_the_exact_value_correctly_rounded(n, reduction):
    rng = np.random.default_rng(seed_for("exact32", n))
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    terms = (x.astype(np.float64) - y.astype(np.float64)) ** 2
    expected = _expected(terms, reduction, np.float32, n)
    assert_same_bits(fastloss.mse_loss(x, y, reduction=reduction), expected)


def test_float32_rounds_the_exact_value_not_its_double():
    # terms 1, 2**-24 and 2**-80: the double nearest their sum is 1 + 2**-24, a float32
    # midpoint that rounds to even (1.0); the exact sum is above it, so the answer is 1 + 2**-23
    x = np.array([1.0, 2.0**-12, 2.0**-40], dtype=np.float32)
    y = np.zeros(3, dtype=np.float32)
    got = fastloss.mse_loss(x, y, reduction="sum")
    assert_same_bits(got, np.float32(1.0 + 2.0**-23))
    assert got == correctly_rounded(Fraction(1) + Fraction(2) ** -24 + Fraction(2) ** -80,
                                    np.float32)


def test_cancelling_terms_keep_their_low_part():
    # weights of both signs: 1e16 and -1e16 cancel, the small terms beside them survive exactly
    x = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float64)
    y = np.zeros(4)
    w = np.array([1e16, 1.0, -1e16, 0.5])
    assert_same_bits(fastloss.mse_loss(x, y, weight=w, reduction="sum"), np.float64(1.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_and_nan_sums_stay_what_they_are(dtype):
    big = np.finfo(dtype).max
    x = np.full(20000, big, dtype=dtype)
    y = np.zeros(20000, dtype=dtype)
    assert fastloss.mse_loss(x, y, reduction="sum") == np.inf
    assert fastloss.mse_loss(x, y) == np.inf
    x[5] = np.nan
    assert np.isnan(fastloss.mse_loss(x, y))
