"""Accuracy of the reductions, the reason fastloss exists: float32 losses within 1 float32 ulp of
the exact value (math.fsum of the float64 per-element terms) at up to 2**27 elements."""

from __future__ import annotations

import gc
import itertools
import math

import numpy as np
import pytest

import fastloss
from _helpers import (
    BCE,
    LOGITS,
    MSE,
    assert_reduction_close,
    float32_ulp,
    make_inputs,
    seed_for,
)

CHUNK = 1 << 21


def exact_reduction(op, x, y, reduction):
    """The exact float64 sum (or sum / n) of the reference's per-element terms, in chunks."""
    n = x.size

    def chunks():
        for i in range(0, n, CHUNK):
            terms = op.reference_loss(x[i:i + CHUNK], y[i:i + CHUNK], None, None, "none")
            yield terms.tolist()

    total = math.fsum(itertools.chain.from_iterable(chunks()))
    return total if reduction == "sum" else total / n


def _random_float32(op_name, n, seed):
    rng = np.random.default_rng(seed)
    if op_name == "mse":
        x = rng.standard_normal(n, dtype=np.float32)
        y = rng.standard_normal(n, dtype=np.float32)
        return x, y
    return make_inputs(op_name, (n,), np.float32, rng, soft=True)


@pytest.mark.parametrize("n", [10**6, 10**7])
def test_float32_mse_within_one_ulp(n):
    x, y = _random_float32("mse", n, seed_for("acc-mse", n))
    exact_sum = exact_reduction(MSE, x, y, "sum")
    for reduction, exact in (("sum", exact_sum), ("mean", exact_sum / n)):
        assert_reduction_close(fastloss.mse_loss(x, y, reduction=reduction), exact, np.float32,
                               what=f"mse_loss {reduction}")
        loss, _ = fastloss.mse_loss_and_grad(x, y, reduction=reduction)
        assert_reduction_close(loss, exact, np.float32, what=f"mse_loss_and_grad {reduction}")


@pytest.mark.slow
def test_float32_mse_within_one_ulp_2_pow_27():
    n = 2**27  # 512 MB per float32 array
    x, y = _random_float32("mse", n, seed_for("acc-mse", n))
    exact_sum = exact_reduction(MSE, x, y, "sum")
    got_sum = fastloss.mse_loss(x, y, reduction="sum")
    got_mean = fastloss.mse_loss(x, y, reduction="mean")
    del x, y
    gc.collect()
    assert_reduction_close(got_sum, exact_sum, np.float32, what="sum of 2**27")
    assert_reduction_close(got_mean, exact_sum / n, np.float32, what="mean of 2**27")


@pytest.mark.parametrize("op", [BCE, LOGITS], ids=repr)
@pytest.mark.parametrize("n", [10**6, 10**7])
def test_float32_bce_means_within_one_ulp(op, n):
    x, y = _random_float32(op.name, n, seed_for("acc", op.name, n))
    exact = exact_reduction(op, x, y, "mean")
    assert_reduction_close(op.call_loss(x, y), exact, np.float32, what=f"{op.name} mean")
    assert_reduction_close(op.call_loss(x, y, reduction="sum"), exact * n, np.float32,
                           what=f"{op.name} sum")


@pytest.mark.parametrize("op", [MSE, BCE, LOGITS], ids=repr)
def test_float64_reductions_at_ten_million(op):
    n = 10**7
    rng = np.random.default_rng(seed_for("acc64", op.name))
    x, y = make_inputs(op.name, (n,), np.float64, rng, soft=True)
    exact = exact_reduction(op, x, y, "sum")
    assert_reduction_close(op.call_loss(x, y, reduction="sum"), exact, np.float64)
    assert_reduction_close(op.call_loss(x, y), exact / n, np.float64)


def test_float32_wide_dynamic_range():
    """Terms spanning 20 decades: small terms must not be swamped by large ones."""
    n = 10**6
    rng = np.random.default_rng(77)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-10, 10, n)).astype(np.float32)
    y = np.zeros(n, dtype=np.float32)
    for reduction in ("sum", "mean"):
        exact = exact_reduction(MSE, x, y, reduction)
        assert_reduction_close(fastloss.mse_loss(x, y, reduction=reduction), exact, np.float32)


def test_float32_many_equal_small_terms_classic_failure():
    """2**25 copies of float32(0.1) against zeros: a float32 running sum stalls once the total
    dwarfs each term (it is off by ~20%); fastloss must stay within 1 ulp of the exact value."""
    n = 2**25
    x = np.full(n, 0.1, dtype=np.float32)
    y = np.zeros(n, dtype=np.float32)
    term = float(np.float32(0.1)) ** 2  # exact in float64: a 24-bit mantissa squared
    exact = n * term  # exact: a power-of-two multiple

    got = fastloss.mse_loss(x, y, reduction="sum")
    assert_reduction_close(got, exact, np.float32, what="sum of 2**25 terms 0.1**2")
    assert_reduction_close(fastloss.mse_loss(x, y, reduction="mean"), exact / n, np.float32)
    loss, grad = fastloss.mse_loss_and_grad(x, y, reduction="sum")
    assert_reduction_close(loss, exact, np.float32)
    assert (grad == np.float32(2 * np.float32(0.1))).all()

    # The test can fail: a naive float32 running sum of the same terms is far off.
    naive = np.cumsum(np.square(x), dtype=np.float32)[-1]
    assert abs(float(naive) - exact) > 1000 * float32_ulp(exact), (
        "the naive float32 sum was expected to be inaccurate here")
    # ... and so is a plain float32 running sum of the inputs themselves (sum of x, via MSE of x
    # against 0 as the check above, here as a cross-check with NumPy's sequential cumsum)
    naive_x = np.cumsum(x, dtype=np.float32)[-1]
    assert abs(float(naive_x) - n * float(np.float32(0.1))) > 1000 * float32_ulp(n * 0.1)


@pytest.mark.parametrize("op", [MSE, LOGITS], ids=repr)
def test_float64_sums_are_compensated(op):
    """Lanes are double-double sums (csrc/kernels.h): one huge term per lane and chunk, then
    hundreds of terms each below half its ulp. A lane without its low word drops every small
    term (about 200 ulps of the total here, yet only 4e-14 relative); the double-double sum
    is the exact one correctly rounded (tests/test_exact_reduction.py), within 8 ulps here."""
    n = 8 * 8192  # 8 chunks, on the parallel path
    big = 2.0**53  # its ulp is 2: a term of 0.81 (or log 2) added to it is lost without Kahan
    lanes = np.arange(n) % 8192 < 16  # the first term of each of a chunk's 16 lanes
    if op is MSE:
        x = np.where(lanes, math.sqrt(big), 0.9)
        y = np.zeros(n)
    else:  # softplus(-z) for y = 1: -z itself for huge -z, log 2 at z = 0
        x = np.where(lanes, -big, 0.0)
        y = np.ones(n)
    exact = exact_reduction(op, x, y, "sum")
    got = float(op.call_loss(x, y, reduction="sum"))
    ulps = abs(got - exact) / float(np.spacing(exact))
    assert ulps <= 8, f"{op.name}: float64 sum {got!r} is {ulps:.0f} ulps from {exact!r}"
