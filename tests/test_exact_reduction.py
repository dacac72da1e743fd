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


# The unweighted MSE sums float32 and 16-bit terms as plain doubles inside a chunk and checks
# that the rounding is certain, else sums again exactly (csrc/kernels.h, kPlainSumRelativeError).
# Each case below is one whose plain double sum is a midpoint of the dtype that rounds to even,
# while the exact sum lies just above it: only the exact rerun gets it right.
def _dtype_named(name):
    if name != "bfloat16":
        return np.dtype(name)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return np.dtype(ml_dtypes.bfloat16)


def _plain_sum_traps():
    # (dtype, x placed at {index: value} in n zeros, reduction, the correctly rounded result)
    chunk_crossing = {CHUNK + 3: 1.0, 2 * CHUNK + 7: 2.0**-12, 2 * CHUNK + 9: 2.0**-40}
    return [
        ("float32", {0: 1.0, 1: 2.0**-12, 2: 2.0**-40}, 4, "mean", (1.0 + 2.0**-23) / 4),
        ("float32", chunk_crossing, 3 * CHUNK + 5, "sum", 1.0 + 2.0**-23),
        # float16 at 2**14: an ulp of 16, the midpoint 8 above; 2**-48 / 2**16 beyond it
        ("float16", {0: 2.0**15, 1: 2.0**9, 2: 2.0**9, 3: 2.0**-24}, 2**16, "mean", 2.0**14 + 16),
        ("bfloat16", {0: 1.0, 1: 2.0**-4, 2: 2.0**-40}, 3, "sum", 1.0 + 2.0**-7),
    ]


def _trap_arrays(dtype_name, placed, n):
    dtype = _dtype_named(dtype_name)
    x = np.zeros(n, dtype=dtype)
    for index, value in placed.items():
        x[index] = value
    return x, np.zeros(n, dtype=dtype)


@pytest.mark.parametrize("trap", range(4))
def test_plain_sum_near_a_rounding_boundary_is_summed_again_exactly(trap):
    dtype_name, placed, n, reduction, expected = _plain_sum_traps()[trap]
    x, y = _trap_arrays(dtype_name, placed, n)
    got = fastloss.mse_loss(x, y, reduction=reduction)
    assert got.dtype == x.dtype and float(got) == expected, (dtype_name, float(got), expected)
    loss, grad = fastloss.mse_loss_and_grad(x, y, reduction=reduction)
    assert loss.dtype == x.dtype and float(loss) == expected
    np.testing.assert_array_equal(grad, fastloss.mse_loss_grad(x, y, reduction=reduction))


# The float16 and bfloat16 squared errors go further (kernels.h, kFloat32TermsRelativeError):
# whole blocks of 512 (AVX-512) or 256 (AVX2) terms are formed and first summed in float32.
# 1024 equal elements put the same 32 terms in every float32 lane whatever the layout, so these
# float32 sums are the same in both builds: x - y is inexact in float32 (y is 29 or 23 of
# float16's smallest subnormal), the 8-term chains round, and the plain mean lands a float32
# ulp or two past float16's midpoint 1291.5 / 1024 (or short of 1930.5 / 1024) where the exact
# mean does not, far outside the double sums' 2^-41: only the float32 bound sends it back.
@pytest.mark.parametrize("x, subnormals, exact_sum", [(1.123046875, 29, 1291.0), (1.373046875, 23, 1931.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float16_squares_summed_in_float32_near_a_midpoint(x, subnormals, exact_sum, reduction):
    n = 1024
    inputs = np.full(n, x, np.float16)
    targets = np.full(n, subnormals * 2.0**-24, np.float16)
    expected = exact_sum / n if reduction == "mean" else exact_sum
    got = fastloss.mse_loss(inputs, targets, reduction=reduction)
    assert got.dtype == np.float16 and float(got) == expected, (float(got), expected)


def test_bfloat16_squares_that_underflow_float32():
    # (2^-76)^2 = 2^-152 rounds to 0 in float32, so the float32 lanes sum nothing; 1.5 2^18 of
    # them sum to 1.5 2^-134, which bfloat16 (subnormals down to 2^-133) rounds up to 2^-133:
    # the absolute part of the float32 bound (2^-149 a term) sends the zero back
    bfloat16 = _dtype_named("bfloat16")
    n = 2**18 + 2**17
    got = fastloss.mse_loss(np.full(n, 2.0**-76, bfloat16), np.zeros(n, bfloat16), reduction="sum")
    assert got.dtype == bfloat16 and float(got) == 2.0**-133


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_16bit_squares_summed_in_float32_are_the_exact_paths_bits(dtype_name):
    dtype = _dtype_named(dtype_name)
    rng = np.random.default_rng(seed_for("float32 squares", dtype_name))
    for n in (255, 256, 511, 512, 513, CHUNK - 1, CHUNK + 600, 3 * CHUNK + 1000):
        for x, y in ((rng.standard_normal(n), rng.standard_normal(n)),
                     (rng.random(n), rng.random(n) < 0.5),
                     # exponents 24 apart: many differences inexact in float32
                     (np.exp2(rng.integers(-12, 8, n)), -np.exp2(rng.integers(-24, -4, n))),
                     (np.full(n, 3.0), np.full(n, 1.0 + 2.0**-7))):
            x, y = x.astype(dtype), y.astype(dtype)
            for reduction in ("sum", "mean"):
                copy = x.copy()
                exact, _ = fastloss.mse_loss_and_grad(copy, y, reduction=reduction, out=copy)
                assert_same_bits(fastloss.mse_loss(x, y, reduction=reduction), exact)


@pytest.mark.parametrize("into", ["new", "input", "target", "other"])
def test_plain_sum_and_grad_written_over_an_argument(into):
    # out= the input or the target: the gradient overwrites what a rerun would read, so such a
    # call sums exactly at once; the loss is the same either way
    x, y = _trap_arrays("float32", {0: 1.0, 1: 2.0**-12, 2: 2.0**-40}, 3)
    y[:] = -x  # the target counts too: terms (2 x)**2 = 4, 2**-22, 2**-78
    expected_grad = fastloss.mse_loss_grad(x, y, reduction="sum")
    out = {"new": None, "input": x, "target": y, "other": np.empty_like(x)}[into]
    loss, grad = fastloss.mse_loss_and_grad(x, y, reduction="sum", out=out)
    assert_same_bits(loss, np.float32(4.0 + 2.0**-21))
    np.testing.assert_array_equal(grad, expected_grad)
    if out is not None:
        assert grad is out


def test_plain_sum_of_infinite_and_nan_terms():
    # a non-finite plain sum is never taken as certain: the exact pass decides
    for dtype in (np.float32, np.float16):
        x = np.full(40_000, np.finfo(dtype).max, dtype=dtype)
        y = -x
        assert fastloss.mse_loss(x, y, reduction="sum") == np.inf
        x[17] = np.nan
        assert np.isnan(fastloss.mse_loss(x, y, reduction="sum"))


# The BCE losses sum plainly too (kernels.h), checked the same way; their terms are >= 0 only
# for targets in [0, 1], which the kernel checks.
def _exact_path_loss(op, x, y, **kwargs):
    # the fused pass with its gradient written over a copy of the input sums exactly at once
    copy = x.copy()
    loss, _ = getattr(fastloss, f"{op}_and_grad")(copy, y, out=copy, **kwargs)
    return loss


def test_plain_bce_sum_near_a_rounding_boundary_is_summed_again_exactly():
    # p = 0 clamps the log at -100, so an element's term is exactly 100 y: the mean over 100
    # elements of the targets 1, 2**-24 and 2**-60 is 1 + 2**-24 + 2**-60, just past float32's
    # midpoint 1 + 2**-24, which is where the plain double sum (without its 2**-60) lies
    p = np.zeros(100, np.float32)
    y = np.zeros(100, np.float32)
    y[:3] = [1.0, 2.0**-24, 2.0**-60]
    expected = np.float32(1.0 + 2.0**-23)
    assert_same_bits(fastloss.binary_cross_entropy(p, y), expected)
    assert_same_bits(fastloss.binary_cross_entropy_and_grad(p, y)[0], expected)


def test_plain_bce_sum_of_negative_terms_is_summed_exactly():
    # targets of 2 make the logits' terms -30.3 + 7e-14 beside +30.3 + 7e-14 (target 0): a plain
    # sum loses the small parts to the large cancelling ones, which the bound relative to the
    # sum does not cover; the kernel sees the negative terms and the exact pass decides
    n = 3 * CHUNK + 6
    z = np.full(n, 30.3, np.float32)
    y = np.zeros(n, np.float32)
    y[1::2] = 2.0
    op = "binary_cross_entropy_with_logits"
    got = fastloss.binary_cross_entropy_with_logits(z, y, reduction="sum")
    assert_same_bits(got, _exact_path_loss(op, z, y, reduction="sum"))
    assert 1e-9 < float(got) < 3e-9  # n/2 pairs of 2 log1p(e^-30.3) ~ 1.4e-13 each


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("op", ["binary_cross_entropy", "binary_cross_entropy_with_logits"])
def test_plain_bce_sums_are_the_exact_paths_bits(op, dtype_name):
    dtype = _dtype_named(dtype_name)
    rng = np.random.default_rng(seed_for(op, dtype_name))
    for n in (7, CHUNK + 1, 5 * CHUNK + 3):
        x = rng.random(n) if op == "binary_cross_entropy" else 8 * rng.standard_normal(n)
        y = rng.random(n) < 0.5
        x, y = x.astype(dtype), y.astype(dtype)
        for reduction in ("sum", "mean"):
            got = getattr(fastloss, op)(x, y, reduction=reduction)
            assert_same_bits(got, _exact_path_loss(op, x, y, reduction=reduction))
        y[3] = 1.5  # outside [0, 1]: the term may be negative, and the check decides
        assert_same_bits(getattr(fastloss, op)(x, y), _exact_path_loss(op, x, y))
