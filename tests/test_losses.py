"""Every loss, gradient and fused loss-and-gradient against fastloss.reference (float64 NumPy).

The matrix: sizes 0, 1, 7, 4097, 10**6+3 and shapes (3, 5), (2, 3, 4097); float32 and float64;
reductions mean/sum/none; weights absent, scalar, trailing (C,), full and (B, 1) (not a
trailing block); pos_weight for the logits form; hard and soft targets for the BCE forms.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
from _helpers import (
    loss_case,
    DTYPES,
    LOGITS,
    OPS,
    OPS_BY_NAME,
    assert_same_bits,
    assert_within_ulps,
    make_inputs,
    make_weight,
    seed_for,
)

REDUCTIONS = ("mean", "sum", "none")
SMALL_1D = [(0,), (1,), (7,), (4097,)]
MULTI_DIM = [(3, 5), (2, 3, 4097)]
BIG = (10**6 + 3,)
GRAD_OUTPUT = 0.375  # a scalar upstream gradient != 1


def _weight_combos(op_name, shape):
    """(weight kind, pos_weight kind) pairs that make sense for this op and input shape."""
    multi = len(shape) >= 2
    wkinds = [None, "scalar", "full"] + (["trailing", "col"] if multi else [])
    combos = [(w, None) for w in wkinds]
    if op_name == "logits":
        pkinds = ["scalar", "full"] + (["trailing", "col"] if multi else [])
        combos += [(None, p) for p in pkinds]
        combos += [("full", "scalar")]
        if multi:
            combos += [("trailing", "trailing"), ("col", "full"), ("scalar", "col")]
    return combos


def _cases():
    cases = []
    for op in OPS:
        softs = (False, True) if op.name != "mse" else (False,)
        for dtype in DTYPES:
            for reduction in REDUCTIONS:
                for shape in SMALL_1D + MULTI_DIM:
                    for soft in softs:
                        for wkind, pkind in _weight_combos(op.name, shape):
                            cases.append(loss_case(op.name, shape, dtype, reduction, wkind,
                                                   pkind, soft))
                # one million elements: the parallel path, unweighted and one weighted form
                big = [(None, None, False), ("full", None, True)]
                if op.name == "logits":
                    big.append(("scalar", "full", True))
                if op.name == "mse":
                    big = [(w, p, False) for w, p, _ in big]
                for wkind, pkind, soft in big:
                    cases.append(loss_case(op.name, BIG, dtype, reduction, wkind, pkind, soft))
    return cases


@pytest.mark.parametrize("op_name, shape, dtype, reduction, wkind, pkind, soft", _cases())
def test_against_reference(op_name, shape, dtype, reduction, wkind, pkind, soft):
    op = OPS_BY_NAME[op_name]
    rng = np.random.default_rng(seed_for(op_name, shape, np.dtype(dtype).name, reduction,
                                         wkind, pkind, soft))
    x, y = make_inputs(op_name, shape, dtype, rng, soft=soft)
    w = make_weight(wkind, shape, dtype, rng)
    pw = make_weight(pkind, shape, dtype, rng)
    x_before, y_before = x.copy(), y.copy()

    loss = op.call_loss(x, y, w, pw, reduction)
    op.check_loss(loss, x, y, w, pw, reduction)
    grad = op.call_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
    op.check_grad(grad, x, y, w, pw, reduction, GRAD_OUTPUT)

    fused_loss, fused_grad = op.call_and_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
    op.check_loss(fused_loss, x, y, w, pw, reduction, what=f"{op_name} and_grad loss")
    op.check_grad(fused_grad, x, y, w, pw, reduction, GRAD_OUTPUT, what=f"{op_name} and_grad grad")

    # inputs are never written to
    assert_same_bits(x, x_before, what="input after the calls")
    assert_same_bits(y, y_before, what="target after the calls")


def _fused_cases():
    cases = []
    for op in OPS:
        combos = [(None, None), ("scalar", None), ("full", None), ("trailing", None), ("col", None)]
        if op.name == "logits":
            combos += [(None, "trailing"), (None, "full"), ("col", "scalar")]
        for dtype in DTYPES:
            for reduction in REDUCTIONS:
                for shape in [(7, 3), (2, 3, 4097), (40_000, 2)]:
                    for wkind, pkind in combos:
                        cases.append(loss_case(op.name, shape, dtype, reduction, wkind, pkind))
    return cases


@pytest.mark.parametrize("op_name, shape, dtype, reduction, wkind, pkind", _fused_cases())
def test_and_grad_equals_separate_calls(op_name, shape, dtype, reduction, wkind, pkind):
    """``*_and_grad`` is ``(loss(...), grad(...))`` in one pass. The same formulas, but the
    compiler may fuse multiply-adds differently in the fused loop (AVX2 build), so float64
    results may differ in the last bits; a few ulps is the bound, not a tolerance on accuracy."""
    op = OPS_BY_NAME[op_name]
    rng = np.random.default_rng(seed_for("fused", op_name, shape, np.dtype(dtype).name,
                                         reduction, wkind, pkind))
    x, y = make_inputs(op_name, shape, dtype, rng, soft=True)
    w = make_weight(wkind, shape, dtype, rng)
    pw = make_weight(pkind, shape, dtype, rng)
    loss = op.call_loss(x, y, w, pw, reduction)
    grad = op.call_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
    fused_loss, fused_grad = op.call_and_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
    assert_within_ulps(fused_loss, loss, max_ulps=4, what="and_grad loss vs loss")
    assert_within_ulps(fused_grad, grad, max_ulps=4, what="and_grad grad vs grad")


# ---- grad_output as an array (reduction='none') -------------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, go_shape", [
    ((7,), (7,)), ((3, 5), (3, 5)), ((3, 5), (5,)), ((3, 5), (3, 1)), ((2, 3, 4097), (2, 3, 4097)),
    ((40_000,), (40_000,)),
], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("wkind", [None, "full", "trailing"])
def test_grad_output_array_with_reduction_none(op, dtype, shape, go_shape, wkind):
    rng = np.random.default_rng(seed_for(op.name, np.dtype(dtype).name, shape, go_shape, wkind))
    x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
    w = make_weight(wkind, shape, dtype, rng)
    pw = make_weight("trailing", shape, dtype, rng) if op.has_pos_weight else None
    g = rng.uniform(-2.0, 2.0, size=go_shape).astype(dtype)

    grad = op.call_grad(x, y, w, pw, "none", grad_output=g)
    op.check_grad(grad, x, y, w, pw, "none", g, what="grad with array grad_output")
    _, fused_grad = op.call_and_grad(x, y, w, pw, "none", grad_output=g)
    op.check_grad(fused_grad, x, y, w, pw, "none", g, what="and_grad grad with array grad_output")


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, go_shape, wkind", [
    ((7,), (7,), None), ((3, 5), (5,), "full"), ((40_000,), (40_000,), None),
], ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else str(s))
def test_and_grad_loss_is_not_scaled_by_grad_output_array(op, dtype, shape, go_shape, wkind):
    """The loss of ``*_and_grad(..., reduction='none', grad_output=g)`` is the plain
    per-element loss, the same as ``loss(..., reduction='none')``: grad_output is the upstream
    gradient and only scales the gradient."""
    rng = np.random.default_rng(seed_for("and_grad_loss", op.name, np.dtype(dtype).name, shape))
    x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
    w = make_weight(wkind, shape, dtype, rng)
    pw = make_weight("trailing", shape, dtype, rng) if op.has_pos_weight else None
    g = rng.uniform(-2.0, 2.0, size=go_shape).astype(dtype)
    fused_loss, _ = op.call_and_grad(x, y, w, pw, "none", grad_output=g)
    op.check_loss(fused_loss, x, y, w, pw, "none", what="and_grad loss with array grad_output")


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("grad_output", [
    2, -1.5, 0.0, np.float64(3.25), np.float32(0.5), "0-d",
], ids=["int", "negative", "zero", "np.float64", "np.float32", "0-d-array"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scalar_grad_output_forms(op, dtype, grad_output, reduction):
    rng = np.random.default_rng(seed_for(op.name, np.dtype(dtype).name, repr(grad_output),
                                         reduction))
    x, y = make_inputs(op.name, (5, 9), dtype, rng, soft=True)
    if isinstance(grad_output, str):
        grad_output = np.array(-0.625, dtype=dtype)
    grad = op.call_grad(x, y, reduction=reduction, grad_output=grad_output)
    op.check_grad(grad, x, y, None, None, reduction, float(grad_output),
                  what=f"grad with grad_output={grad_output!r}")


# ---- weights given in other scalar forms, and other broadcasts --------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("wform", ["int", "np-scalar", "0-d", "(1,)", "(1,C)", "(1,5,1)",
                                   "noncontiguous-full", "(B,1,1)"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weight_forms(op, dtype, wform, reduction):
    shape = (4, 5, 3)
    rng = np.random.default_rng(seed_for(op.name, np.dtype(dtype).name, wform, reduction))
    x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
    forms = {
        "int": lambda: 2,
        "np-scalar": lambda: np.dtype(dtype).type(1.25),
        "0-d": lambda: np.array(0.5, dtype=dtype),
        "(1,)": lambda: np.array([1.5], dtype=dtype),
        "(1,C)": lambda: rng.uniform(0.5, 2, size=(1, 3)).astype(dtype),
        "(1,5,1)": lambda: rng.uniform(0.5, 2, size=(1, 5, 1)).astype(dtype),
        "noncontiguous-full": lambda: rng.uniform(0.5, 2, size=(3, 5, 4)).astype(dtype).T,
        "(B,1,1)": lambda: rng.uniform(0.5, 2, size=(4, 1, 1)).astype(dtype),
    }
    w = forms[wform]()
    pw = forms[wform]() if op.has_pos_weight else None
    op.check_loss(op.call_loss(x, y, w, pw, reduction), x, y, w, pw, reduction, max_ulps=1)
    grad = op.call_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
    op.check_grad(grad, x, y, w, pw, reduction, GRAD_OUTPUT)
    fused = op.call_and_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
    op.check_loss(fused[0], x, y, w, pw, reduction, max_ulps=1)
    op.check_grad(fused[1], x, y, w, pw, reduction, GRAD_OUTPUT)


def test_weight_changes_the_result():
    """Guards against a weight being silently ignored: doubling it doubles the loss."""
    rng = np.random.default_rng(11)
    for op in OPS:
        x, y = make_inputs(op.name, (50, 7), np.float64, rng, soft=True)
        w = rng.uniform(0.5, 2, size=7)
        base = op.call_loss(x, y, w, None, "sum")
        doubled = op.call_loss(x, y, 2 * w, None, "sum")
        assert doubled == pytest.approx(2 * base, rel=1e-14)
        assert base != pytest.approx(op.call_loss(x, y, None, None, "sum"), rel=1e-6)
    x, y = make_inputs("logits", (50, 7), np.float64, rng, soft=True)
    pw = rng.uniform(2, 3, size=7)
    assert (LOGITS.call_loss(x, y, None, pw, "sum")
            != pytest.approx(LOGITS.call_loss(x, y, None, None, "sum"), rel=1e-6))


# ---- empty inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)], ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_empty_input(op, dtype, shape, weighted):
    x = np.zeros(shape, dtype=dtype)
    y = np.zeros(shape, dtype=dtype)
    w = np.ones(shape[-1:], dtype=dtype) if weighted else None
    pw = np.ones(shape[-1:], dtype=dtype) if weighted and op.has_pos_weight else None

    mean = op.call_loss(x, y, w, pw, "mean")
    assert type(mean) is np.dtype(dtype).type and np.isnan(mean)
    total = op.call_loss(x, y, w, pw, "sum")
    assert type(total) is np.dtype(dtype).type and total == 0
    none = op.call_loss(x, y, w, pw, "none")
    assert isinstance(none, np.ndarray) and none.shape == shape and none.dtype == dtype

    for reduction in REDUCTIONS:
        grad = op.call_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
        assert isinstance(grad, np.ndarray) and grad.shape == shape and grad.dtype == dtype
        loss, grad = op.call_and_grad(x, y, w, pw, reduction, grad_output=GRAD_OUTPUT)
        assert grad.shape == shape and grad.dtype == dtype
        if reduction == "mean":
            assert np.isnan(loss)
        elif reduction == "sum":
            assert loss == 0
        else:
            assert loss.shape == shape


# ---- result types and shapes --------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(), (1,), (4, 1, 3)], ids=str)
def test_result_types(op, dtype, shape):
    rng = np.random.default_rng(seed_for(op.name, np.dtype(dtype).name, shape))
    x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
    for reduction in ("mean", "sum"):
        loss = op.call_loss(x, y, reduction=reduction)
        assert type(loss) is np.dtype(dtype).type, type(loss)
        op.check_loss(loss, x, y, reduction=reduction)
    none = op.call_loss(x, y, reduction="none")
    assert type(none) is np.ndarray and none.dtype == dtype and none.shape == shape
    op.check_loss(none, x, y, reduction="none")
    grad = op.call_grad(x, y)
    assert type(grad) is np.ndarray and grad.dtype == dtype and grad.shape == shape
    result = op.call_and_grad(x, y)
    assert type(result) is tuple and len(result) == 2


# ---- out= ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [13, 50_000])
def test_out_buffer_and_in_place(op, dtype, n):
    rng = np.random.default_rng(seed_for(op.name, np.dtype(dtype).name, n))
    x, y = make_inputs(op.name, (n,), dtype, rng, soft=True)
    out = np.full_like(x, np.nan)
    got = op.call_grad(x, y, grad_output=GRAD_OUTPUT, out=out)
    assert got is out
    op.check_grad(out, x, y, grad_output=GRAD_OUTPUT)

    out2 = np.full_like(x, np.nan)
    loss, got = op.call_and_grad(x, y, grad_output=GRAD_OUTPUT, out=out2)
    assert got is out2
    assert_same_bits(out2, out)
    op.check_loss(loss, x, y)

    # out may be the input itself: the gradient overwrites it, the loss is of the original input
    x_in = x.copy()
    loss, got = op.call_and_grad(x_in, y, grad_output=GRAD_OUTPUT, out=x_in)
    assert got is x_in
    assert_same_bits(x_in, out)
    op.check_loss(loss, x, y)

    # or the target
    y_in = y.copy()
    got = op.call_grad(x, y_in, grad_output=GRAD_OUTPUT, out=y_in)
    assert got is y_in
    assert_same_bits(y_in, out)


def test_sixteen_elements():
    """The small-array fast path (no weights, float grad_output) computes the right values."""
    rng = np.random.default_rng(16)
    for op in OPS:
        for dtype in DTYPES:
            x, y = make_inputs(op.name, (16,), dtype, rng, soft=True)
            for reduction in REDUCTIONS:
                op.check_loss(op.call_loss(x, y, reduction=reduction), x, y, reduction=reduction)
                op.check_grad(op.call_grad(x, y, reduction=reduction), x, y, reduction=reduction)


def test_package_exports():
    for name in fastloss.__all__:
        assert callable(getattr(fastloss, name))
