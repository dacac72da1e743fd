"""The 16-bit squared error's gradient in float32 lanes (csrc/kernels.cpp,
squared_errors_and_gradient_in_float32): q = (x - y) * float32(scale) is taken for the stored
gradient only where it rounds to the 16-bit value of the double D = (x - y) * scale, and the
double lanes are taken elsewhere. These tests feed it exactly the elements where q, evaluated by
NumPy's float32 arithmetic, rounds to another value than D: found by search or built around a
half-way point of the format, for a power-of-two scale (the kernel's exact-difference test) and
for others (its half-way window), repeated to fill whole blocks. Every build: the x86-64-v3
(AVX2) and widest builds take float32 lanes, the baseline only double ones.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # the subprocesses import this module by name
    sys.path.insert(0, str(TESTS_DIR))

from _helpers import run_python_json_in_build  # noqa: E402

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

DTYPE_NAMES = ["float16", "bfloat16"]
# the format's significand bits after the point, and its smallest normal exponent
FORMATS = {"float16": (10, -14), "bfloat16": (7, -126)}
REPEATS = 4096  # whole blocks in every build (512 elements in AVX-512's, 256 in AVX2's)


def _dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _float32_rounding(x, y, scale, dtype):
    with np.errstate(all="ignore"):
        return ((x.astype(np.float32) - y.astype(np.float32)) * np.float32(scale)).astype(dtype)


def _double_rounding(x, y, scale, dtype):
    with np.errstate(all="ignore"):
        return ((x.astype(np.float64) - y.astype(np.float64)) * scale).astype(dtype)


def _differs(x, y, scale, dtype):
    return _float32_rounding(x, y, scale, dtype).view(np.uint16) != _double_rounding(x, y, scale, dtype).view(
        np.uint16)


def _searched(name, scale, exponents, rng, size=1 << 19):
    """Random pairs (x, y) of the given exponent range whose float32 gradient rounds otherwise."""
    dtype = _dtype(name)
    low, high = exponents
    with np.errstate(all="ignore"):
        x = np.ldexp(rng.uniform(1, 2, size), rng.integers(low, high, size)).astype(dtype)
        y = (np.ldexp(rng.uniform(1, 2, size), rng.integers(low, high, size))
             * rng.choice([-1.0, 1.0], size)).astype(dtype)
    keep = _differs(x, y, scale, dtype)
    return x[keep], y[keep]


def _built_around_halfway(name, rng, count=6):
    """(x, y, scale) with (x - y) * scale a hair off one of the format's half-way points and
    float32(scale) off it the other way, so that q falls on the far side."""
    dtype = _dtype(name)
    bits, smallest_exponent = FORMATS[name]
    cases = []
    while len(cases) < count:
        x = np.array([rng.uniform(0.5, 2)]).astype(dtype)
        y = np.array([rng.uniform(-0.01, 0.01)]).astype(dtype)
        d = float(x[0]) - float(y[0])
        value = d * rng.uniform(1e-4, 1e-2)
        spacing = 2.0 ** (max(math.floor(math.log2(abs(value))), smallest_exponent) - bits)
        halfway = (math.floor(value / spacing) + 0.5) * spacing
        scale = halfway / d * (1 + rng.choice([-1.0, 1.0]) * 2.0 ** -int(rng.integers(25, 31)))
        if _differs(x, y, scale, dtype)[0]:
            cases.append((x, y, scale))
    return cases


def cases(name):
    """[(label, x, y, scale)]: elements whose float32 gradient rounds otherwise, by kind."""
    rng = np.random.default_rng(20261204)
    found = []
    dtype = _dtype(name)
    if name == "float16":
        # the difference 1 + 3 2^-10 - 2^-24 rounds in float32 to 1 + 3 2^-10 (a tie, to even),
        # whose product with 2^-15 is a half-way point of float16's subnormals (to even: 514
        # 2^-24); the exact product lies just below it (513 2^-24)
        found.append(("power of two, built", np.array([1 + 3 * 2.0**-10], np.float16),
                      np.array([2.0**-24], np.float16), 2.0**-15))
        found.append(("power of two, searched", *_searched(name, 2.0**-15, (-24, 16), rng), 2.0**-15))
        found.append(("2 0.7431 / 1000, searched", *_searched(name, 2 * 0.7431 / 1000, (-24, 16), rng),
                      2 * 0.7431 / 1000))
    else:
        # q a float32 subnormal, the difference exact: x = (k + 1/2) 2^-33, y = -2^-50 (24 bits
        # apart), times 2^-100 is half a float32 step (2^-150) above a half-way point of
        # bfloat16's subnormals, (k + 1/2) 2^-133, so q ties to it and then to even, k 2^-133 for
        # an even k, where the exact product rounds up
        k = np.arange(2, 128, 2, dtype=np.float64)
        found.append(("power of two, subnormal float32, built", ((k + 0.5) * 2.0**-33).astype(dtype),
                      np.full(k.size, -(2.0**-50)).astype(dtype), 2.0**-100))
    for index, (x, y, scale) in enumerate(_built_around_halfway(name, rng)):
        found.append((f"built around a half-way point {index}", x, y, scale))
    return found


def _nan_pairs(name):
    """Every NaN bit pattern of the format against a finite value, a finite value against each,
    NaN against NaN, and inf - inf (the default NaN)."""
    dtype = _dtype(name)
    exponent_mask, top = (0x7C00, 0x7FFF) if name == "float16" else (0x7F80, 0x7FFF)
    payloads = np.arange(exponent_mask + 1, top + 1, dtype=np.uint16)
    nans = np.concatenate([payloads, payloads | np.uint16(0x8000)]).view(dtype)
    finite = np.linspace(-3, 3, nans.size).astype(dtype)
    inf = np.full(4, np.inf).astype(dtype)
    x = np.concatenate([nans, finite, nans, inf, -inf])
    y = np.concatenate([finite, nans, nans[::-1], inf, -inf])
    return x, y


def run_checks(name):
    """{label: passed} for one dtype on the build this process runs."""
    dtype = _dtype(name)
    results = {}
    # NaN: taken by the float32 lanes without a test, it must come out as the double lanes'
    # (a weighted pass takes those: weight 1 leaves the product as it is), payload and sign
    x, y = _nan_pairs(name)
    repeats = -(-REPEATS // x.size)
    xs, ys = np.tile(x, repeats), np.tile(y, repeats)
    ones = np.ones(xs.size, dtype)
    for scale in (0.7431, 1.0):  # the half-way window and the exact test
        fast = fastloss.mse_loss_grad(xs, ys, reduction="sum", grad_output=scale / 2)
        double = fastloss.mse_loss_grad(xs, ys, weight=ones, reduction="sum", grad_output=scale / 2)
        results[f"NaN bits, scale {scale}"] = bool(np.array_equal(fast.view(np.uint16), double.view(np.uint16)))
    for label, x, y, scale in cases(name):
        results[f"{label}: found some"] = bool(x.size > 0)
        if x.size == 0:
            continue
        repeats = -(-REPEATS // x.size)
        xs, ys = np.tile(x, repeats), np.tile(y, repeats)
        expected = _double_rounding(xs, ys, scale, dtype).view(np.uint16)
        grad = fastloss.mse_loss_grad(xs, ys, reduction="sum", grad_output=scale / 2)
        fused = fastloss.mse_loss_and_grad(xs, ys, reduction="sum", grad_output=scale / 2)[1]
        in_place = fastloss.mse_loss_grad(xs.copy(), ys, reduction="sum", grad_output=scale / 2)
        results[label] = all(bool(np.array_equal(g.view(np.uint16), expected)) for g in (grad, fused, in_place))
    return results


CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import fastloss._cpu
import test_half_gradient_lanes as t
print(json.dumps({"isa": fastloss._cpu.build_info()["isa"], **{name: t.run_checks(name) for name in sys.argv[2:]}}))
"""


def _names():
    return [name for name in DTYPE_NAMES if name != "bfloat16" or ml_dtypes is not None]


def test_the_cases_round_otherwise_through_float32():
    """The inputs are what they claim: through float32 each would round to another value."""
    for name in _names():
        for label, x, y, scale in cases(name):
            assert x.size > 0, (name, label)
            assert np.all(_differs(x, y, scale, _dtype(name))), (name, label)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_this_build(name):
    if name == "bfloat16" and ml_dtypes is None:
        pytest.skip("ml_dtypes is not installed")
    failed = [label for label, passed in run_checks(name).items() if not passed]
    assert not failed, f"{fastloss._cpu.build_info()['isa']}, {name}: {failed}"


@pytest.mark.parametrize("isa", ["baseline", "x86_64_v3"])
def test_narrower_builds(isa):
    out = run_python_json_in_build(CODE, isa, str(TESTS_DIR), *_names())
    for name in _names():
        failed = [label for label, passed in out[name].items() if not passed]
        assert not failed, f"{isa}, {name}: {failed}"


def test_random_gradients_have_the_double_lanes_bits():
    """Plain random inputs at a power-of-two mean (N = 2^16) and another (N = 60000), whole blocks
    and a tail, against the float64 reference rounded once."""
    rng = np.random.default_rng(7)
    for name in _names():
        dtype = _dtype(name)
        for n in (1 << 16, 60000):
            x, y = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
            for grad_output in (1.0, 0.3):
                expected = _double_rounding(x, y, 2 * grad_output / n, dtype).view(np.uint16)
                loss, grad = fastloss.mse_loss_and_grad(x, y, grad_output=grad_output)
                np.testing.assert_array_equal(grad.view(np.uint16), expected, err_msg=f"{name} {n}")
                assert loss == fastloss.mse_loss(x, y)

