"""Bad input gives a clear exception (never a crash, never a silent wrong answer).

Every exception's message names the argument and what was expected; where PyTorch gives a
result instead of an error (empty inputs, NaN and inf values, 0-d arrays), fastloss gives the
documented result, the one of ``fastloss.reference``.
"""

from __future__ import annotations

import array
import re
import sys
import types

import numpy as np
import pytest

import fastloss
from fastloss import reference as R
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
                                    ((5,), (1,)), ((2, 3), (2, 3, 1)),
                                    ((0, 3), (3, 0)), ((0,), (1,)), ((), (1,)), ((1,), ()),
                                    ((), (0,))], ids=str)
def test_mismatched_shapes(name, fn, op, shapes):
    sx, sy = shapes
    x, _ = _valid(op, sx)
    _, y = _valid(op, sy)
    with pytest.raises(ValueError) as info:
        fn(x, y)
    message = str(info.value)
    assert str(sx) in message and str(sy) in message, message


@pytest.mark.parametrize("shapes", [((2, 3), (3, 2)), ((0, 2), (2, 0)), ((), (1,))], ids=str)
def test_sigmoid_backward_mismatched_shapes(shapes):
    expected = f"output has shape {shapes[1]}, expected {shapes[0]} (the shape of grad_output)"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        fastloss.sigmoid_backward(np.ones(shapes[0]), np.ones(shapes[1]))


# ---- dtypes -------------------------------------------------------------------------------------
# float128: a float dtype fastloss does not take (float16 and ml_dtypes.bfloat16 it does)
BAD_DTYPES = ["int32", "int64", "float128", "complex64", "object", "bool"]
SUPPORTED = "fastloss supports float32, float64, float16 and ml_dtypes.bfloat16"


def _conversion(bad, name, like_dtype=None, like_name=None):
    """What the dtype message suggests: astype to float32 or to the call's first array's dtype
    (nothing for complex, where astype would drop the imaginary part)."""
    if np.dtype(bad).kind == "c":
        return re.escape(" (real numbers)")
    of_like = f", the dtype of {like_name}" if like_name else ""
    return re.escape(f": convert it with {name}.astype(np.{like_dtype or 'float32'}){of_like}")


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
    named = "target" if position == "target" else "input"  # input is checked first
    fix = (_conversion(bad, "target", "float32", "input") if position == "target"
           else _conversion(bad, "input"))
    with pytest.raises(TypeError, match=f"^{named} has dtype {re.escape(bad)}; {SUPPORTED}"
                                        f"{fix}$"):
        fn(x, y)


@pytest.mark.parametrize("bad", BAD_DTYPES)
def test_sigmoid_unsupported_dtype(bad):
    with pytest.raises(TypeError, match=f"^input has dtype {re.escape(bad)}; {SUPPORTED}"
                                        f"{_conversion(bad, 'input')}$"):
        fastloss.sigmoid(_array_of(bad))
    with pytest.raises(TypeError, match=f"^grad_output has dtype {re.escape(bad)}; {SUPPORTED}"):
        fastloss.sigmoid_backward(_array_of(bad), _array_of(bad))
    with pytest.raises(TypeError, match=f"^output has dtype {re.escape(bad)}; {SUPPORTED}"
                                        f"{_conversion(bad, 'output', 'float64', 'grad_output')}$"):
        fastloss.sigmoid_backward(np.zeros((4, 3)), _array_of(bad))


@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("dtypes", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["f32-f64", "f64-f32"])
def test_mixed_float_dtypes(name, fn, op, dtypes):
    x, _ = _valid(op, dtype=dtypes[0])
    _, y = _valid(op, dtype=dtypes[1])
    with pytest.raises(TypeError, match=f"^target has dtype {np.dtype(dtypes[1]).name} but input "
                                        f"has dtype {np.dtype(dtypes[0]).name}; convert one"):
        fn(x, y)


def test_sigmoid_backward_mixed_dtypes():
    with pytest.raises(TypeError, match="^output has dtype float64 but grad_output has dtype "
                                        "float32"):
        fastloss.sigmoid_backward(np.ones(3, np.float32), np.ones(3, np.float64))


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
    with pytest.raises(TypeError, match=rf"^{which} has non-native byte order \(dtype {byteorder}\); "
                                        rf"convert it with \.astype\('{native.name}'\)"):
        fn(x, y)


def test_big_endian_sigmoid_and_out():
    with pytest.raises(TypeError, match="^input has non-native byte order"):
        fastloss.sigmoid(np.ones(3, dtype=">f4"))
    with pytest.raises(TypeError, match="^grad_output has non-native byte order"):
        fastloss.sigmoid_backward(np.ones(3, dtype=">f8"), np.ones(3, dtype=">f8"))
    with pytest.raises(TypeError, match="^out has non-native byte order"):
        fastloss.sigmoid(np.ones(3, np.float32), out=np.empty(3, dtype=">f4"))
    x = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="^out has non-native byte order"):
        fastloss.mse_loss_grad(x, x, out=np.empty(3, dtype=">f4"))
    with pytest.raises(TypeError, match="^weight has dtype >f4 but input has dtype float32"):
        fastloss.mse_loss(x, x, weight=np.ones(3, dtype=">f4"))


# ---- not NumPy arrays ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
@pytest.mark.parametrize("bad", [[0.5, 0.25], 0.5, (0.5, 0.25), None, "abc"], ids=repr)
@pytest.mark.parametrize("which", ["input", "target"])
def test_non_numpy_arguments(name, fn, op, bad, which):
    x, y = _valid(op, shape=(2,))
    got = f"got {type(bad).__module__}.{type(bad).__qualname__}$"
    with pytest.raises(TypeError, match=f"^{which} must be a numpy.ndarray.*{got}"):
        if which == "input":
            fn(bad, y)
        else:
            fn(x, bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_lists_and_integer_arrays_are_told_how_to_convert(dtype):
    """A list, a Python number or an integer array: the message names the conversion (to the
    dtype of the call's first array for the later arguments), says that arrays of other
    libraries are taken, and an out= that is no array is told to be a buffer."""
    name = np.dtype(dtype).name
    other = "float32" if name == "float64" else "float64"
    x = np.full(3, 0.5, dtype)

    def exactly(message):
        return f"^{re.escape(message)}$"

    taken = "or an array of another library that speaks DLPack or an array interface"
    with pytest.raises(TypeError, match=exactly(
            f"input must be a numpy.ndarray or a cupy.ndarray, {taken} (a torch.Tensor, a JAX "
            "array); convert it with np.asarray(input, dtype=np.float32); got builtins.list")):
        fastloss.mse_loss([0.5, 0.5, 0.5], x)
    with pytest.raises(TypeError, match=exactly(
            f"target must be a numpy.ndarray like the call's first array (all on the CPU), "
            f"{taken} (a CPU torch.Tensor, a JAX array); convert it with np.asarray(target, "
            f"dtype=np.{name}) (the dtype of input); got builtins.float")):
        fastloss.binary_cross_entropy(x, 0.5)
    with pytest.raises(TypeError, match=exactly(
            f"target has dtype int64; {SUPPORTED}: convert it with target.astype(np.{name}), "
            "the dtype of input")):
        fastloss.binary_cross_entropy_with_logits(x, np.ones(3, np.int64))
    with pytest.raises(TypeError, match=exactly(
            f"target has dtype {other} but input has dtype {name}; convert one of them "
            f"explicitly, e.g. target.astype(np.{name}) (fastloss never upcasts silently)")):
        fastloss.mse_loss(x, x.astype(other))
    with pytest.raises(TypeError, match=re.escape("pass a buffer such as np.empty_like(input); "
                                                  "got builtins.list") + "$"):
        fastloss.mse_loss_grad(x, x, out=[0.0, 0.0, 0.0])


@pytest.mark.parametrize("bad", [[0.5, 0.25], 0.5, None])
def test_sigmoid_non_numpy(bad):
    got = f"got {type(bad).__module__}.{type(bad).__qualname__}$"
    with pytest.raises(TypeError, match=f"^input must be a numpy.ndarray.*{got}"):
        fastloss.sigmoid(bad)
    with pytest.raises(TypeError, match=f"^grad_output must be a numpy.ndarray.*{got}"):
        fastloss.sigmoid_backward(bad, np.ones(2))
    with pytest.raises(TypeError, match=f"^output must be a numpy.ndarray.*{got}"):
        fastloss.sigmoid_backward(np.ones(2), bad)
    with pytest.raises(TypeError, match="^out must be a numpy.ndarray.*got builtins.list$"):
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
    with pytest.raises(ValueError, match="^out is read-only; expected a writeable array$"):
        fn(x, y, out=read_only)

    with pytest.raises(ValueError, match=re.escape("out has shape (3, 4), expected (4, 3)")):
        fn(x, y, out=np.empty((3, 4), dtype=dtype))
    with pytest.raises(ValueError, match=re.escape("out has shape (12,), expected (4, 3)")):
        fn(x, y, out=np.empty(12, dtype=dtype))

    other_name, name = np.dtype(other).name, np.dtype(dtype).name
    with pytest.raises(TypeError, match=f"^out has dtype {other_name} but input has dtype {name}"):
        fn(x, y, out=np.empty_like(x, dtype=other))
    with pytest.raises(TypeError, match=f"^out has dtype int32; {SUPPORTED}: pass an out of "
                                        rf"dtype {name}, the dtype of input \(np.empty_like"
                                        rf"\(input\)\)$"):
        fn(x, y, out=np.empty((4, 3), dtype=np.int32))
    with pytest.raises(TypeError, match="^out must be a numpy.ndarray.*got builtins.list$"):
        fn(x, y, out=[[0.0] * 3] * 4)

    # strided, transposed, reversed and unaligned buffers cannot be written as one block
    not_contiguous = "^out must be C-contiguous and aligned$"
    for bad in (np.empty((4, 6), dtype=dtype)[:, ::2], np.empty((3, 4), dtype=dtype).T,
                np.empty((4, 3), dtype=dtype)[::-1], _unaligned(np.zeros(12, dtype)).reshape(4, 3)):
        with pytest.raises(ValueError, match=not_contiguous):
            fn(x, y, out=bad)


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
    with pytest.raises(ValueError, match="^out is read-only"):
        fastloss.sigmoid(x, out=ro)
    with pytest.raises(ValueError, match=re.escape("out has shape (3, 2), expected (2, 3)")):
        fastloss.sigmoid(x, out=np.empty((3, 2), dtype=dtype))
    with pytest.raises(TypeError, match=f"^out has dtype float128; {SUPPORTED}: pass an out of "
                                        r"dtype float\d\d, the dtype of input"):
        fastloss.sigmoid(x, out=np.empty((2, 3), dtype=np.float128))
    with pytest.raises(TypeError, match=r"^out has dtype float16 but input has dtype float\d\d"):
        fastloss.sigmoid(x, out=np.empty((2, 3), dtype=np.float16))
    with pytest.raises(ValueError, match="^out must be C-contiguous"):
        fastloss.sigmoid(x, out=np.empty((3, 2), dtype=dtype).T)
    with pytest.raises(ValueError, match="^out must be C-contiguous"):
        fastloss.sigmoid(x, out=np.empty((2, 3), dtype=dtype)[::-1])
    with pytest.raises(ValueError, match="^out is read-only"):
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


@pytest.mark.parametrize("which", ["weight", "pos_weight"])
def test_out_partially_overlapping_a_weight(which):
    x, y = _valid(LOGITS, shape=(4, 3), dtype=np.float64)
    buffer = np.ones(20)
    with pytest.raises(ValueError, match=f"^out overlaps {which}"):
        LOGITS.grad(x, y, **{which: buffer[:12].reshape(4, 3)}, out=buffer[2:14].reshape(4, 3))


# ---- read-only arrays ---------------------------------------------------------------------------
def _read_only(a):
    view = a.view()
    view.flags.writeable = False
    return view


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("rows", [3, 20_000], ids=["serial", "parallel"])
def test_read_only_arrays_are_read_like_writeable_ones(op, rows):
    """Everything but out= is only read: read-only arrays, broadcast views among them (read-only,
    zero strides), give the bits of writeable copies."""
    rng = np.random.default_rng(seed_for("read-only", op.name, rows))
    x, y = make_inputs(op.name, (rows, 3), np.float32, rng, soft=True)
    row = rng.uniform(0.5, 2, size=3).astype(np.float32)
    g = rng.uniform(-1, 1, size=(rows, 3)).astype(np.float32)
    pw = row if op.has_pos_weight else None
    ro_pw = _read_only(row) if op.has_pos_weight else None
    weight_ro = np.broadcast_to(row, (rows, 3))
    assert not weight_ro.flags.writeable and weight_ro.strides[0] == 0
    for reduction in ("mean", "none"):
        want = op.call_loss(x, y, np.ascontiguousarray(weight_ro), pw, reduction)
        got = op.call_loss(_read_only(x), _read_only(y), weight_ro, ro_pw, reduction)
        assert_same_bits(got, want, what=f"loss, {reduction}")
    want = op.call_grad(x, y, row, pw, "none", grad_output=g)
    out = np.empty_like(x)
    got = op.call_grad(_read_only(x), _read_only(y), _read_only(row), ro_pw, "none",
                       grad_output=_read_only(g), out=out)
    assert got is out
    assert_same_bits(got, want, what="grad")
    # a read-only input cannot be its own out=
    with pytest.raises(ValueError, match="^out is read-only; expected a writeable array$"):
        op.call_grad(_read_only(x), y, out=_read_only(x))


def test_read_only_sigmoid_inputs():
    x = np.linspace(-5, 5, 50_000)
    s = fastloss.sigmoid(x)
    assert_same_bits(fastloss.sigmoid(_read_only(x)), s)
    assert_same_bits(fastloss.sigmoid_backward(_read_only(x), _read_only(s)),
                     fastloss.sigmoid_backward(x, s))
    with pytest.raises(ValueError, match="^out is read-only"):
        fastloss.sigmoid(_read_only(x), out=_read_only(x))


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
        expected = f"^{which} has dtype {bad} but input has dtype float32; convert one"
    else:
        expected = f"^{which} must be a numpy.ndarray or a real number, got builtins"
    with pytest.raises(TypeError, match=expected):
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
    not_broadcast = r"^grad_output has shape \({}\), which does not broadcast to the input shape"
    with pytest.raises(ValueError, match=not_broadcast.format("3, 4")):
        fn(x, y, reduction="none", grad_output=np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match=not_broadcast.format("2, 4, 3")):  # to a bigger shape
        fn(x, y, reduction="none", grad_output=np.ones((2, 4, 3), np.float32))
    with pytest.raises(TypeError, match="^grad_output has dtype float64 but input has dtype "
                                        "float32"):
        fn(x, y, reduction="none", grad_output=np.ones((4, 3), np.float64))
    not_a_number = "^grad_output must be a numpy.ndarray or a real number, got builtins.{}$"
    with pytest.raises(TypeError, match=not_a_number.format("str")):
        fn(x, y, reduction="none", grad_output="1.0")
    with pytest.raises(TypeError, match=not_a_number.format("list")):
        fn(x, y, reduction="none", grad_output=[1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="^grad_output has dtype complex128; expected a real"):
        fn(x, y, grad_output=np.array(1 + 2j))
    with pytest.raises(TypeError, match=not_a_number.format("bool")):
        fn(x, y, grad_output=True)


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
        op.check_loss(op.loss(x, y), x, y, max_ulps=1)
        op.check_grad(op.grad(x, y), x, y)


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


# ---- NaN and inf in each argument ---------------------------------------------------------------
NON_FINITE_CASES = [pytest.param(op, argument, value, id=f"{op.name}-{argument}-{value}")
                    for op in OPS
                    for argument in ("input", "target", "weight", "pos_weight", "grad_output")
                    for value in (np.nan, np.inf, -np.inf)
                    if argument != "pos_weight" or op.has_pos_weight]


@pytest.mark.parametrize("op, argument, value", NON_FINITE_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_nan_and_inf_in_each_argument(op, argument, value, dtype):
    """NaN and +-inf are values, as in PyTorch: every result is the reference's (NaN where it
    has NaN, the same infinities), never an error; except binary_cross_entropy's input, where
    +-inf lies outside [0, 1] (ValueError) and NaN propagates."""
    rng = np.random.default_rng(seed_for("non-finite", op.name, argument, str(value), dtype))
    x, y = make_inputs(op.name, (4, 3), dtype, rng, soft=True)
    arrays = {"input": x, "target": y,
              "weight": rng.uniform(0.5, 2, size=(4, 3)).astype(dtype),
              "pos_weight": rng.uniform(0.5, 2, size=3).astype(dtype) if op.has_pos_weight else None,
              "grad_output": rng.uniform(-2, 2, size=(4, 3)).astype(dtype)}
    changed = arrays[argument]
    changed[(1, 2)[-changed.ndim:]] = value  # element (1, 2); pos_weight[2], for column 2
    x, y, w, pw, g = arrays.values()
    if op is BCE and argument == "input" and np.isinf(value):
        with pytest.raises(ValueError, match=r"^input must hold probabilities in \[0, 1\]"):
            op.call_loss(x, y, w, pw)
        return
    if argument == "pos_weight" and np.isinf(value):
        check_infinite_pos_weight(x, y, w, pw, g)
        return
    for reduction in ("mean", "sum", "none"):
        op.check_loss(op.call_loss(x, y, w, pw, reduction), x, y, w, pw, reduction, max_ulps=4,
                      what=f"loss, {reduction}")
        scalar_g = float(g[1, 2])
        op.check_grad(op.call_grad(x, y, w, pw, reduction, grad_output=scalar_g), x, y, w, pw,
                      reduction, scalar_g, what=f"grad, {reduction}, grad_output={scalar_g}")
    op.check_grad(op.call_grad(x, y, w, pw, "none", grad_output=g), x, y, w, pw, "none", g,
                  what="grad with an array grad_output")


def check_infinite_pos_weight(x, y, w, pw, g):
    """An infinite pos_weight (pos_weight[2] here) is documented as giving non-finite results,
    NaN or +-inf, where it multiplies a non-zero target: IEEE's inf * 0 meets the kernels' split
    of softplus (PyTorch gives +-inf for such a loss). Never a finite wrong number, and every
    other element is exact."""
    x[1, 2], y[1, 2] = abs(x[1, 2]), 0.5  # one element where the kernels give NaN, not inf
    affected = np.zeros(x.shape, dtype=bool)
    affected[:, 2] = y[:, 2] != 0
    for reduction in ("mean", "sum"):
        assert not np.isfinite(LOGITS.call_loss(x, y, w, pw, reduction)), reduction
    loss = LOGITS.call_loss(x, y, w, pw, "none")
    grads = (LOGITS.call_grad(x, y, w, pw, "none", grad_output=g),
             LOGITS.call_and_grad(x, y, w, pw, "none", grad_output=g)[1])
    assert not np.isfinite(loss[affected]).any()
    LOGITS.check_loss(loss, x, y, w, pw, "none", where=~affected)
    for grad in grads:
        assert not np.isfinite(grad[affected]).any()
        LOGITS.check_grad(grad, x, y, w, pw, "none", g, where=~affected)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_nan_and_inf_in_sigmoid_arguments(value, dtype):
    x = np.linspace(-3, 3, 7).astype(dtype)
    x[3] = value
    assert_elementwise_close(fastloss.sigmoid(x), R.sigmoid(x), dtype)
    s = fastloss.sigmoid(np.linspace(-3, 3, 7).astype(dtype))
    assert_elementwise_close(fastloss.sigmoid_backward(x, s), R.sigmoid_backward(x, s), dtype)
    # as the output: NaN propagates; +-inf is no sigmoid output (test_sigmoid_backward_range)
    output = s.copy()
    output[3] = value
    if np.isnan(value):
        assert_elementwise_close(fastloss.sigmoid_backward(s, output),
                                 R.sigmoid_backward(s, output), dtype)
    else:
        with pytest.raises(ValueError, match="^output must hold sigmoid outputs in"):
            fastloss.sigmoid_backward(s, output)


SIGMOID_OUTPUT_REFUSED = (r"^output must hold sigmoid outputs in \[0, 1\] \(sigmoid_backward\); "
                          r"found values outside: pass the forward's output, sigmoid\(x\), "
                          r"not its input x$")


@pytest.mark.parametrize("n", [1, 7, 8192 * 5 + 3], ids=["one", "serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("path", ["fast", "checked"])
def test_sigmoid_backward_range(n, dtype, path):
    """sigmoid_backward takes sigmoid's output: a value outside [0, 1] (the forward's input
    passed by mistake) is a ValueError, found in the kernel's pass (the last element alone
    below 0 or above 1 too, on the serial and the parallel path); 0, 1 and NaN are outputs."""
    rng = np.random.default_rng(seed_for("sigmoid-range", n, np.dtype(dtype).name))
    x = rng.standard_normal(n).astype(dtype)
    s = fastloss.sigmoid(x)
    s[:2] = [0.0, 1.0][:n]
    g = rng.standard_normal(n).astype(dtype)

    def call(output):
        if path == "checked":  # through the dispatch's checks: a non-contiguous output
            doubled = np.repeat(output, 2)
            return fastloss.sigmoid_backward(g, doubled[::2])
        return fastloss.sigmoid_backward(g, output)

    assert_elementwise_close(call(s), R.sigmoid_backward(g, s), dtype)
    with pytest.raises(ValueError, match=SIGMOID_OUTPUT_REFUSED):
        call(x if n > 1 else np.full(1, -0.5, dtype))
    for bad in (-np.finfo(dtype).smallest_subnormal, 1 + np.finfo(dtype).eps):
        last = s.copy()
        last[-1] = bad
        with pytest.raises(ValueError, match=SIGMOID_OUTPUT_REFUSED):
            call(last)


@pytest.mark.parametrize("which", ["weight", "pos_weight", "grad_output"])
def test_scalars_beyond_the_float64_range(which):
    x, y = _valid(LOGITS)
    with pytest.raises(ValueError, match=f"^{which} is too large for a float64; expected"):
        LOGITS.grad(x, y, **{which: 10**400})


# ---- arrays and array-likes of other libraries --------------------------------------------------
class _HasArrayMethod:
    """An array-like that NumPy could convert (``__array__``), such as a pandas or xarray
    object: fastloss does not convert silently."""

    def __array__(self, dtype=None, copy=None):
        return np.full((4, 3), 0.5, dtype=np.float32)


# Objects with __array_interface__ or DLPack are taken without a copy: tests/test_interop.py.
OTHER_ARRAYS = {
    "array.array": lambda: array.array("f", [0.5] * 12),
    "memoryview": lambda: memoryview(np.full((4, 3), 0.5, np.float32)),
    "bytes": lambda: np.full((4, 3), 0.5, np.float32).tobytes(),
    "__array__": _HasArrayMethod,
    "numpy-scalar": lambda: np.float32(0.5),
}


# a NumPy scalar is a valid weight or grad_output (a real number; test_losses)
OTHER_ARRAY_CASES = [(which, kind) for which in ("input", "target", "weight", "grad_output", "out")
                     for kind in OTHER_ARRAYS
                     if not (kind == "numpy-scalar" and which in ("weight", "grad_output"))]


@pytest.mark.parametrize("which, kind", OTHER_ARRAY_CASES, ids="-".join)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_arrays_of_other_libraries(op, which, kind):
    _call_with(op, which, OTHER_ARRAYS[kind](), f"^{which} must be a numpy.ndarray")


@pytest.mark.parametrize("kind", list(OTHER_ARRAYS))
def test_arrays_of_other_libraries_in_sigmoid(kind):
    x = np.full((4, 3), 0.5, np.float32)
    with pytest.raises(TypeError, match="^input must be a numpy.ndarray"):
        fastloss.sigmoid(OTHER_ARRAYS[kind]())
    with pytest.raises(TypeError, match="^out must be a numpy.ndarray"):
        fastloss.sigmoid(x, out=OTHER_ARRAYS[kind]())
    with pytest.raises(TypeError, match="^output must be a numpy.ndarray"):
        fastloss.sigmoid_backward(x, OTHER_ARRAYS[kind]())


def _call_with(op, which, value, message):
    """Calls op's and_grad form with ``value`` as argument ``which``: a TypeError matching
    ``message``."""
    x, y = _valid(op)
    kwargs = {"input": x, "target": y, "weight": None, "reduction": "none",
              "grad_output": 1.0, "out": None, which: value}
    with pytest.raises(TypeError, match=message):
        op.and_grad(kwargs.pop("input"), kwargs.pop("target"), **kwargs)


@pytest.mark.parametrize("which", ["input", "target", "weight", "grad_output", "out"])
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_torch_tensors_that_require_grad(op, which):
    """A CPU tensor is taken through DLPack (tests/test_interop.py), but not one that requires
    grad: the message points to fastloss.torch."""
    torch = pytest.importorskip("torch")
    _call_with(op, which, torch.full((4, 3), 0.5, requires_grad=True),
               f"^{which} \\(torch.Tensor\\) could not be taken through DLPack.*"
               "use fastloss.torch, or pass .detach\\(\\)$")


@pytest.mark.parametrize("which", ["input", "target", "weight", "grad_output", "out"])
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_masked_arrays_are_refused(op, which):
    """numpy.ma arrays are numpy.ndarrays; computing on their data would ignore the mask."""
    masked = np.ma.array(np.full((4, 3), 0.5, np.float32), mask=np.eye(4, 3, dtype=bool))
    _call_with(op, which, masked, f"^{which} is a numpy.ma.MaskedArray, whose mask fastloss "
                                  f"would ignore; pass a plain numpy.ndarray")


def test_masked_arrays_are_refused_by_sigmoid():
    masked = np.ma.array([0.5, 1.0], mask=[False, True])
    with pytest.raises(TypeError, match="^input is a numpy.ma.MaskedArray"):
        fastloss.sigmoid(masked)
    with pytest.raises(TypeError, match="^output is a numpy.ma.MaskedArray"):
        fastloss.sigmoid_backward(np.ones(2), masked)


def test_memory_maps_are_numpy_arrays(tmp_path):
    """numpy.memmap, the other ndarray subclass users pass, works like its contents."""
    rng = np.random.default_rng(8)
    x, y = make_inputs("mse", (1000,), np.float64, rng)
    mapped = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=x.shape)
    mapped[:] = x
    assert_same_bits(fastloss.mse_loss(mapped, y), fastloss.mse_loss(x, y))
    out = np.memmap(tmp_path / "g.bin", dtype=np.float64, mode="w+", shape=x.shape)
    assert fastloss.mse_loss_grad(mapped, y, out=out) is out


# ---- GPU arrays mixed with NumPy arrays ---------------------------------------------------------
class _DeviceArray:
    """What fastloss can see of a GPU array (CuPy, a CUDA PyTorch tensor, Numba, JAX) when no GPU
    library is loaded: ``__cuda_array_interface__`` (here with a null device pointer)."""

    __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (0, False),
                                "version": 3}


@pytest.mark.parametrize("which", ["target", "weight", "grad_output", "out"])
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_gpu_array_in_a_numpy_call(op, which):
    _call_with(op, which, _DeviceArray(), f"^{which} (is a GPU array|must be a numpy.ndarray)"
                                          f".*all arrays of one call must be on the same device")


def test_gpu_array_in_a_numpy_sigmoid_call():
    same_device = "all arrays of one call must be on the same device"
    with pytest.raises(TypeError, match=f"^output is a GPU array.*{same_device}"):
        fastloss.sigmoid_backward(np.ones(3), _DeviceArray())
    with pytest.raises(TypeError, match=f"^out is a GPU array.*{same_device}"):
        fastloss.sigmoid(np.ones(3), out=_DeviceArray())


def test_numpy_array_in_a_cupy_call(monkeypatch):
    """The other order: the first array is a CuPy array, so the call goes to fastloss._cuda,
    which refuses the NumPy one before any kernel is looked up. Without CuPy (or a GPU) here,
    ``cupy`` is a bare module whose ``ndarray`` type has no behaviour at all; with a GPU,
    test_cuda.py runs the same calls on real CuPy arrays."""
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.ndarray = type("ndarray", (), {"__module__": "cupy"})
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu = fake_cupy.ndarray()
    on_host = np.ones(3, np.float32)
    refused = "is a numpy.ndarray but the call's first array is a cupy.ndarray"
    for op in OPS:
        with pytest.raises(TypeError, match=f"^target {refused}"):
            op.loss(gpu, on_host)
    with pytest.raises(TypeError, match=f"^output {refused}"):
        fastloss.sigmoid_backward(gpu, on_host)
