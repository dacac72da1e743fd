"""float16 and bfloat16 (ml_dtypes) as storage types of the softmax family, cross_entropy, tanh
and relu.

The row kernels widen each 16-bit value to double when they load it, compute as the float32
path does (each result within ~1e-9 relative of exact, before its rounding) and round every
stored value, and a reduced loss, once from double to the format, to nearest even. So every
result is the float64 reference rounded once to the format (NumPy's and ml_dtypes' conversions
round from double directly), except where the reference lies so close to a half-way point of
the format that the kernel's ~1e-9 may put it on the other side: `assert_correctly_rounded`
allows a neighbour there and nowhere else. tanh and relu (and their backward passes) are
checked on every bit pattern, against the same double math rounded by NumPy / ml_dtypes.

CuPy float16 (the CUDA kernels of cuda/multiclass.cu): tests/test_cuda_multiclass.py, with
``assert_correctly_rounded`` from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss
from fastloss import reference as R

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # the subprocesses import this module by name
    sys.path.insert(0, str(TESTS_DIR))

from _helpers import cross_entropy_grad_term_size, python_env, run_python_json  # noqa: E402
from test_half import DTYPE_NAMES, all_bit_patterns, dtype_of, ml_dtypes  # noqa: E402

# classes: the short-row kernel (<= 64, contiguous rows), the general row scan, and rows over
# more than one 256-element block
CLASS_COUNTS = (1, 3, 10, 64, 65, 300)
# how close to a half-way point (relative to the size of the terms) the kernel's float32-grade
# math may leave a result: its ~1e-9, with a margin
TIE_TOLERANCE = 1e-7


def assert_correctly_rounded(got, exact, dtype, scale=None, what="result"):
    """got (of ``dtype``) is ``exact`` (float64) rounded once to ``dtype``, or its neighbour
    where ``exact`` is within TIE_TOLERANCE * scale (default |exact|) of the half-way point
    between the two. NaN where exact is NaN."""
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    exact = np.asarray(exact, dtype=np.float64)
    rounded = exact.astype(dtype).astype(np.float64)
    mine = got.astype(np.float64)
    assert np.array_equal(np.isnan(mine), np.isnan(exact)), f"{what}: NaN where the reference has none"
    differ = (mine != rounded) & ~np.isnan(exact)
    if not differ.any():
        return
    size = np.abs(exact) if scale is None else np.broadcast_to(np.asarray(scale, np.float64), exact.shape)
    with np.errstate(invalid="ignore"):
        midpoint = (mine + rounded) / 2
        near_tie = np.abs(exact - midpoint) <= TIE_TOLERANCE * size
        # the neighbour, not some other value: the midpoint lies between the two roundings
        adjacent = (np.nextafter(rounded.astype(dtype), mine.astype(dtype)).astype(np.float64)
                    == mine) if dtype.name == "float16" else np.ones_like(differ)
    bad = differ & ~(near_tie & adjacent)
    if bad.any():
        i = np.flatnonzero(bad.ravel())[0]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} values not the correctly rounded "
                             f"reference, first at flat index {i}: got {mine.ravel()[i]!r}, "
                             f"reference {exact.ravel()[i]!r} (rounded {rounded.ravel()[i]!r})")


def test_the_rounding_check_can_fail():
    dtype = np.dtype(np.float16)
    one = np.array([1.0], dtype)
    with pytest.raises(AssertionError, match="not the correctly rounded"):
        assert_correctly_rounded(one, [1.0 + 2.0 ** -10 * 0.75], dtype)  # rounds up, got 1
    with pytest.raises(AssertionError, match="not the correctly rounded"):  # two ulps off
        assert_correctly_rounded(np.array([1.0 + 2.0 ** -9], dtype), [1.0], dtype)
    # a reference within the kernel's error of the half-way point may go either way
    assert_correctly_rounded(one, [1.0 + 2.0 ** -11 * (1 + 1e-9)], dtype)


def logits(rng, shape, dtype):
    return (rng.standard_normal(shape) * 3).astype(dtype)


# ---- the softmax family ---------------------------------------------------------------------
@pytest.mark.parametrize("classes", CLASS_COUNTS)
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_softmax_and_log_softmax(name, classes):
    dtype = dtype_of(name)
    rng = np.random.default_rng(classes)
    x = logits(rng, (37, classes), dtype)
    assert_correctly_rounded(fastloss.softmax(x, dim=1), R.softmax(x, 1), dtype, what="softmax")
    # log_softmax = x - max - log(sum): its error is relative to the sizes of those terms
    exact = R.log_softmax(x, 1)
    size = np.abs(exact) + np.abs(x.astype(np.float64)) + 1.0
    assert_correctly_rounded(fastloss.log_softmax(x, dim=1), exact, dtype, size, "log_softmax")


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_softmax_along_a_middle_dimension_and_into_out(name):
    dtype = dtype_of(name)
    rng = np.random.default_rng(5)
    x = logits(rng, (3, 7, 5), dtype)
    out = np.empty_like(x)
    result = fastloss.softmax(x, dim=1, out=out)
    assert result is out
    assert_correctly_rounded(out, R.softmax(x, 1), dtype, what="softmax(dim=1, out=)")


@pytest.mark.parametrize("classes", (3, 300))
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_softmax_and_log_softmax_backward(name, classes):
    dtype = dtype_of(name)
    rng = np.random.default_rng(classes + 1)
    x = logits(rng, (29, classes), dtype)
    g = rng.standard_normal((29, classes)).astype(dtype)
    g64 = g.astype(np.float64)
    y = fastloss.softmax(x, dim=1)
    y64 = y.astype(np.float64)
    size = np.abs(y64) * (np.abs(g64) + np.abs(np.sum(g64 * y64, axis=1, keepdims=True)))
    assert_correctly_rounded(fastloss.softmax_backward(g, y, dim=1), R.softmax_backward(g, y, 1),
                             dtype, size, "softmax_backward")
    ly = fastloss.log_softmax(x, dim=1)
    size = np.abs(g64) + np.exp(ly.astype(np.float64)) * np.abs(np.sum(g64, axis=1, keepdims=True))
    assert_correctly_rounded(fastloss.log_softmax_backward(g, ly, dim=1),
                             R.log_softmax_backward(g, ly, 1), dtype, size, "log_softmax_backward")


def test_results_exact_in_double_are_rounded_once():
    """softmax_backward of one-class rows is y (g - g y): exact in double for float16 g and y
    (products of 11-bit significands), so the kernel's result must be NumPy's rounding of it
    bit for bit, also where it lies within a float32 ulp of a half-way point of float16 (some
    dozen of these pairs), which a rounding through float32 would put on the point and then
    to even."""
    rng = np.random.default_rng(21)
    g = rng.standard_normal((200000, 1)).astype(np.float16)
    y = rng.random((200000, 1)).astype(np.float16)
    g64, y64 = g.astype(np.float64), y.astype(np.float64)
    exact = y64 * (g64 - g64 * y64)
    twice = exact.astype(np.float32).astype(np.float16)
    assert np.count_nonzero(twice != exact.astype(np.float16)) >= 8  # the test's own premise
    got = fastloss.softmax_backward(g, y, dim=1)
    assert np.array_equal(got.view(np.uint16), exact.astype(np.float16).view(np.uint16))


# ---- cross_entropy ----------------------------------------------------------------------------
def _targets(rng, kind, rows, classes, dtype):
    if kind == "probabilities":
        p = rng.random((rows, classes))
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    index = rng.integers(0, classes, rows).astype(kind)
    index[::5] = -100  # ignored rows
    return index


@pytest.mark.parametrize("classes", (1, 10, 65, 300))
@pytest.mark.parametrize("kind", ["int64", "int32", "probabilities"])
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_cross_entropy_losses_and_gradients(name, kind, classes):
    dtype = dtype_of(name)
    rng = np.random.default_rng(classes * 7 + len(kind))
    rows = 41
    x = logits(rng, (rows, classes), dtype)
    target = _targets(rng, kind, rows, classes, dtype)
    weight = rng.uniform(0.5, 2.0, classes).astype(dtype)
    for kwargs in ({}, {"weight": weight}, {"label_smoothing": 0.125}):
        for reduction in ("none", "sum", "mean"):
            exact = R.cross_entropy(x, target, reduction=reduction, **kwargs)
            got = fastloss.cross_entropy(x, target, reduction=reduction, **kwargs)
            size = np.abs(exact) + (1.0 if reduction == "none" else 0.0)
            assert_correctly_rounded(got, exact, dtype, size, f"{reduction} loss {kwargs}")
            loss, grad = fastloss.cross_entropy_and_grad(x, target, reduction=reduction, **kwargs)
            assert np.array_equal(np.asarray(loss).view(np.uint16), np.asarray(got).view(np.uint16))
            exact_grad = R.cross_entropy_grad(x, target, reduction=reduction, **kwargs)
            size = cross_entropy_grad_term_size(x, target, reduction=reduction, **kwargs)
            assert_correctly_rounded(grad, exact_grad, dtype, size, f"{reduction} gradient {kwargs}")


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_cross_entropy_of_spatial_inputs_with_a_grad_output_array(name):
    dtype = dtype_of(name)
    rng = np.random.default_rng(9)
    x = logits(rng, (4, 5, 3, 2), dtype)
    target = rng.integers(0, 5, (4, 3, 2))
    grad_output = rng.standard_normal((4, 3, 2)).astype(dtype)
    exact = R.cross_entropy_grad(x, target, reduction="none", grad_output=grad_output)
    size = cross_entropy_grad_term_size(x, target, reduction="none", grad_output=grad_output)
    got = fastloss.cross_entropy_grad(x, target, reduction="none", grad_output=grad_output)
    assert_correctly_rounded(got, exact, dtype, size, "(N, C, d1, d2) gradient")


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_cross_entropy_mean_over_a_parallel_call_is_the_exact_mean_rounded_once(name):
    """Rows over several threads' chunks; the double-double sum and its division leave the
    mean within the kernel's per-row error of exact, then one rounding."""
    dtype = dtype_of(name)
    rng = np.random.default_rng(11)
    x = logits(rng, (20011, 10), dtype)
    target = rng.integers(0, 10, 20011)
    exact = R.cross_entropy(x, target)
    assert_correctly_rounded(fastloss.cross_entropy(x, target), exact, dtype, what="mean")


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_mixed_with_float32_names_both(name):
    dtype = dtype_of(name)
    x = np.zeros((4, 3), dtype)
    with pytest.raises(TypeError, match=f"^target has dtype float32 but input has dtype {name}"):
        fastloss.cross_entropy(x, np.full((4, 3), 1 / 3, np.float32))
    with pytest.raises(TypeError, match=f"^weight has dtype float32 but input has dtype {name}"):
        fastloss.cross_entropy(x, np.zeros(4, np.int64), weight=np.ones(3, np.float32))
    with pytest.raises(TypeError, match=f"^output has dtype float32 but grad_output has dtype {name}"):
        fastloss.softmax_backward(x, np.zeros((4, 3), np.float32), dim=1)
    with pytest.raises(TypeError, match=f"^out has dtype float32 but input has dtype {name}"):
        fastloss.tanh(x, out=np.empty((4, 3), np.float32))


# ---- tanh and relu, every bit pattern -----------------------------------------------------------
def _same_values(got, expected, what):
    got64, expected64 = got.astype(np.float64), expected.astype(np.float64)
    same = (got64 == expected64) | (np.isnan(got64) & np.isnan(expected64))
    # relu keeps -0.0 and tanh(-0.0) is -0.0: the sign of a zero counts (a NaN's does not)
    same &= (np.signbit(got64) == np.signbit(expected64)) | np.isnan(expected64)
    assert same.all(), f"{what}: {np.count_nonzero(~same)} of {same.size} differ"


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_tanh_and_relu_of_every_bit_pattern(name):
    dtype = dtype_of(name)
    x = all_bit_patterns(dtype)
    got = fastloss.tanh(x)
    assert got.dtype == dtype
    with np.errstate(invalid="ignore"):  # ml_dtypes warns on casting its NaNs
        _same_values(got, R.tanh(x).astype(dtype), "tanh")
        _same_values(fastloss.relu(x), R.relu(x).astype(dtype), "relu")


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_tanh_and_relu_backward(name):
    dtype = dtype_of(name)
    rng = np.random.default_rng(13)
    g = rng.standard_normal(40003).astype(dtype)
    y = fastloss.tanh(rng.standard_normal(40003).astype(dtype))
    _same_values(fastloss.tanh_backward(g, y), R.tanh_backward(g, y).astype(dtype), "tanh_backward")
    y = all_bit_patterns(dtype)
    g = np.resize(rng.standard_normal(16).astype(dtype), y.shape)
    with np.errstate(invalid="ignore"):
        _same_values(fastloss.relu_backward(g, y), R.relu_backward(g, y).astype(dtype),
                     "relu_backward")


# ---- every build, and threads ---------------------------------------------------------------------
CODE = """
import hashlib, json, sys
import numpy as np
import fastloss
sys.path.insert(0, sys.argv[1])
from test_multiclass_half import dtype_of, logits
digest = hashlib.sha256()
for name in sys.argv[2:]:
    dtype = dtype_of(name)
    rng = np.random.default_rng(17)
    for shape in ((37, 10), (37, 300), (4099, 10)):
        x = logits(rng, shape, dtype)
        target = rng.integers(0, shape[1], shape[0])
        for result in (fastloss.softmax(x, dim=1), fastloss.log_softmax(x, dim=1),
                       *fastloss.cross_entropy_and_grad(x, target, reduction="none"),
                       fastloss.cross_entropy(x, target), fastloss.tanh(x)):
            digest.update(np.asarray(result).tobytes())
print(json.dumps(digest.hexdigest()))
"""


def _names():
    return [name for name in DTYPE_NAMES if name != "bfloat16" or ml_dtypes is not None]


@pytest.mark.parametrize("overrides", [{"FASTLOSS_ISA": "baseline"}, {"FASTLOSS_ISA": "x86_64_v3"},
                                       {"OMP_NUM_THREADS": "1"}], ids=str)
def test_the_same_bits_in_every_build_and_for_one_thread(overrides):
    this = run_python_json(CODE, python_env(), str(TESTS_DIR), *_names())
    assert run_python_json(CODE, python_env(**overrides), str(TESTS_DIR), *_names()) == this
