"""Property tests (hypothesis): random shapes, dtypes, reductions, weights and values, extremes
included, give fastloss.reference's results within the suite's stated tolerances.

The tolerances are those of _helpers: a reduced float32 loss within ``reduction_ulp_bound``
float32 ulps of the exact value (float64: relative 1e-13), per-element results within
``assert_elementwise_close``'s bounds, NaN and inf where the reference has them, sigmoid within
1 float32 ulp, and ``*_and_grad`` within 4 ulps of the separate calls.

By default hypothesis runs the 'ci' profile of tests/conftest.py: derandomized (the same
examples on every run) with a fixed number of examples. ``--hypothesis-profile=explore`` draws
new random examples, many more of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastloss  # noqa: E402
from _helpers import (  # noqa: E402
    LOGITS,
    MSE,
    OPS,
    assert_elementwise_close,
    assert_loss_matches,
    assert_same_bits,
    assert_within_ulps,
    reduction_ulp_bound,
    ulp_distance_f32,
)
from fastloss import reference as R  # noqa: E402

DTYPES = st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])
REDUCTIONS = st.sampled_from(["mean", "sum", "none"])


@st.composite
def shapes(draw):
    """Small shapes of any rank (0-d and empty included), or sizes on both sides of a chunk
    (8192 elements) and of the parallel threshold (32768)."""
    if draw(st.booleans()):
        return draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    n = draw(st.sampled_from([8191, 8193, 32_767, 32_768, 40_001]))
    columns = draw(st.sampled_from([1, 3, 16]))
    return (n // columns, columns)


def _floats(dtype, **bounds):
    return st.floats(width=8 * dtype.itemsize, **bounds)


def _filled(draw, dtype, shape, elements):
    """An array of ``shape`` with values from ``elements``: drawn element by element for small
    arrays; for large ones (hypothesis cannot draw 40,000 elements one by one in reasonable
    time) values spread between two drawn ends, with up to 16 drawn values at drawn places."""
    if math.prod(shape) <= 256:
        return draw(hnp.arrays(dtype, shape, elements=elements))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ends = [v for v in (draw(elements), draw(elements)) if math.isfinite(v)] or [0.0]
    u = rng.random(math.prod(shape))
    # a convex combination: within [min(ends), max(ends)] without computing their difference,
    # which may overflow
    flat = (min(ends) * (1.0 - u) + max(ends) * u).astype(dtype)
    for _ in range(draw(st.integers(0, 16))):
        flat[draw(st.integers(0, flat.size - 1))] = draw(elements)
    return flat.reshape(shape)


def _input_elements(op_name, dtype):
    if op_name == "bce":  # probabilities: 0, 1, subnormals, 1 - 2**-24 ...
        return _floats(dtype, min_value=0.0, max_value=1.0)
    if op_name == "logits":  # every logit, +-inf and +-FLT_MAX included
        return _floats(dtype, allow_nan=False)
    return _floats(dtype, allow_nan=False)


def _target_elements(op_name, dtype):
    if op_name == "mse":
        return _floats(dtype, allow_nan=False)
    return _floats(dtype, min_value=0.0, max_value=1.0)  # soft labels, 0 and 1 included


@st.composite
def weights(draw, dtype, shape, name):
    """None, a Python float, or an array that broadcasts to ``shape``: a trailing block, the
    full shape, or with ones inserted (materialised by fastloss); values in [0, 1e6]."""
    kind = draw(st.sampled_from(["none", "scalar", "trailing", "full", "ones"]))
    elements = _floats(dtype, min_value=0.0, max_value=1e6)
    if kind == "none":
        return None
    if kind == "scalar":
        return float(draw(elements))
    if kind == "trailing":
        wshape = shape[len(shape) - draw(st.integers(0, len(shape))):]
    elif kind == "full":
        wshape = shape
    else:
        wshape = tuple(1 if draw(st.booleans()) else side for side in shape)
    return _filled(draw, dtype, wshape, elements)


@st.composite
def loss_cases(draw):
    op = draw(st.sampled_from(OPS))
    dtype = draw(DTYPES)
    shape = draw(shapes())
    x = _filled(draw, dtype, shape, _input_elements(op.name, dtype))
    y = _filled(draw, dtype, shape, _target_elements(op.name, dtype))
    w = draw(weights(dtype, shape, "weight"))
    pw = draw(weights(dtype, shape, "pos_weight")) if op.has_pos_weight else None
    reduction = draw(REDUCTIONS)
    if reduction == "none" and draw(st.booleans()):
        grad_output = _filled(draw, dtype, shape, _floats(dtype, min_value=-1e3, max_value=1e3))
    else:
        grad_output = draw(st.floats(-1e3, 1e3))
    return op, x, y, w, pw, reduction, grad_output


def assert_reduced_loss(op, loss, exact, x, y, w, pw, reduction, max_ulps):
    """``check_loss``'s bounds, except that a reduced logits loss may also be off by the sum of
    its elements' flush allowances (``Op.loss_term_size``): visible in ulps only when the whole
    loss is that small."""
    if reduction == "none":
        op.check_loss(loss, x, y, w, pw, reduction)
        return
    try:
        assert_loss_matches(loss, exact, x.dtype, reduction, max_ulps=max_ulps)
    except AssertionError:
        if op is not LOGITS or not math.isfinite(exact):
            raise
        allowance = math.fsum(op.loss_term_size(x, y, w, pw).ravel())
        if reduction == "mean":
            allowance /= x.size
        if not abs(float(loss) - exact) <= allowance:
            raise


def _exact_loss(op, x, y, w, pw, reduction):
    """The reference's loss; math.fsum raises OverflowError when the exact sum of the (finite,
    non-negative) terms exceeds the float64 range, where the kernels rightly return inf."""
    try:
        return op.reference_loss(x, y, w, pw, reduction)
    except OverflowError:
        return math.inf


# Counterexamples found by --hypothesis-profile=explore, kept: a float64 sum that overflows
# (the Kahan compensation turned inf into NaN), a float64 gradient near 1e308 (the reference
# overflowed first), a float32 loss below 2^-126 (flushed by the float exp, as documented);
# MSE gradients where 2 * (x - y) overflows or a subnormal result rounds twice unless MSE's
# factor 2 joins the scale, as in the kernels and PyTorch (found by CI's hypothesis run).
@example((MSE, np.zeros(3), np.full(3, 2.0), np.array([2.33669682e-70, 0.0, 0.0]), None, "mean",
          2.089630312081817e-251))
@example((MSE, np.array(0.0), np.array(8.98846567e+307), None, None, "mean", 0.5))
@example((MSE, np.array(0.0), np.array(8.98846567e+307), None, None, "mean", 0.0))
@example((LOGITS, np.full((8191, 1), 5e300), np.zeros((8191, 1)), 80835.0, None, "mean", 0.0))
@example((MSE, np.array(0.0), np.array(5.28733275e306), 17.0, None, "mean", 0.5))
@example((LOGITS, np.array(-88.0, np.float32), np.array(0.0, np.float32), None, None, "mean",
          0.0))
@given(loss_cases())
def test_losses_and_gradients_match_the_reference(case):
    op, x, y, w, pw, reduction, grad_output = case
    ulps = reduction_ulp_bound(op.name, x.size)
    exact = _exact_loss(op, x, y, w, pw, reduction)
    loss = op.call_loss(x, y, w, pw, reduction)
    assert_reduced_loss(op, loss, exact, x, y, w, pw, reduction, ulps)

    grad = op.call_grad(x, y, w, pw, reduction, grad_output=grad_output)
    op.check_grad(grad, x, y, w, pw, reduction, grad_output)

    fused_loss, fused_grad = op.call_and_grad(x, y, w, pw, reduction, grad_output=grad_output)
    assert_within_ulps(fused_loss, loss, max_ulps=4, what="and_grad loss vs loss")
    assert_within_ulps(fused_grad, grad, max_ulps=4, what="and_grad grad vs grad")


@given(loss_cases())
def test_non_contiguous_views_give_the_same_bits(case):
    """A reversed view of each argument (copied by fastloss) gives the bits of a contiguous
    copy of it."""
    op, x, y, w, pw, reduction, _ = case
    if x.ndim == 0:
        return  # a 0-d array has no view to reverse
    flip = (slice(None, None, -1),) * x.ndim
    xv, yv = x[flip], y[flip]
    want = op.call_loss(np.ascontiguousarray(xv), np.ascontiguousarray(yv), w, pw, reduction)
    assert_same_bits(op.call_loss(xv, yv, w, pw, reduction), want)


@given(dtype=DTYPES, data=st.data())
def test_sigmoid_matches_the_reference(dtype, data):
    shape = data.draw(shapes())
    x = _filled(data.draw, dtype, shape, _floats(dtype))  # NaN and +-inf included
    s = fastloss.sigmoid(x)
    ref = R.sigmoid(x)
    if dtype == np.float32:
        assert_elementwise_close(s, ref, dtype)  # NaN where the input is NaN
        finite = ~np.isnan(ref)
        assert (ulp_distance_f32(s[finite], ref[finite]) <= 1.0).all()
    else:
        assert_elementwise_close(s, ref, dtype)
    g = _filled(data.draw, dtype, shape, _floats(dtype, allow_nan=False, min_value=-2.0**100,
                                                 max_value=2.0**100))
    assert_elementwise_close(fastloss.sigmoid_backward(g, s), R.sigmoid_backward(g, s), dtype)
    out = np.empty_like(x)
    assert fastloss.sigmoid(x, out=out) is out
    assert_same_bits(out, s)
