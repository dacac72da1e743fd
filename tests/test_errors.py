"""Bad input gives a clear exception (never a crash, never a silent wrong answer)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastloss
from _helpers import (
    BCE,
    DTYPES,
    LOGITS,
    OPS,
    assert_elementwise_close,
    assert_loss_matches,
    assert_same_bits,
    make_inputs,
    seed_for,
)

dtype_ids = lambda d: np.dtype(d).name  # noqa: E731

# every public loss-like function as (name, callable(input, target, **kw))
LOSS_FUNCTIONS = [
    (f"{op.name}.{kind}", getattr(op, kind), op)
    for op in OPS for kind in ("loss", "grad", "and_grad")
]
LOSS_IDS = [name for name, _, _ in LOSS_FUNCTIONS]
GRAD_FUNCTIONS = [(n, f, op) for n, f, op in LOSS_FUNCTIONS if not n.endswith(".loss")]
GRAD_IDS = [name for name, _, _ in GRAD_FUNCTIONS]


def _valid(op, shape=(4, 3), dtype=np.float32, seed=0):
    return make_inputs(op.name, shape, dtype, np.random.default_rng(seed), soft=True)


# ---- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("shapes", [((3, 4), (4, 3)), ((12,), (3, 4)), ((3, 4), (3, 5)),
                                    ((5,), (1,)), ((2, 3), (2, 3, 1))], ids=str)
def test_mismatched_shapes(name, fn, op, shapes):
    sx, sy = shapes
    x, _ = _valid(op, sx)
    _, y = _valid(op, sy)
    with pytest.raises(ValueError) as info:
        fn(x, y)
    message = str(info.value)
    assert str(sx) in message and str(sy) in message, message


def test_sigmoid_backward_mismatched_shapes():
    with pytest.raises(ValueError) as info:
        fastloss.sigmoid_backward(np.ones((2, 3)), np.ones((3, 2)))
    assert "(2, 3)" in str(info.value) and "(3, 2)" in str(info.value)


# ---- dtypes -------------------------------------------------------------------------------------
BAD_DTYPES = ["int32", "int64", "float16", "complex64", "object", "bool"]


def _array_of(dtype, shape=(4, 3)):
    return np.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("bad", BAD_DTYPES)
@pytest.mark.parametrize("position", ["input", "target", "both"])
def test_unsupported_dtype(name, fn, op, bad, position):
    x, y = _valid(op)
    if position in ("input", "both"):
        x = _array_of(bad)
    if position in ("target", "both"):
        y = _array_of(bad)
    with pytest.raises(TypeError, match=re.escape(bad)):
        fn(x, y)


@pytest.mark.parametrize("bad", BAD_DTYPES)
def test_sigmoid_unsupported_dtype(bad):
    with pytest.raises(TypeError, match=re.escape(bad)):
        fastloss.sigmoid(_array_of(bad))
    with pytest.raises(TypeError, match=re.escape(bad)):
        fastloss.sigmoid_backward(_array_of(bad), _array_of(bad))
    with pytest.raises(TypeError, match=re.escape(bad)):
        fastloss.sigmoid_backward(np.zeros((4, 3)), _array_of(bad))


@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("dtypes", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["f32-f64", "f64-f32"])
def test_mixed_float_dtypes(name, fn, op, dtypes):
    x, _ = _valid(op, dtype=dtypes[0])
    _, y = _valid(op, dtype=dtypes[1])
    with pytest.raises(TypeError) as info:
        fn(x, y)
    assert "float32" in str(info.value) and "float64" in str(info.value), str(info.value)


def test_sigmoid_backward_mixed_dtypes():
    with pytest.raises(TypeError) as info:
        fastloss.sigmoid_backward(np.ones(3, np.float32), np.ones(3, np.float64))
    assert "float32" in str(info.value) and "float64" in str(info.value)


@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("which", ["input", "target"])
@pytest.mark.parametrize("byteorder", [">f4", ">f8"])
def test_big_endian_arrays_are_rejected(name, fn, op, which, byteorder):
    native = np.dtype(byteorder).newbyteorder("=")
    x, y = _valid(op, dtype=native)
    if which == "input":
        x = x.astype(byteorder)
    else:
        y = y.astype(byteorder)
    with pytest.raises(TypeError):
        fn(x, y)


def test_big_endian_sigmoid_and_out():
    with pytest.raises(TypeError):
        fastloss.sigmoid(np.ones(3, dtype=">f4"))
    with pytest.raises(TypeError):
        fastloss.sigmoid_backward(np.ones(3, dtype=">f8"), np.ones(3, dtype=">f8"))
    with pytest.raises(TypeError):
        fastloss.sigmoid(np.ones(3, np.float32), out=np.empty(3, dtype=">f4"))
    x = np.ones(3, np.float32)
    with pytest.raises(TypeError):
        fastloss.mse_loss_grad(x, x, out=np.empty(3, dtype=">f4"))
    with pytest.raises(TypeError):
        fastloss.mse_loss(x, x, weight=np.ones(3, dtype=">f4"))


# ---- not NumPy arrays ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("bad", [[0.5, 0.25], 0.5, (0.5, 0.25), None, "abc"], ids=repr)
@pytest.mark.parametrize("which", ["input", "target"])
def test_non_numpy_arguments(name, fn, op, bad, which):
    x, y = _valid(op, shape=(2,))
    with pytest.raises(TypeError):
        if which == "input":
            fn(bad, y)
        else:
            fn(x, bad)


@pytest.mark.parametrize("bad", [[0.5, 0.25], 0.5, None])
def test_sigmoid_non_numpy(bad):
    with pytest.raises(TypeError):
        fastloss.sigmoid(bad)
    with pytest.raises(TypeError):
        fastloss.sigmoid_backward(bad, np.ones(2))
    with pytest.raises(TypeError):
        fastloss.sigmoid_backward(np.ones(2), bad)
    with pytest.raises(TypeError):
        fastloss.sigmoid(np.ones(2), out=[0.0, 0.0])


# ---- non-contiguous inputs are handled correctly ------------------------------------------------
def _views(base):
    """(name, non-contiguous view) pairs of a 2-D base array."""
    return [
        ("step2", base[::2]),
        ("transpose", base.T),
        ("negative", base[::-1, ::-1]),
        ("column-step", base[:, 1::3]),
    ]


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("view", ["step2", "transpose", "negative", "column-step"])
@pytest.mark.parametrize("rows", [6, 40_000], ids=["small", "parallel"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_non_contiguous_inputs(op, dtype, view, rows, reduction):
    rng = np.random.default_rng(seed_for("noncontig", op.name, np.dtype(dtype).name, view, rows))
    xb, yb = make_inputs(op.name, (rows, 6), dtype, rng, soft=True)
    wb = rng.uniform(0.5, 2, size=(rows, 6)).astype(dtype)
    x = dict(_views(xb))[view]
    y = dict(_views(yb))[view]
    w = dict(_views(wb))[view]
    assert not x.flags.c_contiguous
    xc, yc, wc = (np.ascontiguousarray(a) for a in (x, y, w))
    pw_kw = {"pos_weight": w} if op.has_pos_weight else {}
    pwc_kw = {"pos_weight": wc} if op.has_pos_weight else {}
    for kw, kwc in [({}, {}), ({"weight": w, **pw_kw}, {"weight": wc, **pwc_kw})]:
        assert_same_bits(op.loss(x, y, reduction=reduction, **kw),
                         op.loss(xc, yc, reduction=reduction, **kwc), what="loss")
        assert_same_bits(op.grad(x, y, reduction=reduction, **kw),
                         op.grad(xc, yc, reduction=reduction, **kwc), what="grad")
        got = op.and_grad(x, y, reduction=reduction, **kw)
        want = op.and_grad(xc, yc, reduction=reduction, **kwc)
        assert_same_bits(got[0], want[0], what="and_grad loss")
        assert_same_bits(got[1], want[1], what="and_grad grad")
    # and the contiguous result is right
    assert_loss_matches(op.loss(x, y, reduction=reduction),
                        op.reference_loss(xc, yc, None, None, reduction), dtype, reduction)
    # only one of the two non-contiguous
    assert_same_bits(op.loss(x, yc, reduction=reduction), op.loss(xc, yc, reduction=reduction))
    assert_same_bits(op.loss(xc, y, reduction=reduction), op.loss(xc, yc, reduction=reduction))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_non_contiguous_sigmoid(dtype):
    base = np.linspace(-10, 10, 600).reshape(30, 20).astype(dtype)
    for name, v in _views(base):
        c = np.ascontiguousarray(v)
        np.testing.assert_array_equal(fastloss.sigmoid(v), fastloss.sigmoid(c), err_msg=name)
        np.testing.assert_array_equal(fastloss.sigmoid_backward(v, fastloss.sigmoid(v)),
                                      fastloss.sigmoid_backward(c, fastloss.sigmoid(c)),
                                      err_msg=name)


# ---- out= ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", GRAD_FUNCTIONS, ids=GRAD_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_bad_out(name, fn, op, dtype):
    x, y = _valid(op, shape=(4, 3), dtype=dtype)
    other = np.float64 if dtype == np.float32 else np.float32

    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn(x, y, out=read_only)

    with pytest.raises(ValueError):
        fn(x, y, out=np.empty((3, 4), dtype=dtype))
    with pytest.raises(ValueError):
        fn(x, y, out=np.empty(12, dtype=dtype))

    with pytest.raises(TypeError):
        fn(x, y, out=np.empty_like(x, dtype=other))
    with pytest.raises(TypeError):
        fn(x, y, out=np.empty((4, 3), dtype=np.int32))
    with pytest.raises(TypeError):
        fn(x, y, out=[[0.0] * 3] * 4)

    with pytest.raises(ValueError):
        fn(x, y, out=np.empty((4, 6), dtype=dtype)[:, ::2])
    with pytest.raises(ValueError):
        fn(x, y, out=np.empty((3, 4), dtype=dtype).T)


@pytest.mark.parametrize("name, fn, op", GRAD_FUNCTIONS, ids=GRAD_IDS)
@pytest.mark.parametrize("which", ["input", "target"])
@pytest.mark.parametrize("shift", [1, -1, 5])
def test_out_partially_overlapping_an_input(name, fn, op, which, shift):
    x, y = _valid(op, shape=(12,), dtype=np.float64)
    buffer = np.empty(30)
    start = 10
    arr = buffer[start:start + 12]
    arr[:] = x if which == "input" else y
    out = buffer[start + shift:start + shift + 12]
    with pytest.raises(ValueError, match="overlap"):
        if which == "input":
            fn(arr, y, out=out)
        else:
            fn(x, arr, out=out)


@pytest.mark.parametrize("shift", [1, -3])
def test_sigmoid_out_partially_overlapping(shift):
    buffer = np.linspace(-1, 1, 40)
    x = buffer[10:20]
    with pytest.raises(ValueError, match="overlap"):
        fastloss.sigmoid(x, out=buffer[10 + shift:20 + shift])
    with pytest.raises(ValueError, match="overlap"):
        fastloss.sigmoid_backward(x, np.ones(10), out=buffer[10 + shift:20 + shift])
    with pytest.raises(ValueError, match="overlap"):
        fastloss.sigmoid_backward(np.ones(10), x, out=buffer[10 + shift:20 + shift])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_sigmoid_bad_out(dtype):
    x = np.linspace(-1, 1, 6).astype(dtype).reshape(2, 3)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        fastloss.sigmoid(x, out=ro)
    with pytest.raises(ValueError):
        fastloss.sigmoid(x, out=np.empty((3, 2), dtype=dtype))
    with pytest.raises(TypeError):
        fastloss.sigmoid(x, out=np.empty((2, 3), dtype=np.float16))
    with pytest.raises(ValueError):
        fastloss.sigmoid(x, out=np.empty((3, 2), dtype=dtype).T)
    with pytest.raises(ValueError):
        fastloss.sigmoid_backward(x, x, out=ro)


ALIAS_CASES = [pytest.param(op, aliased, reduction, id=f"{op.name}-{aliased}-{reduction}")
               for op in OPS for reduction in ("mean", "none")
               for aliased in ("input", "target", "weight", "pos_weight", "grad_output")
               if (aliased != "pos_weight" or op.has_pos_weight)
               and (aliased != "grad_output" or reduction == "none")]  # an array needs 'none'


@pytest.mark.parametrize("op, aliased, reduction", ALIAS_CASES)
def test_out_may_be_exactly_an_array_it_reads(op, aliased, reduction):
    """out= may be one of the arrays the call reads (an in-place update): the loss and the
    gradient are those of a separate buffer, also when the loss needs a pass of its own."""
    rng = np.random.default_rng(seed_for("alias", op.name, aliased, reduction))
    x, y = make_inputs(op.name, (5, 4), np.float64, rng, soft=True)
    arrays = {"input": x, "target": y, "weight": rng.uniform(0.5, 2, (5, 4)),
              "pos_weight": rng.uniform(0.5, 2, (5, 4)) if op.has_pos_weight else None,
              "grad_output": rng.uniform(-2, 2, (5, 4)) if reduction == "none" else 0.5}

    def call(fn, arrays, out):
        return fn(arrays["input"], arrays["target"], weight=arrays["weight"],
                  pos_weight=arrays["pos_weight"], reduction=reduction,
                  grad_output=arrays["grad_output"], out=out)

    def copies():
        return {key: value.copy() if isinstance(value, np.ndarray) else value
                for key, value in arrays.items()}

    want_grad = call(op.call_grad, copies(), np.empty((5, 4)))
    want_loss, _ = call(op.call_and_grad, copies(), np.empty((5, 4)))
    fresh = copies()
    got_grad = call(op.call_grad, fresh, fresh[aliased])
    assert got_grad is fresh[aliased]
    assert_same_bits(got_grad, want_grad, what=f"grad with out={aliased}")
    fresh = copies()
    got_loss, got_grad = call(op.call_and_grad, fresh, fresh[aliased])
    assert got_grad is fresh[aliased]
    assert_same_bits(got_loss, want_loss, what=f"and_grad loss with out={aliased}")
    assert_same_bits(got_grad, want_grad, what=f"and_grad grad with out={aliased}")


# ---- binary_cross_entropy: probabilities only ---------------------------------------------------
BCE_FUNCTIONS = [(n, f, op) for n, f, op in LOSS_FUNCTIONS if op is BCE]


@pytest.mark.parametrize("name, fn, op", BCE_FUNCTIONS, ids=[n for n, _, _ in BCE_FUNCTIONS])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("bad", [-0.1, 1.1, -1e-30, 1.0 + 2**-20, np.inf, -np.inf])
@pytest.mark.parametrize("n", [5, 60_000], ids=["serial", "parallel"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_input_outside_unit_interval(name, fn, op, dtype, bad, n, reduction):
    x, y = _valid(op, shape=(n,), dtype=dtype, seed=n)
    x[n - 2] = bad
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(x, y, reduction=reduction)
    w = np.ones(n, dtype=dtype)
    with pytest.raises(ValueError):
        fn(x, y, weight=w, reduction=reduction)


def test_bce_target_outside_unit_interval_is_not_an_error_and_nan_input_is_allowed():
    p = np.array([0.25, 0.5, np.nan])
    y = np.array([1.0, 0.0, 1.0])
    loss = fastloss.binary_cross_entropy(p, y, reduction="none")
    assert np.isnan(loss[2]) and np.isfinite(loss[:2]).all()


# ---- reduction ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("reduction", ["avg", None, 3, "Mean", "", ["mean"], b"mean"], ids=repr)
def test_unknown_reduction(name, fn, op, reduction):
    x, y = _valid(op)
    with pytest.raises(ValueError, match="reduction"):
        fn(x, y, reduction=reduction)
    with pytest.raises(ValueError, match="reduction"):
        fn(x, y, weight=np.ones(3, np.float32), reduction=reduction)


# ---- weight and pos_weight ----------------------------------------------------------------------
WEIGHT_ARGS = [pytest.param(name, fn, op, which, id=f"{name}-{which}")
               for name, fn, op in LOSS_FUNCTIONS
               for which in (("weight", "pos_weight") if op.has_pos_weight else ("weight",))]


@pytest.mark.parametrize("name, fn, op, which", WEIGHT_ARGS)
@pytest.mark.parametrize("wshape", [(4,), (2, 3), (5, 3), (4, 2), (2, 4, 3), (0,)], ids=str)
def test_weight_not_broadcastable(name, fn, op, which, wshape):
    x, y = _valid(op, shape=(4, 3))
    with pytest.raises(ValueError) as info:
        fn(x, y, **{which: np.ones(wshape, dtype=np.float32)})
    assert str(wshape) in str(info.value) and "(4, 3)" in str(info.value), str(info.value)


@pytest.mark.parametrize("name, fn, op, which", WEIGHT_ARGS)
@pytest.mark.parametrize("bad", ["float64", "int32", "float16", "bool", "list", "str", "True"])
def test_weight_of_wrong_type(name, fn, op, which, bad):
    x, y = _valid(op, shape=(4, 3), dtype=np.float32)
    w = {"list": [1.0, 1.0, 1.0], "str": "1", "True": True}.get(bad)
    if w is None:
        w = np.ones(3, dtype=bad)
    with pytest.raises(TypeError):
        fn(x, y, **{which: w})


# ---- grad_output --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", GRAD_FUNCTIONS, ids=GRAD_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("gshape", [(4, 3), (3,), (1,)], ids=str)
def test_grad_output_array_with_reducing_reduction(name, fn, op, reduction, gshape):
    x, y = _valid(op, shape=(4, 3))
    with pytest.raises(ValueError, match="scalar"):
        fn(x, y, reduction=reduction, grad_output=np.ones(gshape, np.float32))


@pytest.mark.parametrize("name, fn, op", GRAD_FUNCTIONS, ids=GRAD_IDS)
def test_grad_output_bad_for_reduction_none(name, fn, op):
    x, y = _valid(op, shape=(4, 3))
    with pytest.raises(ValueError):  # does not broadcast to the input
        fn(x, y, reduction="none", grad_output=np.ones((3, 4), np.float32))
    with pytest.raises(ValueError):  # broadcasts, but to a bigger shape
        fn(x, y, reduction="none", grad_output=np.ones((2, 4, 3), np.float32))
    with pytest.raises(TypeError):  # dtype differs
        fn(x, y, reduction="none", grad_output=np.ones((4, 3), np.float64))
    with pytest.raises(TypeError):
        fn(x, y, reduction="none", grad_output="1.0")
    with pytest.raises(TypeError):
        fn(x, y, reduction="none", grad_output=[1.0, 2.0, 3.0])


# ---- keyword-only options -----------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
def test_options_are_keyword_only(name, fn, op):
    x, y = _valid(op)
    with pytest.raises(TypeError):
        fn(x, y, None)


def test_errors_do_not_corrupt_later_calls():
    """After a batch of failing calls the functions still give the reference result."""
    rng = np.random.default_rng(5)
    for op in OPS:
        x, y = make_inputs(op.name, (1000,), np.float32, rng, soft=True)
        for bad in (lambda: op.loss(x, y[:-1]), lambda: op.loss(x, y.astype(np.float64)),
                    lambda: op.grad(x, y, out=np.empty(3, np.float32))):
            with pytest.raises((TypeError, ValueError)):
                bad()
        assert_loss_matches(op.loss(x, y), op.reference_loss(x, y), np.float32, "mean")
        assert_elementwise_close(op.grad(x, y), op.reference_grad(x, y), np.float32)


def test_logits_pos_weight_rejected_by_other_losses():
    x = np.ones(3)
    with pytest.raises(TypeError):
        fastloss.mse_loss(x, x, pos_weight=x)
    with pytest.raises(TypeError):
        fastloss.binary_cross_entropy(x * 0.5, x, pos_weight=x)
    LOGITS.loss(x, x, pos_weight=x)  # accepted by the logits form


# ---- unaligned inputs, and a clean interpreter exit afterwards ----------------------------------
def _unaligned(values):
    raw = np.zeros(values.nbytes + 1, dtype=np.uint8)[1:]
    arr = raw.view(values.dtype)
    arr[:] = values
    return arr


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_unaligned_inputs(op, dtype):
    x, y = _valid(op, shape=(1001,), dtype=dtype, seed=3)
    xu, yu = _unaligned(x), _unaligned(y)
    assert not xu.flags.aligned
    for reduction in ("mean", "none"):
        assert_same_bits(op.loss(xu, yu, reduction=reduction), op.loss(x, y, reduction=reduction))
        assert_same_bits(op.grad(xu, yu, reduction=reduction), op.grad(x, y, reduction=reduction))
    np.testing.assert_array_equal(fastloss.sigmoid(xu), fastloss.sigmoid(x))


EXIT_SNIPPETS = {
    "non-contiguous-loss": "fastloss.mse_loss(np.ones((4, 6))[:, ::2], np.ones((4, 3)))",
    "transposed-target": "fastloss.binary_cross_entropy(np.full((3, 4), 0.5), np.ones((4, 3)).T)",
    "non-contiguous-sigmoid": "fastloss.sigmoid(np.ones(10)[::2])",
    "non-contiguous-sigmoid-backward": "fastloss.sigmoid_backward(np.ones(10)[::2], np.ones(5))",
    "unaligned": ("b = np.zeros(81, np.uint8)[1:].view(np.float64); b[:] = 0.5; "
                  "fastloss.mse_loss(b, b)"),
    "error-path": ("import contextlib\n"
                   "with contextlib.suppress(ValueError):\n"
                   "    fastloss.mse_loss(np.ones(3), np.ones(4))"),
}


@pytest.mark.parametrize("snippet", list(EXIT_SNIPPETS), ids=str)
def test_interpreter_exits_cleanly(snippet):
    """A process that used fastloss must exit normally (status 0), not abort at shutdown."""
    import subprocess
    import sys

    code = "import numpy as np\nimport fastloss\n" + EXIT_SNIPPETS[snippet] + "\nprint('done')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "done", proc.stderr
    assert proc.returncode == 0 and "Fatal Python error" not in proc.stderr, (
        f"exit status {proc.returncode} after {EXIT_SNIPPETS[snippet]!r}; stderr:\n{proc.stderr}")
