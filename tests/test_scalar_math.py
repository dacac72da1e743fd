"""The branch-free exp and log of csrc/include/fastloss/scalar_math.h, measured through the only
functions that reach them (sigmoid, binary_cross_entropy, binary_cross_entropy_with_logits),
in float64 where their own error is visible, over the whole range."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastloss
from fastloss import reference as R

RTOL = 1e-15  # a few double ulps
TINY = 1e-300


def _assert_rel(got, expected, rtol, where, what):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    err = np.abs(got - expected)
    bound = rtol * np.abs(expected)
    bad = ~(err <= bound)
    if bad.any():
        i = int(np.argmax(np.where(bad, err / np.maximum(bound, 1e-320), 0)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} outside rtol {rtol:g}; worst at "
            f"{where[i]!r}: got {got[i]!r}, expected {expected[i]!r}, "
            f"relative error {err[i] / abs(expected[i]) if expected[i] else math.inf:.3e}")


def test_sigmoid_float64_whole_range():
    x = np.concatenate([np.linspace(-745.0, 745.0, 2_000_001), np.linspace(-1.0, 1.0, 200_001),
                        [-745.0, -708.0, -700.0, 0.0, 36.0, 745.0]])
    s = fastloss.sigmoid(x)
    ref = R.sigmoid(x)
    normal = ref >= np.finfo(np.float64).tiny
    _assert_rel(s[normal], ref[normal], RTOL, x[normal], "sigmoid")
    # the subnormal tail is kept, not flushed: within one subnormal unit (2^-1074) of the value
    subnormal_unit = float(np.finfo(np.float64).smallest_subnormal)
    tail = np.abs(s[~normal] - ref[~normal])
    assert (tail <= subnormal_unit).all(), f"sigmoid's subnormal tail: off by {tail.max():.3e}"
    assert (s[(x > -744.0) & (x < -709.0)] > 0).all()
    assert ((s >= 0) & (s <= 1)).all()
    # monotone non-decreasing on the sorted grid
    grid = s[:2_000_001]
    assert (np.diff(grid) >= 0).all()


def test_bce_log_of_probabilities_down_to_1e_minus_300():
    """y = 1: loss = -log(p), clamped at 100 (p < e**-100 ~ 3.7e-44)."""
    p = np.logspace(-300, 0, 5000)
    y = np.ones_like(p)
    loss = fastloss.binary_cross_entropy(p, y, reduction="none")
    ref = R.binary_cross_entropy(p, y, None, "none")
    nonzero = ref != 0
    _assert_rel(loss[nonzero], ref[nonzero], RTOL, p[nonzero], "-log(p)")
    assert (loss[~nonzero] == 0).all()
    assert (loss[p < math.exp(-100.0) * 0.999] == 100.0).all()
    unclamped = p > math.exp(-100.0) * 1.001
    _assert_rel(loss[unclamped], -np.log(p[unclamped]), RTOL, p[unclamped], "-log(p) vs np.log")


def test_bce_log_at_powers_of_two():
    k = np.arange(0, 150)
    p = 2.0 ** -k
    loss = fastloss.binary_cross_entropy(p, np.ones_like(p), reduction="none")
    expected = np.minimum(k * math.log(2.0), 100.0)
    assert loss[0] == 0
    _assert_rel(loss[1:], expected[1:], RTOL, p[1:], "-log(2**-k)")


def test_bce_log1p_path_for_tiny_p():
    """y = 0: loss = -log1p(-p), which for tiny p is p itself (1 - p would round to 1)."""
    p = np.logspace(-300, -10, 5000)
    loss = fastloss.binary_cross_entropy(p, np.zeros_like(p), reduction="none")
    _assert_rel(loss, -np.log1p(-p), 1e-14, p, "-log1p(-p), tiny p")
    # not simply -log(1 - p), which is 0 below 1.1e-16
    assert (loss > 0).all()


def test_bce_log1p_path_whole_range():
    p = np.concatenate([np.logspace(-10, -1e-4, 5000), np.linspace(0.5, 1 - 1e-12, 5001)])
    loss = fastloss.binary_cross_entropy(p, np.zeros_like(p), reduction="none")
    _assert_rel(loss, -np.log1p(-p), RTOL, p, "-log1p(-p)")
    k = np.arange(1, 53)
    near_one = 1.0 - 2.0 ** -k
    loss = fastloss.binary_cross_entropy(near_one, np.zeros_like(near_one), reduction="none")
    _assert_rel(loss, k * math.log(2.0), RTOL, near_one, "-log1p(-(1 - 2**-k))")


@pytest.mark.parametrize("label", [0.0, 0.5, 1.0])
def test_logits_softplus_whole_range(label):
    z = np.concatenate([np.linspace(-745.0, 745.0, 400_001), np.linspace(-1e-3, 1e-3, 2001)])
    y = np.full_like(z, label)
    loss = fastloss.binary_cross_entropy_with_logits(z, y, reduction="none")
    ref = R.binary_cross_entropy_with_logits(z, y, None, None, "none")
    normal = ref > TINY
    _assert_rel(loss[normal], ref[normal], RTOL, z[normal], f"softplus loss, y={label}")
    assert (np.abs(loss[~normal] - ref[~normal]) <= TINY).all()
    # gradient (1 - y) s - y (1 - s): compare with an accurate evaluation at an absolute
    # precision of 2 ulps of 1 (the subtraction of y cancels in every implementation)
    grad = fastloss.binary_cross_entropy_with_logits_grad(z, y, reduction="none")
    accurate = (1.0 - label) * R.sigmoid(z) - label * R.sigmoid(-z)
    err = np.abs(grad - accurate)
    assert (err <= 2 * 2.0**-52 + RTOL * np.abs(accurate)).all(), (
        f"grad error {err.max():.3e} at z={z[np.argmax(err)]!r}")


def test_logits_exp_at_reduction_boundaries():
    """exp(-|z|) around multiples of ln 2 / 2 (the argument reduction's switch points)."""
    n = np.arange(-1000, 1001)
    z = np.concatenate([n * math.log(2) / 2 + d for d in (-1e-12, 0.0, 1e-12)])
    s = fastloss.sigmoid(z)
    ref = R.sigmoid(z)
    normal = ref > TINY
    _assert_rel(s[normal], ref[normal], RTOL, z[normal], "sigmoid at k ln2 / 2")
