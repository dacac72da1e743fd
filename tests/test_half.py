"""float16 and bfloat16 (ml_dtypes) as storage types of the elementwise losses and sigmoid
(the multi-class functions, tanh and relu: tests/test_multiclass_half.py).

The kernels widen 16-bit inputs to double on load, compute as the float32 path does, sum in
double and round every stored value, and a reduced loss, once from double to the 16-bit
format (to nearest even). So:
- every bit pattern survives a load and a store (a gradient that is exactly the input);
- an elementwise result whose double value is exact in the reference's float64 math (the
  squared error) is the reference's float64 value rounded by NumPy / ml_dtypes, which round
  from double directly, bit for bit; the float32-grade terms (the cross-entropies, sigmoid) are
  within half an ulp of the float64 reference plus their ~1e-9 relative error;
- a mean is within half an ulp of the exact mean (math.fsum), and a sum built to sit just above
  a half-way point of the format, which rounding through float32 would put on that point and
  then round to even, comes out rounded up.
Each build of the kernels (FASTLOSS_ISA=baseline: bit arithmetic for the conversions;
x86_64_v3: F16C; the widest, this process's) is checked in a fresh interpreter, on sizes that
take the serial path and the parallel one (the threshold is 32768 elements) with partial
vectors; the bits are the same for 1 and 2 threads.
"""

from __future__ import annotations

import hashlib
import math
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fastloss
from fastloss import reference as R

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # the subprocesses import this module by name
    sys.path.insert(0, str(TESTS_DIR))

from _helpers import python_env, run_python_json, run_python_json_in_build  # noqa: E402

try:
    import ml_dtypes
except ImportError:  # bfloat16 is optional: fastloss never imports ml_dtypes itself
    ml_dtypes = None

DTYPE_NAMES = ["float16", "bfloat16"]
# serial with a partial vector of every build, and parallel (> 32768) with one
SIZES = (37, 40003)


def dtype_of(name):
    if name == "bfloat16":
        if ml_dtypes is None:
            pytest.skip("ml_dtypes is not installed")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def all_bit_patterns(dtype):
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)


def edge_values(dtype):
    """Zeros, the smallest and largest subnormals, the smallest normal, the largest finite
    value, infinities and NaN of the format."""
    finfo = ml_dtypes.finfo(dtype) if dtype.name == "bfloat16" else np.finfo(dtype)
    tiny, smallest = float(finfo.tiny), float(finfo.smallest_subnormal)
    values = [0.0, -0.0, smallest, 3 * smallest, tiny - smallest, tiny, float(finfo.max),
              -float(finfo.max), 1.0, -1.0, np.inf, -np.inf, np.nan]
    return np.array(values, dtype=np.float64).astype(dtype)


def random_values(dtype, n, rng):
    """Values over the whole exponent range of the format with its edge values mixed in."""
    exponents = rng.uniform(-26.0, 16.0, n) if dtype.name == "float16" else rng.uniform(-60, 60, n)
    values = (rng.choice([-1.0, 1.0], n) * np.exp2(exponents)).astype(dtype)
    edges = edge_values(dtype)
    values[rng.integers(0, n, min(n, 3 * edges.size))] = np.resize(edges, min(n, 3 * edges.size))
    return values


def half_ulp_bound(got, reference, dtype, relative=1e-8):
    """Whether each got is within half an ulp of the format (at the reference's rounding) of
    the float64 reference, plus ``relative`` (1e-8 for the float32-grade terms; the sums of a
    mean have ~1e-13); NaN where NaN."""
    got = np.asarray(got).astype(np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    with np.errstate(over="ignore"):  # a reference past the format's largest value rounds to inf
        rounded = ref.astype(dtype)
    nan = np.isnan(ref)
    if not np.array_equal(np.isnan(got), nan):
        return False
    finite = np.isfinite(rounded.astype(np.float64)) & ~nan
    if not np.array_equal(got[~finite & ~nan], rounded.astype(np.float64)[~finite & ~nan]):
        return False
    spacing = _spacing(np.abs(rounded[finite]), dtype)
    error = np.abs(got[finite] - ref[finite])
    return bool(np.all(error <= 0.5 * spacing + relative * np.abs(ref[finite])))


def _spacing(magnitude, dtype):
    """The gap from each non-negative value of ``dtype`` to the next one up, in float64."""
    bits = magnitude.view(np.uint16).astype(np.uint32)
    up = (bits + 1).astype(np.uint16).view(dtype).astype(np.float64)
    return up - magnitude.astype(np.float64)


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# ---- the checks, run in this process and in the narrower builds ----------------------------------
def run_checks(name):
    """{check: passed} for one dtype on the build this process runs, and a digest of the
    outputs of a parallel-size call (for the thread-count comparison). The references overflow
    and meet NaN on purpose (the edge values): NumPy's warnings are off here."""
    with np.errstate(all="ignore"):
        return _run_checks(name)


def _run_checks(name):
    dtype = dtype_of(name)
    rng = np.random.default_rng(15)
    results = {}

    # loads and stores: the gradient of 0.5 * sum((x - 0)^2) is x itself, every bit pattern
    x = all_bit_patterns(dtype)
    for n in (x.size, 1001):  # parallel, and serial with a partial vector
        g = fastloss.mse_loss_grad(x[:n], np.zeros(n, dtype), reduction="sum", grad_output=0.5)
        nan = np.isnan(x[:n].astype(np.float64))
        same = np.array_equal(g[~nan].view(np.uint16), x[:n][~nan].view(np.uint16))
        results[f"round trip n={n}"] = bool(same and np.all(np.isnan(g[nan].astype(np.float64))))

    outputs = []
    for n in SIZES:
        x, y = random_values(dtype, n, rng), random_values(dtype, n, rng)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        # the squared error is exact in double but for one rounding, as in the reference: the
        # stores must round it, and the gradient's product with an odd scale, exactly so
        loss = fastloss.mse_loss(x, y, reduction="none")
        results[f"mse none n={n}"] = _same_but_nan_bits(
            loss, R.mse_loss(x64, y64, reduction="none").astype(dtype))
        scale = 0.7431
        grad = fastloss.mse_loss_grad(x, y, reduction="none", grad_output=scale)
        results[f"mse grad n={n}"] = _same_but_nan_bits(grad, ((x64 - y64) * (2 * scale)).astype(dtype))
        # the mean: within half an ulp of the exact mean of the terms (finite inputs only)
        xf, yf = np.nan_to_num(x, posinf=1.0, neginf=-1.0), np.nan_to_num(y, posinf=2.0, neginf=0.5)
        xf, yf = np.where(np.abs(xf.astype(np.float64)) > 100, 3.0, xf).astype(dtype), \
            np.where(np.abs(yf.astype(np.float64)) > 100, -2.0, yf).astype(dtype)
        terms = (xf.astype(np.float64) - yf.astype(np.float64)) ** 2
        exact = math.fsum(terms.tolist()) / n
        mean = fastloss.mse_loss(xf, yf)
        results[f"mse mean n={n}"] = (type(mean) is dtype.type
                                      and half_ulp_bound(mean, exact, dtype, relative=1e-12))

        # float32-grade terms: sigmoid and its backward, the cross-entropies and their gradients
        z = np.clip(xf.astype(np.float64), -30, 30).astype(dtype)
        z64 = z.astype(np.float64)
        s = fastloss.sigmoid(z)
        results[f"sigmoid n={n}"] = half_ulp_bound(s, 1.0 / (1.0 + np.exp(-z64)), dtype)
        p = s
        p64 = p.astype(np.float64)
        label = (rng.random(n) < 0.5).astype(dtype)
        l64 = label.astype(np.float64)
        back = fastloss.sigmoid_backward(z, p)
        results[f"sigmoid_backward n={n}"] = half_ulp_bound(back, z64 * p64 * (1 - p64), dtype)
        bce, bce_grad = fastloss.binary_cross_entropy_and_grad(p, label, reduction="none")
        results[f"bce n={n}"] = (half_ulp_bound(bce, R.binary_cross_entropy(p64, l64, reduction="none"), dtype)
                                 and half_ulp_bound(bce_grad, R.binary_cross_entropy_grad(
                                     p64, l64, reduction="none"), dtype))
        logits, logits_grad = fastloss.binary_cross_entropy_with_logits_and_grad(z, label)
        results[f"logits n={n}"] = (
            half_ulp_bound(logits, R.binary_cross_entropy_with_logits(z64, l64), dtype)
            and half_ulp_bound(logits_grad, R.binary_cross_entropy_with_logits_grad(z64, l64), dtype))
        outputs += [loss, grad, mean, s, back, bce, bce_grad, logits, logits_grad]

    # stores of a value just above a half-way point of the format, 1 + u/2 + 2^-40 (u the
    # ulp at 1): a gradient (x - 0) * 2 * grad_output with x = 1; through float32 it would be
    # the half-way point, then rounded to even: 1
    u = 2.0 ** -10 if name == "float16" else 2.0 ** -7
    for n in SIZES:
        g = fastloss.mse_loss_grad(np.ones(n, dtype), np.zeros(n, dtype), reduction="sum",
                                   grad_output=(1.0 + u / 2 + 2.0 ** -40) / 2)
        results[f"store above a half-way point rounds up n={n}"] = bool(
            np.all(g.astype(np.float64) == 1.0 + u))

    # a sum just above a half-way point of the format: 1 + u/2 + tiny (u the ulp at 1), with
    # tiny below float32's resolution there, rounds up to 1 + u; through float32 it would be
    # 1 + u/2, then to even: 1
    tiny = 2.0 ** -15 if name == "float16" else 2.0 ** -20  # its square: below 2^-24
    xs = np.array([1.0, 1.0, tiny], dtype=np.float64).astype(dtype)
    weight = np.array([1.0, u / 2, 1.0], dtype=np.float64).astype(dtype)
    total = fastloss.mse_loss(xs, np.zeros(3, dtype), weight=weight, reduction="sum")
    results["sum above a half-way point rounds up"] = float(total) == 1.0 + u
    return {"results": results, "digest": digest(*outputs)}


def _same_but_nan_bits(got, expected):
    """Bit for bit, but any NaN for a NaN."""
    got_nan, expected_nan = np.isnan(got.astype(np.float64)), np.isnan(expected.astype(np.float64))
    return bool(np.array_equal(got_nan, expected_nan)
                and np.array_equal(got[~got_nan].view(np.uint16), expected[~expected_nan].view(np.uint16)))


CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import fastloss._cpu
import test_half as t
print(json.dumps({"isa": fastloss._cpu.build_info()["isa"],
                  **{name: t.run_checks(name) for name in sys.argv[2:]}}))
"""


def _names():
    return [name for name in DTYPE_NAMES if name != "bfloat16" or ml_dtypes is not None]


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_this_build(name):
    out = run_checks(name)
    failed = [check for check, passed in out["results"].items() if not passed]
    assert not failed, f"{fastloss._cpu.build_info()['isa']}, {name}: {failed}"


@pytest.mark.parametrize("isa", ["baseline", "x86_64_v3"])
def test_narrower_builds(isa):
    out = run_python_json_in_build(CODE, isa, str(TESTS_DIR), *_names())
    for name in _names():
        failed = [check for check, passed in out[name]["results"].items() if not passed]
        assert not failed, f"{isa}, {name}: {failed}"


def test_same_bits_for_one_and_two_threads():
    digests = [run_python_json(CODE, python_env(OMP_NUM_THREADS=str(threads)), str(TESTS_DIR),
                               *_names()) for threads in (1, 2)]
    for name in _names():
        assert digests[0][name]["digest"] == digests[1][name]["digest"], name


def test_the_checks_can_fail():
    """The bound rejects a value one ulp off, and the half-way case tells the rounding through
    float32 from the direct one."""
    dtype = np.dtype(np.float16)
    exact = 1.0 + 2.0 ** -11 + 2.0 ** -30
    assert half_ulp_bound(np.float16(1.0 + 2.0 ** -10), exact, dtype, relative=1e-12)
    assert not half_ulp_bound(np.float16(1.0), exact, dtype, relative=1e-12)
    assert not half_ulp_bound(np.float16(1.0 + 2.0 ** -9), 1.0 + 2.0 ** -10, dtype)
    assert np.float32(exact).astype(np.float16) == 1.0  # the double rounding it guards against


# ---- no float32 copy, the dispatch -----------------------------------------------------------
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_no_full_size_copy(name):
    """NumPy reports its allocations to tracemalloc: a float32 (or float64) copy of the input
    would show as 2x (4x) the input's bytes; the gradient itself is 1x."""
    dtype = dtype_of(name)
    n = 1 << 20
    x, y = np.full(n, 0.5, dtype), np.zeros(n, dtype)
    tracemalloc.start()
    try:
        fastloss.mse_loss(x, y)
        loss_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        grad = fastloss.binary_cross_entropy_with_logits_grad(x, y)
        grad_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert grad.dtype == dtype
    assert loss_peak < n // 4, loss_peak
    assert grad_peak < 1.25 * x.nbytes, grad_peak


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_mixed_dtypes_name_both(name):
    dtype = dtype_of(name)
    x = np.ones((4, 3), dtype)
    spelled = "ml_dtypes.bfloat16" if name == "bfloat16" else "np.float16"
    for other in (np.float32, np.float64):
        y = np.ones((4, 3), other)
        with pytest.raises(TypeError, match=f"^target has dtype {np.dtype(other).name} but input "
                                            f"has dtype {name}; convert one of them explicitly, "
                                            rf"e.g. target.astype\({spelled}\)"):
            fastloss.mse_loss(x, y)
        with pytest.raises(TypeError, match=f"^target has dtype {name} but input has dtype "
                                            f"{np.dtype(other).name}"):
            fastloss.binary_cross_entropy(y, x)
        with pytest.raises(TypeError, match=f"^weight has dtype {np.dtype(other).name} but input "
                                            f"has dtype {name}"):
            fastloss.mse_loss(x, x, weight=np.ones(3, other))
        with pytest.raises(TypeError, match=f"^out has dtype {np.dtype(other).name} but input has "
                                            f"dtype {name}"):
            fastloss.sigmoid(x, out=np.empty((4, 3), other))
        with pytest.raises(TypeError, match=f"^output has dtype {np.dtype(other).name} but "
                                            f"grad_output has dtype {name}"):
            fastloss.sigmoid_backward(x, y)


def test_float16_against_bfloat16_is_a_type_error():
    dtype = dtype_of("bfloat16")
    with pytest.raises(TypeError, match="^target has dtype bfloat16 but input has dtype float16"):
        fastloss.mse_loss(np.ones(3, np.float16), np.ones(3, dtype))


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_weighted_strided_and_out(name):
    """The checked path: weights, pos_weight, a non-contiguous input (copied in its own dtype),
    out= and an array grad_output, against the reference."""
    dtype = dtype_of(name)
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((64, 6)) * 3).astype(dtype)
    y = (rng.random((64, 6)) < 0.5).astype(dtype)
    w = rng.uniform(0.5, 2.0, 6).astype(dtype)
    pw = rng.uniform(0.5, 2.0, (64, 1)).astype(dtype)
    z64, y64, w64, pw64 = (a.astype(np.float64) for a in (z, y, w, pw))
    got = fastloss.binary_cross_entropy_with_logits(z[:, ::2], y[:, ::2], weight=w[::2],
                                                    pos_weight=pw, reduction="sum")
    exact = R.binary_cross_entropy_with_logits(z64[:, ::2], y64[:, ::2], weight=w64[::2],
                                               pos_weight=pw64, reduction="sum")
    assert type(got) is dtype.type and half_ulp_bound(got, exact, dtype)
    out = np.empty_like(z)
    g = rng.standard_normal((64, 6)).astype(dtype)
    result = fastloss.mse_loss_grad(z, y, reduction="none", grad_output=g, out=out)
    assert result is out
    expected = R.mse_loss_grad(z64, y64, reduction="none", grad_output=g.astype(np.float64))
    assert half_ulp_bound(out, expected, dtype)
    with pytest.raises(ValueError, match="^input must hold probabilities in"):
        fastloss.binary_cross_entropy(z, y)


@pytest.mark.parametrize("out", ["new", "other", "input"])
def test_bfloat16_gradients_with_a_few_subnormal_lanes(out):
    """With AVX512_BF16 the gradient's store checks for subnormal float32 lanes (which the
    conversion instruction reads as zero) once a chunk and redoes that chunk with the checked
    store (csrc/kernels.cpp, store_noting_subnormals); out= the input takes the checked store at
    once. 2 (x - y) / n with n a power of two is exact in double: every value is its float64
    reference rounded once by ml_dtypes, subnormals of bfloat16 among them."""
    dtype = dtype_of("bfloat16")
    rng = np.random.default_rng(11)
    n = 2**16  # 8 chunks, the parallel path
    x = rng.standard_normal(n)
    x[3 * 8192 + 100:3 * 8192 + 140] = np.ldexp(rng.uniform(1, 2, 40), -120)  # grads ~2^-134
    x[-5:] = np.ldexp(1.0, -118)
    x, y = x.astype(dtype), np.zeros(n, dtype)
    expected = (2 * x.astype(np.float64) / n).astype(dtype)
    assert np.count_nonzero(np.abs(expected.astype(np.float64)) < 2.0**-126) > 40
    for call in ("mse_loss_grad", "mse_loss_and_grad"):
        argument = {"new": None, "other": np.empty_like(x), "input": x.copy()}[out]
        inputs = argument if out == "input" else x
        got = getattr(fastloss, call)(inputs, y, out=argument)
        grad = got[1] if call == "mse_loss_and_grad" else got
        np.testing.assert_array_equal(grad.view(np.uint16), expected.view(np.uint16), err_msg=call)
        if call == "mse_loss_and_grad":
            assert got[0] == fastloss.mse_loss(x, y)


def test_float16_needs_no_ml_dtypes():
    """`import fastloss` and a float16 call never import ml_dtypes (bfloat16 is optional)."""
    code = ("import json, sys, numpy as np, fastloss\n"
            "fastloss.mse_loss(np.ones(3, np.float16), np.ones(3, np.float16))\n"
            "print(json.dumps('ml_dtypes' in sys.modules))")
    assert run_python_json(code, python_env()) is False


# ---- the mean at N = 10^8 ------------------------------------------------------------------------
# Halves in [1, 2): a multiple of the format's quantum there (2^-10 float16, 2^-7 bfloat16), so
# (x - y)^2 is an integer count of quantum^2 and the exact sum an integer NumPy adds without
# error (below 2^20 * 10^8 < 2^47 for float16).
ONE_BITS = {"float16": 0x3C00, "bfloat16": 0x3F80}
MANTISSA_BITS = {"float16": 10, "bfloat16": 7}
BIG_N = 10**8


def _correctly_rounded(exact, dtype):
    """The dtype value nearest the Fraction ``exact`` (ties to even), by its bits: the
    candidates around exact's float64 rounding (which may round twice on its way to 16 bits)."""
    from fractions import Fraction
    near = np.array([float(exact)]).astype(dtype).view(np.uint16)[0]
    candidates = np.array([near - 1, near, near + 1], dtype=np.uint16).view(dtype)
    distances = [abs(Fraction(float(c)) - exact) for c in candidates]
    best = min(distances)
    ties = [c for c, d in zip(candidates, distances) if d == best]
    return min(ties, key=lambda c: int(np.array([c]).view(np.uint16)[0]) & 1)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_mean_of_10_to_the_8_halves_is_the_exact_mean_correctly_rounded(name):
    """The issue's bar: a 16-bit mean is the correctly rounded exact mean of the 16-bit inputs
    at N up to 1e8, for random inputs and for equal terms (where no error averages out)."""
    from fractions import Fraction
    dtype = dtype_of(name)
    quanta = 1 << MANTISSA_BITS[name]
    rng = np.random.default_rng(20261202)
    kx = rng.integers(0, quanta, BIG_N, dtype=np.uint16)
    ky = rng.integers(0, quanta, BIG_N, dtype=np.uint16)
    x = (kx + np.uint16(ONE_BITS[name])).view(dtype)
    y = (ky + np.uint16(ONE_BITS[name])).view(dtype)
    squares = 0
    for start in range(0, BIG_N, 10**7):
        d = kx[start:start + 10**7].astype(np.int64) - ky[start:start + 10**7]
        squares += int(np.dot(d, d))
    exact = Fraction(squares, BIG_N * quanta * quanta)
    got = fastloss.mse_loss(x, y)
    assert got.dtype == dtype
    assert got == _correctly_rounded(exact, dtype), (float(got), float(exact))
    if name == "bfloat16":  # float16's sum (1.7e7) overflows to inf
        assert fastloss.mse_loss(x, y, reduction="sum") == _correctly_rounded(exact * BIG_N,
                                                                              dtype)
    # equal terms: x - y = 3 quanta everywhere, the mean exactly (3 quanta)^2
    del kx, ky
    x[:] = np.array([1 + 3 / quanta]).astype(dtype)[0]
    y[:] = np.array([1.0]).astype(dtype)[0]
    assert fastloss.mse_loss(x, y) == _correctly_rounded(Fraction(9, quanta * quanta), dtype)
