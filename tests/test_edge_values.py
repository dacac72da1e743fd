"""Edge values: saturated probabilities, huge and infinite logits, sigmoid saturation, NaN."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
from fastloss import reference as R
from _helpers import (
    DTYPES,
    LOGITS,
    MSE,
    OPS,
    assert_elementwise_close,
    F32_OVERFLOW,
    assert_reduction_close,
    make_inputs,
    seed_for,
    ulp_distance_f32,
)

dtype_ids = lambda d: np.dtype(d).name  # noqa: E731
F32_MAX = float(np.finfo(np.float32).max)


# ---- binary_cross_entropy at p = 0 and p = 1 ----------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("repeat", [1, 7_000], ids=["serial", "parallel"])
def test_bce_saturated_probabilities_give_pytorch_clamped_values(dtype, repeat):
    p = np.tile(np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=dtype), repeat)
    y = np.tile(np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.5], dtype=dtype), repeat)
    w = np.tile(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=dtype), repeat)
    # wrong label: -log clamped at 100, times the weight; right label: 0; y = 0.5: 50 * weight
    expected = np.tile(np.array([0.0, 200.0, 300.0, 0.0, 250.0, 300.0]), repeat)

    loss = fastloss.binary_cross_entropy(p, y, weight=w, reduction="none")
    assert loss.dtype == dtype
    np.testing.assert_array_equal(loss, expected.astype(dtype))
    assert_reduction_close(fastloss.binary_cross_entropy(p, y, weight=w, reduction="sum"),
                           1050.0 * repeat, dtype)
    assert_reduction_close(fastloss.binary_cross_entropy(p, y, weight=w), 175.0, dtype)
    unweighted = fastloss.binary_cross_entropy(p, y, reduction="none")
    expected_unweighted = np.tile([0.0, 100.0, 100.0, 0.0, 50.0, 50.0], repeat).astype(dtype)
    np.testing.assert_array_equal(unweighted, expected_unweighted)

    # gradient: (p - y) / max(p (1 - p), 1e-12), finite: +-1e12 * weight where the label is wrong
    for reduction in ("none", "sum", "mean"):
        grad = fastloss.binary_cross_entropy_grad(p, y, weight=w, reduction=reduction,
                                                  grad_output=0.5)
        assert np.isfinite(grad).all()
        assert_elementwise_close(grad, R.binary_cross_entropy_grad(p, y, w, reduction, 0.5), dtype)
        loss, grad2 = fastloss.binary_cross_entropy_and_grad(p, y, weight=w, reduction=reduction,
                                                             grad_output=0.5)
        assert np.isfinite(grad2).all() and np.isfinite(loss).all()
    grad = fastloss.binary_cross_entropy_grad(p, y, reduction="none")
    np.testing.assert_array_equal(
        grad, np.tile([0.0, -1e12, 1e12, 0.0, -0.5e12, 0.5e12], repeat).astype(dtype))


# ---- binary_cross_entropy_with_logits at huge and infinite logits -------------------------------
HUGE = [1e4, -1e4, 1e30, -1e30, F32_MAX, -F32_MAX]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_logits_finite_for_huge_logits(dtype, reduction):
    z, y = np.meshgrid(np.array(HUGE), np.array([0.0, 0.5, 1.0]), indexing="ij")
    z, y = z.astype(dtype).ravel(), y.astype(dtype).ravel()
    loss = fastloss.binary_cross_entropy_with_logits(z, y, reduction=reduction)
    assert np.isfinite(loss).all(), f"non-finite loss {loss} for z={z}, y={y}"
    ref = R.binary_cross_entropy_with_logits(z, y, None, None, reduction)
    if reduction == "none":
        assert_elementwise_close(loss, ref, dtype)
        # the loss is |z| (times the label's share) when the label is wrong
        assert loss[(z == -F32_MAX) & (y == 1)][0] == np.asarray(F32_MAX, dtype)
        assert loss[(z == 1e4) & (y == 1)][0] == 0
    else:
        assert_reduction_close(loss, ref, dtype)
    for grad in (fastloss.binary_cross_entropy_with_logits_grad(z, y, reduction=reduction),
                 fastloss.binary_cross_entropy_with_logits_and_grad(z, y, reduction=reduction)[1]):
        assert np.isfinite(grad).all(), f"non-finite grad {grad}"
        assert_elementwise_close(grad, R.binary_cross_entropy_with_logits_grad(
            z, y, None, None, reduction), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_logits_finite_for_huge_logits_with_pos_weight(dtype):
    z, y = np.meshgrid(np.array([1e4, -1e4, 1e30, -1e30]), np.array([0.0, 0.5, 1.0]), indexing="ij")
    z, y = z.astype(dtype).ravel(), y.astype(dtype).ravel()
    pw = np.asarray(2.5, dtype=dtype)
    w = np.linspace(0.5, 2, z.size).astype(dtype)
    loss = fastloss.binary_cross_entropy_with_logits(z, y, weight=w, pos_weight=pw,
                                                     reduction="none")
    assert np.isfinite(loss).all()
    assert_elementwise_close(loss, R.binary_cross_entropy_with_logits(z, y, w, pw, "none"), dtype)
    grad = fastloss.binary_cross_entropy_with_logits_grad(z, y, weight=w, pos_weight=pw,
                                                          reduction="none", grad_output=0.75)
    assert np.isfinite(grad).all()
    assert_elementwise_close(grad, R.binary_cross_entropy_with_logits_grad(
        z, y, w, pw, "none", 0.75), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("pos_weight", [None, 2.5, "array"])
def test_logits_at_infinity(dtype, pos_weight):
    z = np.array([np.inf] * 3 + [-np.inf] * 3, dtype=dtype)
    y = np.array([0.0, 0.5, 1.0] * 2, dtype=dtype)
    w = np.array([1.5, 2.0, 0.5, 1.0, 3.0, 0.25], dtype=dtype)
    if pos_weight == "array":
        pw = np.array([2.0, 3.0, 4.0, 2.0, 3.0, 4.0], dtype=dtype)
    else:
        pw = pos_weight
    pw64 = np.ones(6) if pw is None else np.broadcast_to(np.asarray(pw, dtype=np.float64), (6,))
    y64, w64 = y.astype(np.float64), w.astype(np.float64)

    # +inf: 0 where y == 1 else +inf; -inf: 0 where y == 0 else +inf (the limits, never NaN)
    expected_loss = np.array([np.inf, np.inf, 0.0, 0.0, np.inf, np.inf])
    loss = fastloss.binary_cross_entropy_with_logits(z, y, weight=w, pos_weight=pw,
                                                     reduction="none")
    assert loss.dtype == dtype
    np.testing.assert_array_equal(loss, expected_loss.astype(dtype))

    # grad: 1 - y at +inf, -pos_weight * y at -inf, times weight and grad_output
    go = 0.5
    expected_grad = np.where(np.isposinf(z.astype(np.float64)), 1.0 - y64, -pw64 * y64) * w64 * go
    for grad in (
        fastloss.binary_cross_entropy_with_logits_grad(z, y, weight=w, pos_weight=pw,
                                                       reduction="none", grad_output=go),
        fastloss.binary_cross_entropy_with_logits_and_grad(z, y, weight=w, pos_weight=pw,
                                                           reduction="none", grad_output=go)[1],
    ):
        assert not np.isnan(grad).any()
        assert_elementwise_close(grad, expected_grad, dtype)
    mean_grad = fastloss.binary_cross_entropy_with_logits_grad(z, y, weight=w, pos_weight=pw)
    assert_elementwise_close(mean_grad, expected_grad / go / 6, dtype)

    # labels that agree with the infinite logit: an exact zero loss, also reduced
    agree = np.array([2, 3])
    zero_sum = fastloss.binary_cross_entropy_with_logits(z[agree], y[agree], weight=w[agree],
                                                         reduction="sum")
    assert zero_sum == 0 and type(zero_sum) is np.dtype(dtype).type


@pytest.mark.parametrize("op", [MSE, LOGITS], ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", [8, 100_000], ids=["serial", "parallel"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduction_with_an_infinite_term_is_inf(op, dtype, n, reduction):
    """A sum of non-negative terms of which one is +inf is +inf (not NaN)."""
    rng = np.random.default_rng(seed_for("inf-term", op.name, np.dtype(dtype).name, n, reduction))
    x, y = make_inputs(op.name, (n,), dtype, rng, soft=True)
    if op is MSE:
        # (x - y)**2 overflows: float64 1e200 - (-1e200); float32 FLT_MAX - (-FLT_MAX) is
        # 4.6e77 in double, which still rounds to inf in float32
        big = 1e200 if dtype == np.float64 else F32_MAX
        x[n // 2], y[n // 2] = big, -big
    else:
        x[n // 2], y[n // 2] = np.inf, 0.0
    exact = op.reference_loss(x, y, None, None, reduction)
    # +inf, or (float32 MSE) a float64 value beyond what float32 can hold
    assert exact == np.inf or (dtype == np.float32 and exact >= F32_OVERFLOW)
    loss = op.call_loss(x, y, reduction=reduction)
    assert_reduction_close(loss, exact, dtype, what=f"{op.name} {reduction} with one inf term")
    fused, _ = op.call_and_grad(x, y, reduction=reduction)
    assert_reduction_close(fused, exact, dtype, what=f"{op.name} and_grad {reduction}, inf term")


# ---- NaN propagates -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("where", ["input", "target"])
@pytest.mark.parametrize("n", [9, 70_001], ids=["serial", "parallel"])
def test_nan_propagates(op, dtype, where, n):
    rng = np.random.default_rng(seed_for("nan", op.name, np.dtype(dtype).name, where, n))
    x, y = make_inputs(op.name, (n,), dtype, rng, soft=True)
    k = n // 3
    (x if where == "input" else y)[k] = np.nan
    others = np.arange(n) != k
    for reduction in ("mean", "sum"):
        assert np.isnan(op.call_loss(x, y, reduction=reduction)), reduction
        loss, grad = op.call_and_grad(x, y, reduction=reduction)
        assert np.isnan(loss) and np.isnan(grad[k]) and np.isfinite(grad[others]).all()
    loss = op.call_loss(x, y, reduction="none")
    assert np.isnan(loss[k]) and np.isfinite(loss[others]).all()
    grad = op.call_grad(x, y, reduction="none")
    assert np.isnan(grad[k]) and np.isfinite(grad[others]).all()
    # weighted path too
    w = np.full(n, 1.5, dtype=dtype)
    assert np.isnan(op.call_loss(x, y, w, None, "sum"))


# ---- sigmoid ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_sigmoid_saturates_exactly(dtype):
    x = np.array([1e4, -1e4, np.inf, -np.inf, 800.0, -800.0, 0.0, -0.0, np.nan], dtype=dtype)
    s = fastloss.sigmoid(x)
    assert s.dtype == dtype and s.shape == x.shape
    np.testing.assert_array_equal(s[:8], np.array([1, 0, 1, 0, 1, 0, 0.5, 0.5], dtype=dtype))
    assert np.isnan(s[8])
    big = np.tile(x, 5_000)  # the parallel path
    np.testing.assert_array_equal(fastloss.sigmoid(big), np.tile(s, 5_000))


def test_sigmoid_float32_within_2_ulp_on_dense_grid():
    grid = np.linspace(-88.0, 88.0, 2_000_001, dtype=np.float32)
    near_zero = np.linspace(-1e-3, 1e-3, 200_001, dtype=np.float32)
    # runs of consecutive float32 values (every bit pattern) starting at a few points
    runs = [np.arange(start, start + 100_000, dtype=np.int32).view(np.float32)
            for start in (np.array([-87.5, -20.0, -1.0, 0.5, 15.0], dtype=np.float32)
                          .view(np.int32).tolist())]
    x = np.concatenate([grid, near_zero, *runs])
    out = fastloss.sigmoid(x)
    ref = R.sigmoid(x)
    ulps = ulp_distance_f32(out, ref)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= 2.0, (
        f"sigmoid({x[worst]!r}) = {out[worst]!r}, reference {ref[worst]!r}: {ulps[worst]:.2f} ulp")
    # at the left end the values are subnormal in float32 and must not be flushed to zero
    assert out[0] > 0 and out[0] < np.finfo(np.float32).tiny


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", [5, 40_000])
def test_sigmoid_backward_matches_reference(dtype, n):
    rng = np.random.default_rng(seed_for("sigmoid_backward", np.dtype(dtype).name, n))
    g = rng.standard_normal(n).astype(dtype)
    s = fastloss.sigmoid(rng.standard_normal(n).astype(dtype) * 4)
    out = fastloss.sigmoid_backward(g, s)
    assert_elementwise_close(out, R.sigmoid_backward(g, s), dtype)
    # saturated outputs give a zero gradient; NaN propagates
    special = fastloss.sigmoid_backward(np.array([1.0, 2.0, np.nan], dtype=dtype),
                                        np.array([0.0, 1.0, 0.5], dtype=dtype))
    assert special[0] == 0 and special[1] == 0 and np.isnan(special[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", [6, 50_000])
def test_sigmoid_out_and_in_place(dtype, n):
    rng = np.random.default_rng(seed_for("sigmoid-out", np.dtype(dtype).name, n))
    x = (rng.standard_normal(n) * 5).astype(dtype)
    expected = fastloss.sigmoid(x)
    assert_elementwise_close(expected, R.sigmoid(x), dtype)
    out = np.empty_like(x)
    assert fastloss.sigmoid(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    x_in = x.copy()
    assert fastloss.sigmoid(x_in, out=x_in) is x_in
    np.testing.assert_array_equal(x_in, expected)

    g = rng.standard_normal(n).astype(dtype)
    expected_back = fastloss.sigmoid_backward(g, expected)
    g_in = g.copy()
    assert fastloss.sigmoid_backward(g_in, expected, out=g_in) is g_in
    np.testing.assert_array_equal(g_in, expected_back)
    s_in = expected.copy()
    assert fastloss.sigmoid_backward(g, s_in, out=s_in) is s_in
    np.testing.assert_array_equal(s_in, expected_back)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_sigmoid_shapes(dtype):
    for shape in [(), (0,), (3, 0), (2, 3, 4)]:
        x = np.asarray(np.linspace(-3, 3, int(np.prod(shape))).reshape(shape), dtype=dtype)
        s = fastloss.sigmoid(x)
        assert s.shape == shape and s.dtype == dtype and type(s) is np.ndarray
        assert_elementwise_close(s, R.sigmoid(x), dtype)
        b = fastloss.sigmoid_backward(x, s)
        assert b.shape == shape and b.dtype == dtype
