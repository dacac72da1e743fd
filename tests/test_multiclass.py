"""The multi-class family against fastloss.reference: softmax, log_softmax and their backward
passes, cross-entropy (class indices int64/int32 or probabilities, weight, ignore_index,
label_smoothing, every reduction, grad_output arrays, out=), tanh and relu; awkward shapes
(C = 1, 2, 3, 1000, 10^5; N = 0, 1, 7; classes along a middle axis), edge values, float32
accuracy of the mean where per-row errors cannot average out, and the same bits for any
thread count and for the baseline build's correctness."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastloss
from _helpers import (
    DTYPES,
    assert_elementwise_close,
    assert_reduction_close,
    assert_same_bits,
    check_cross_entropy_grad,
    check_cross_entropy_loss,
    make_logits_and_target,
    python_env,
    run_python_json,
    seed_for,
    softmax_backward_term_size,
    ulp_distance_f32,
    ATOL,
)
from fastloss import reference as R

dtype_ids = lambda d: np.dtype(d).name  # noqa: E731
REDUCTIONS = ("mean", "sum", "none")

# (shape, dim) of the softmax family: C = 1, 2, 3, 1000, 10^5 along the last axis, N = 0, 1, 7,
# a middle axis (strided rows), a 1-D and a 0-d array
ROW_CASES = [((7, 1), -1), ((7, 2), -1), ((7, 3), 1), ((1, 1000), -1), ((7, 1000), -1),
             ((2, 100_000), -1), ((0, 5), -1), ((5, 0), -1), ((3, 4, 5), 1), ((3, 4, 5), 0),
             ((2, 3, 70), -2), ((6,), 0), ((), 0), ((64, 300), 1)]
ROW_IDS = [f"{'x'.join(map(str, s)) or 'scalar'}-dim{d}" for s, d in ROW_CASES]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("shape, dim", ROW_CASES, ids=ROW_IDS)
def test_softmax_and_log_softmax(shape, dim, dtype):
    rng = np.random.default_rng(seed_for("softmax", shape, dim, np.dtype(dtype).name))
    x = np.asarray(rng.standard_normal(shape) * 4, dtype=dtype)
    for function, reference in ((fastloss.softmax, R.softmax),
                                (fastloss.log_softmax, R.log_softmax)):
        out = function(x, dim)
        ref = reference(x, dim)
        assert_elementwise_close(out, ref, dtype, what=function.__name__)
        if dtype == np.float32 and x.size:  # the claim of the docs: within 1 ulp
            assert ulp_distance_f32(out, ref).max() <= 1.0, function.__name__
        buffer = np.empty_like(x)
        assert function(x, dim, out=buffer) is buffer
        assert_same_bits(buffer, out)
        in_place = x.copy()
        function(in_place, dim, out=in_place)
        assert_same_bits(in_place, out, what=f"{function.__name__} in place")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("shape, dim", ROW_CASES, ids=ROW_IDS)
def test_softmax_backward_passes(shape, dim, dtype):
    rng = np.random.default_rng(seed_for("softmax-backward", shape, dim, np.dtype(dtype).name))
    x = np.asarray(rng.standard_normal(shape) * 3, dtype=dtype)
    g = np.asarray(rng.standard_normal(shape), dtype=dtype)
    for log, forward, backward, reference in (
            (False, fastloss.softmax, fastloss.softmax_backward, R.softmax_backward),
            (True, fastloss.log_softmax, fastloss.log_softmax_backward, R.log_softmax_backward)):
        y = forward(x, dim)
        out = backward(g, y, dim)
        atol = ATOL[np.dtype(dtype)] * softmax_backward_term_size(g, y, dim % max(len(shape), 1)
                                                                  if shape else 0, log)
        assert_elementwise_close(out, reference(g, y, dim), dtype, atol=atol,
                                 what=backward.__name__)
        assert_same_bits(backward(g, y, dim, out=g.copy()), out)


CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": "classes"},
    "ignore1": {"ignore_index": 1},
    "smoothing": {"label_smoothing": 0.2},
    "all": {"weight": "classes", "ignore_index": 0, "label_smoothing": 0.45},
    "full_smoothing": {"label_smoothing": 1.0},
}
CE_SHAPES = [(7, 3), (1, 2), (7, 1), (0, 5), (5, 1000), (2, 100_000), (3, 4, 5, 2), (6,),
             (4, 13, 9)]


def _options(name, shape, dtype, rng):
    kw = dict(CE_OPTIONS[name])
    if kw.get("weight") == "classes":
        classes = shape[1] if len(shape) >= 2 else shape[0]
        kw["weight"] = np.asarray(rng.uniform(0.25, 2.0, classes), dtype=dtype)
    return kw


def _ce_cases():
    for shape in CE_SHAPES:
        big = math.prod(shape) >= 100_000
        for kind in ("int64", "int32", "probabilities"):
            for option in CE_OPTIONS:
                if big and (kind == "int32" or option in ("ignore1", "full_smoothing")):
                    continue  # the large rows once per path: CI time
                yield pytest.param(shape, kind, option,
                                   id=f"{'x'.join(map(str, shape))}-{kind}-{option}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("shape, kind, option", list(_ce_cases()))
def test_cross_entropy(shape, kind, option, dtype):
    rng = np.random.default_rng(seed_for("ce", shape, kind, option, np.dtype(dtype).name))
    kw = _options(option, shape, dtype, rng)
    x, t = make_logits_and_target(shape, kind, dtype, rng, ignore_index=kw.get("ignore_index",
                                                                               -100))
    for reduction in REDUCTIONS:
        loss = fastloss.cross_entropy(x, t, reduction=reduction, **kw)
        check_cross_entropy_loss(loss, x, t, reduction=reduction, **kw)
        grad = fastloss.cross_entropy_grad(x, t, reduction=reduction, **kw)
        check_cross_entropy_grad(grad, x, t, reduction=reduction, **kw)
        # the fused pass against the reference too, not against the separate calls' bits: the
        # instantiations of a kernel may contract multiply-adds into FMAs differently (the
        # sanitizer build does), which moves a last bit
        fused_loss, fused_grad = fastloss.cross_entropy_and_grad(x, t, reduction=reduction, **kw)
        check_cross_entropy_loss(fused_loss, x, t, reduction=reduction, what="fused loss", **kw)
        check_cross_entropy_grad(fused_grad, x, t, reduction=reduction, what="fused grad", **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("kind", ["int64", "probabilities"])
def test_cross_entropy_grad_output_and_out(kind, dtype):
    shape = (9, 4, 3)
    rng = np.random.default_rng(seed_for("ce-go", kind, np.dtype(dtype).name))
    x, t = make_logits_and_target(shape, kind, dtype, rng)
    w = np.asarray(rng.uniform(0.5, 2, 4), dtype=dtype)
    for go in (np.asarray(rng.standard_normal((9, 3)), dtype=dtype),
               np.asarray(rng.standard_normal((3,)), dtype=dtype),  # broadcasts to (9, 3)
               np.asarray(-2.5, dtype=dtype)):
        loss, grad = fastloss.cross_entropy_and_grad(x, t, weight=w, reduction="none",
                                                     grad_output=go)
        check_cross_entropy_loss(loss, x, t, weight=w, reduction="none")
        check_cross_entropy_grad(grad, x, t, weight=w, reduction="none", grad_output=go)
    for reduction in ("mean", "sum"):
        grad = fastloss.cross_entropy_grad(x, t, reduction=reduction, grad_output=0.375)
        check_cross_entropy_grad(grad, x, t, reduction=reduction, grad_output=0.375)
        buffer = np.empty_like(x)
        loss, same = fastloss.cross_entropy_and_grad(x, t, reduction=reduction, out=buffer)
        assert same is buffer
        in_place = x.copy()
        _, written = fastloss.cross_entropy_and_grad(in_place, t, reduction=reduction,
                                                     out=in_place)
        assert written is in_place
        assert_same_bits(in_place, buffer, what="in place")


def test_target_dtypes_give_the_same_bits():
    rng = np.random.default_rng(5)
    x, t = make_logits_and_target((50, 7), "int64", np.float32, rng)
    for reduction in REDUCTIONS:
        a = fastloss.cross_entropy_and_grad(x, t, reduction=reduction)
        b = fastloss.cross_entropy_and_grad(x, t.astype(np.int32), reduction=reduction)
        assert_same_bits(a[0], b[0])
        assert_same_bits(a[1], b[1])


def test_strided_and_foreign_inputs_are_taken():
    rng = np.random.default_rng(6)
    x = np.asarray(rng.standard_normal((8, 10)), np.float32)
    t = np.arange(16) % 5
    wide = np.asarray(rng.standard_normal((8, 20)), np.float32)
    got = fastloss.cross_entropy(wide[:, ::2], t[::2])
    check_cross_entropy_loss(got, wide[:, ::2], t[::2])
    assert_same_bits(fastloss.log_softmax(x.T, 0), fastloss.log_softmax(
        np.ascontiguousarray(x.T), 0))
    check_cross_entropy_loss(fastloss.cross_entropy(x, t[:8]), x, t[:8])


# ---- edge values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_edge_values(dtype):
    inf, nan = np.inf, np.nan
    big = np.finfo(dtype).max
    x = np.array([[0.0, -inf, 1.0], [nan, 0.0, 1.0], [inf, 0.0, 1.0], [-inf, -inf, -inf],
                  [big, -big, 0.0], [1e-40, -1e-40, 0.0], [-1000.0, 0.0, 1000.0],
                  [5.0, 5.0, 5.0]], dtype=dtype)
    t = np.array([1, 1, 2, 0, 0, 1, 0, 2])
    for dim in (0, 1):
        assert_elementwise_close(fastloss.log_softmax(x, dim), R.log_softmax(x, dim), dtype)
        assert_elementwise_close(fastloss.softmax(x, dim), R.softmax(x, dim), dtype)
    for reduction in REDUCTIONS:
        for kw in ({}, {"label_smoothing": 0.1}):
            loss, grad = fastloss.cross_entropy_and_grad(x, t, reduction=reduction, **kw)
            check_cross_entropy_loss(loss, x, t, reduction=reduction, **kw)
            check_cross_entropy_grad(grad, x, t, reduction=reduction, **kw)
    per_row = fastloss.cross_entropy(x, t, reduction="none")
    assert per_row[0] == np.inf  # the target's logit is -inf
    assert math.isnan(per_row[1]) and math.isnan(per_row[2]) and math.isnan(per_row[3])
    assert np.isfinite(per_row[[4, 5, 6, 7]]).all()
    # equal logits: log C (the double log is within 1 ulp, not correctly rounded)
    assert abs(float(per_row[7]) - math.log(3)) <= float(np.spacing(dtype(math.log(3))))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_empty_and_ignored(dtype):
    x = np.zeros((0, 4), dtype)
    t = np.zeros(0, np.int64)
    assert math.isnan(fastloss.cross_entropy(x, t))
    assert fastloss.cross_entropy(x, t, reduction="sum") == 0
    assert fastloss.cross_entropy(x, t, reduction="none").shape == (0,)
    assert fastloss.cross_entropy_grad(x, t).shape == (0, 4)
    x = np.ones((3, 4), dtype)
    t = np.full(3, -100)
    loss, grad = fastloss.cross_entropy_and_grad(x, t)
    assert math.isnan(loss) and type(loss) is np.dtype(dtype).type  # 0 / 0, like PyTorch
    assert (grad == 0).all()
    t = np.array([7, 2, 7])
    loss, grad = fastloss.cross_entropy_and_grad(x, t, ignore_index=7, reduction="sum")
    check_cross_entropy_loss(loss, x, t, ignore_index=7, reduction="sum")
    assert (grad[[0, 2]] == 0).all() and (grad[1] != 0).all()
    with pytest.raises(ValueError, match="-100"):  # not ignored when ignore_index is 7
        fastloss.cross_entropy(x, np.array([-100, 2, 7]), ignore_index=7)


# ---- accuracy ------------------------------------------------------------------------------------
def _equal_rows(n, classes):
    row = np.linspace(-3, 2, classes).astype(np.float32)
    return np.broadcast_to(row, (n, classes)).copy(), np.full(n, classes // 3)


@pytest.mark.parametrize("n, classes", [(100_000, 10), (1000, 1000), (20, 50_000)])
def test_float32_mean_of_equal_rows_is_within_one_ulp(n, classes):
    """Every row's loss is the same, so the mean is that loss: per-row errors cannot average
    out, the row's own loss must be accurate to well below a float32 ulp."""
    x, t = _equal_rows(n, classes)
    exact = R.cross_entropy(x[:1], t[:1])
    for kw in ({}, {"label_smoothing": 0.3}):
        exact = R.cross_entropy(x[:1], t[:1], **kw)
        assert_reduction_close(fastloss.cross_entropy(x, t, **kw), exact, np.float32,
                               max_ulps=1, what=f"mean of {n} equal rows {kw}")
        assert_reduction_close(fastloss.cross_entropy(x, t, reduction="sum", **kw), exact * n,
                               np.float32, max_ulps=1, what=f"sum of {n} equal rows {kw}")


@pytest.mark.slow
def test_float32_mean_within_one_ulp_at_1e8_elements():
    x, t = _equal_rows(10**7, 10)
    assert_reduction_close(fastloss.cross_entropy(x, t), R.cross_entropy(x[:1], t[:1]),
                           np.float32, max_ulps=1, what="mean of 1e7 rows of 10")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10**6, 100), dtype=np.float32)
    t = rng.integers(0, 100, 10**6)
    exact = math.fsum(R.cross_entropy(x[i:i + 10**5], t[i:i + 10**5], reduction="sum")
                      for i in range(0, 10**6, 10**5)) / 10**6
    assert_reduction_close(fastloss.cross_entropy(x, t), exact, np.float32, max_ulps=1)


# ---- tanh and relu ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", [0, 1, 7, 40_000])
def test_tanh_and_relu(n, dtype):
    rng = np.random.default_rng(seed_for("activations", n, np.dtype(dtype).name))
    x = np.asarray(rng.standard_normal(n) * 4, dtype=dtype)
    if n >= 7:
        x[:7] = [0.0, -0.0, 1e-30, -3e-9, 20.0, -np.inf, np.nan]
    g = np.asarray(rng.standard_normal(n), dtype=dtype)
    for forward, backward, ref_forward, ref_backward in (
            (fastloss.tanh, fastloss.tanh_backward, R.tanh, R.tanh_backward),
            (fastloss.relu, fastloss.relu_backward, R.relu, R.relu_backward)):
        y = forward(x)
        # float32: within 1 ulp (correctly rounded but for rare ties); float64: tanh's 1 - e
        # loses up to 8 bits just above |x| = 2^-8, where its series stops
        assert_elementwise_close(y, ref_forward(x), dtype, rtol=1e-13 if dtype == np.float64
                                 else 2.0**-24, what=forward.__name__)
        # tanh's 1 - y^2 cancels near |y| = 1: a few roundings of its terms' size
        terms = np.abs(g.astype(np.float64)) * (1 + y.astype(np.float64) ** 2)
        assert_elementwise_close(backward(g, y), ref_backward(g, y), dtype,
                                 atol=ATOL[np.dtype(dtype)] * np.where(np.isfinite(terms), terms, 0),
                                 what=backward.__name__)
        assert_same_bits(forward(x, out=x.copy()), y)
    if n >= 7:
        relu = fastloss.relu(x)
        assert np.signbit(relu[1]) and relu[1] == 0 and math.isnan(relu[6])
        assert fastloss.tanh(x)[5] == -1 and math.isnan(fastloss.tanh(x)[6])


# ---- the same bits for any thread count; the baseline build -------------------------------------
DETERMINISM_CODE = r"""
import hashlib, json
import numpy as np
import fastloss, fastloss._cpu

rng = np.random.default_rng(123)
out = {}
digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
for dtype in (np.float32, np.float64):
    name = np.dtype(dtype).name
    for shape in ((30_001, 7), (300, 1000), (8, 40_000), (50, 9, 70)):
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        t = rng.integers(0, shape[1], size=shape[:1] + shape[2:])
        p = rng.random(shape).astype(dtype)
        key = f"{name}-{'x'.join(map(str, shape))}"
        loss, grad = fastloss.cross_entropy_and_grad(x, t, label_smoothing=0.1)
        out[key + "-mean"] = np.asarray(loss).tobytes().hex()
        out[key + "-grad"] = digest(grad)
        out[key + "-sum-probs"] = np.asarray(fastloss.cross_entropy(x, p, reduction="sum")).tobytes().hex()
        out[key + "-log_softmax"] = digest(fastloss.log_softmax(x, 1))
        out[key + "-softmax_backward"] = digest(fastloss.softmax_backward(p, fastloss.softmax(x, 1), 1))
        out[key + "-tanh"] = digest(fastloss.tanh(x))
print(json.dumps({"results": out, "threads": fastloss._cpu.build_info()["max_threads"],
                  "isa": fastloss._cpu.multiclass_isa}))
"""


@pytest.fixture(scope="module")
def per_thread_count():
    return {k: run_python_json(DETERMINISM_CODE, python_env(OMP_NUM_THREADS=str(k)))
            for k in (1, 2, 3)}


def test_same_bits_for_any_thread_count(per_thread_count):
    one = per_thread_count[1]
    for k in (2, 3):
        other = per_thread_count[k]
        assert other["threads"] == k
        differing = [key for key in one["results"] if one["results"][key] != other["results"][key]]
        assert not differing, f"OMP_NUM_THREADS=1 vs {k}: different bits for {differing}"


def test_baseline_build_is_correct():
    """FASTLOSS_ISA=baseline (the portable build) against the reference on a parallel size."""
    code = r"""
import json, numpy as np, fastloss, fastloss._cpu
from fastloss import reference as R
rng = np.random.default_rng(3)
x = (rng.standard_normal((5000, 13)) * 3).astype(np.float32)
t = rng.integers(0, 13, 5000)
loss, grad = fastloss.cross_entropy_and_grad(x, t, label_smoothing=0.2)
print(json.dumps({"isa": fastloss._cpu.multiclass_isa, "loss": float(loss),
                  "exact": R.cross_entropy(x, t, label_smoothing=0.2),
                  "grad_error": float(np.max(np.abs(grad - R.cross_entropy_grad(x, t, label_smoothing=0.2)))),
                  "log_softmax_ulps": float(np.max(np.abs(fastloss.log_softmax(x) - R.log_softmax(x))
                                            / np.spacing(np.abs(R.log_softmax(x)).astype(np.float32)))),
                  "tanh_ulps": float(np.max(np.abs(fastloss.tanh(x) - np.tanh(x.astype(np.float64)))
                                     / np.spacing(np.abs(np.tanh(x)).astype(np.float32))))}))
"""
    got = run_python_json(code, python_env(FASTLOSS_ISA="baseline"))
    assert got["isa"] == "baseline"
    assert abs(got["loss"] - got["exact"]) <= float(np.spacing(np.float32(got["exact"])))
    assert got["grad_error"] < 1e-9
    assert got["log_softmax_ulps"] <= 1.0 and got["tanh_ulps"] <= 1.0


# ---- bad input: clear errors naming the argument ------------------------------------------------
def _valid_ce(dtype=np.float32):
    rng = np.random.default_rng(11)
    return make_logits_and_target((4, 3), "int64", dtype, rng)


CE_FUNCTIONS = [fastloss.cross_entropy, fastloss.cross_entropy_grad,
                fastloss.cross_entropy_and_grad]
CE_IDS = [f.__name__ for f in CE_FUNCTIONS]


@pytest.mark.parametrize("function", CE_FUNCTIONS, ids=CE_IDS)
@pytest.mark.parametrize("index", [3, 7, -1, -101])
def test_class_index_out_of_range_names_the_index_and_c(function, index):
    x, t = _valid_ce()
    t[2] = index
    with pytest.raises(ValueError) as info:
        function(x, t)
    message = str(info.value)
    assert f"class index {index}" in message and "C = 3" in message and "(2,)" in message
    # nothing written into a caller's out= when the targets are refused
    if function is not fastloss.cross_entropy:
        out = np.full_like(x, 7.0)
        with pytest.raises(ValueError):
            function(x, t, out=out)
        assert (out == 7.0).all()
    with pytest.raises(ValueError, match="class index"):  # the checked path words it too
        function(x, t, weight=np.ones(3, np.float32))


@pytest.mark.parametrize("function", CE_FUNCTIONS, ids=CE_IDS)
@pytest.mark.parametrize("bad, error, words", [
    ({"target": np.zeros((4, 2), np.float32)}, ValueError, ["target", "(4, 3)", "(4, 2)"]),
    ({"target": np.zeros(4, np.float32)}, ValueError, ["target", "(4, 3)", "probabilities"]),
    ({"target": np.zeros((4, 3), np.int64)}, ValueError, ["target", "class indices", "(4,)"]),
    ({"target": np.zeros(5, np.int64)}, ValueError, ["target", "(5,)", "(4,)"]),
    ({"target": np.zeros(4, np.int16)}, TypeError, ["target", "int16", "int64"]),
    ({"target": np.zeros(4, np.bool_)}, TypeError, ["target", "bool"]),
    ({"target": np.zeros((4, 3), np.float64)}, TypeError, ["target", "float64", "float32"]),
    ({"target": [0, 1, 2, 0]}, TypeError, ["target", "list"]),
    ({"input": np.zeros((4, 0), np.float32)}, ValueError, ["input", "(4, 0)", "classes"]),
    ({"input": np.zeros((), np.float32), "target": np.zeros((), np.int64)}, ValueError,
     ["input", "()"]),
    ({"input": np.zeros((4, 3), np.int64)}, TypeError, ["input", "int64"]),
    ({"weight": np.ones(4, np.float32)}, ValueError, ["weight", "(4,)", "(3,)"]),
    ({"weight": np.ones((1, 3), np.float32)}, ValueError, ["weight", "(1, 3)", "(3,)"]),
    ({"weight": np.ones(3, np.float64)}, TypeError, ["weight", "float64"]),
    ({"weight": 2.0}, TypeError, ["weight", "float"]),
    ({"label_smoothing": 1.5}, ValueError, ["label_smoothing", "[0, 1]", "1.5"]),
    ({"label_smoothing": -0.1}, ValueError, ["label_smoothing", "[0, 1]"]),
    ({"label_smoothing": float("nan")}, ValueError, ["label_smoothing"]),
    ({"label_smoothing": "0.1"}, TypeError, ["label_smoothing"]),
    ({"ignore_index": 1.0}, TypeError, ["ignore_index", "int"]),
    ({"ignore_index": 2**64}, ValueError, ["ignore_index", "int64"]),
    ({"reduction": "avg"}, ValueError, ["reduction", "avg"]),
], ids=str)
def test_bad_arguments(function, bad, error, words):
    x, t = _valid_ce()
    kw = {"input": x, "target": t}
    kw.update(bad)
    with pytest.raises(error) as info:
        function(kw.pop("input"), kw.pop("target"), **kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("function", CE_FUNCTIONS[1:], ids=CE_IDS[1:])
def test_bad_grad_output_and_out(function):
    x, t = _valid_ce()
    with pytest.raises(ValueError, match="scalar"):
        function(x, t, grad_output=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="loss shape"):
        function(x, t, reduction="none", grad_output=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"out has shape \(4,\)"):
        function(x, t, out=np.empty(4, np.float32))
    both = np.empty(13, np.float32)
    both[:12] = x.reshape(-1)
    with pytest.raises(ValueError, match="out overlaps input"):
        function(both[:12].reshape(4, 3), t, out=both[1:].reshape(4, 3))
    with pytest.raises(ValueError, match="read-only"):
        read_only = np.empty_like(x)
        read_only.flags.writeable = False
        function(x, t, out=read_only)


@pytest.mark.parametrize("function", [fastloss.softmax, fastloss.log_softmax])
def test_softmax_bad_arguments(function):
    x = np.zeros((4, 3), np.float32)
    for dim in (2, -3, 10):
        with pytest.raises(ValueError, match=rf"dim must be in \[-2, 1\].*got {dim}"):
            function(x, dim)
    with pytest.raises(TypeError, match="dim must be an int"):
        function(x, 1.0)
    with pytest.raises(TypeError, match="dim must be an int"):
        function(x, True)
    with pytest.raises(TypeError, match="int32"):
        function(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="list"):
        function([1.0, 2.0])
    with pytest.raises(ValueError, match="out"):
        function(x, out=np.empty((3, 4), np.float32))
    assert function(np.zeros((3, 0), np.float32)).shape == (3, 0)


@pytest.mark.parametrize("function", [fastloss.softmax_backward, fastloss.log_softmax_backward,
                                      fastloss.tanh_backward, fastloss.relu_backward])
def test_backward_bad_arguments(function):
    g = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        function(g, np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        function(g, np.ones((4, 3), np.float64))
    with pytest.raises(TypeError, match="output"):
        function(g, "y")


# ---- the README's example ------------------------------------------------------------------------
def test_readme_multiclass_example_runs_and_computes_what_it_says():
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Multi-class", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    x, y, w = namespace["logits"], namespace["labels"], namespace["weight"]
    check_cross_entropy_loss(namespace["loss"], x, y, weight=w)
    check_cross_entropy_grad(namespace["grad"], x, y, weight=w)
    assert_elementwise_close(namespace["probabilities"], R.softmax(x, 1), np.float32)
    assert_elementwise_close(namespace["log_probabilities"], R.log_softmax(x), np.float32)
    check_cross_entropy_loss(namespace["per_row"], x, namespace["soft_targets"], reduction="none")
    assert namespace["per_row"].shape == (512,)


def test_float64_row_sums_are_exact():
    """The row losses are summed in double-double lanes (csrc/multiclass.h): the first row
    of each lane in every chunk (4096 rows of 2 classes) loses 2**53, the other rows log 2,
    each below half an ulp of 2**53. A plain double lane drops all of those (about 180 ulps
    of the total); the double-double sum is the exact one, correctly rounded."""
    rows = 8 * 4096
    big = (np.arange(rows) % 4096) < 8
    logits = np.zeros((rows, 2))
    logits[big, 1] = -2.0**53  # loss of target 1: logsumexp([0, -2**53]) + 2**53 = 2**53
    target = np.where(big, 1, 0).astype(np.int64)
    exact = math.fsum(fastloss.cross_entropy(logits, target, reduction="none").tolist())
    got = float(fastloss.cross_entropy(logits, target, reduction="sum"))
    ulps = abs(got - exact) / float(np.spacing(exact))
    assert got == exact, f"float64 row sum {got!r} is {ulps:.0f} ulps from {exact!r}"
