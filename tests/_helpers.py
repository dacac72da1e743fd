"""Shared helpers for the fastloss test-suite: tolerances, ulp distances, data, exact sums.

Imported by the test modules as a sibling module (``from _helpers import ...``); pytest's
default ``prepend`` import mode puts this directory on ``sys.path``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import zlib
from fractions import Fraction

import numpy as np

import fastloss
from fastloss import reference as R

DTYPES = (np.float32, np.float64)

# Per-element tolerances: |ref - out| <= atol + rtol * |ref| + the dtype's smallest subnormal,
# element by element. No bound scales with an array's maximum: one huge element (a saturated BCE
# gradient is ~1e12) must not excuse a wrong one beside it. atol is 0 unless the caller passes
# one per element: ``Op.check_grad`` does, as ATOL times the size of the terms an element's
# gradient is computed from (see Op.grad_term_size), for the one gradient that cancels.
RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}
ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-14}
# Saturated BCE elements (the clamped logs and the clamped denominator) have exact definitions:
# they are held to the few roundings of their arithmetic (8 half-ulps), far tighter than RTOL.
SATURATED_RTOL = {np.dtype(np.float32): 8 * 2.0**-24, np.dtype(np.float64): 8 * 2.0**-53}
# The exp of float32 inputs stops at e^-120 = 7.7e-53 (scalar_math.h: exp_neg_for_float32), far
# below float32's smallest subnormal: a float32 logistic term may be off by that much,
# absolutely. The float64 exp keeps subnormals (rounded once, so within one subnormal unit).
EXP_FLUSHED_BELOW = {np.dtype(np.float32): 1.0000001 * math.exp(-120.0),
                     np.dtype(np.float64): 2.0**-1074}
# float64 reductions: relative tolerance against the exact (math.fsum) value.
REDUCTION_RTOL_F64 = 1e-13


# ---- the operations under test, by name ----------------------------------------------------
class Op:
    def __init__(self, name, loss, grad, and_grad, ref_loss, ref_grad, has_pos_weight):
        self.name = name
        self.loss = loss
        self.grad = grad
        self.and_grad = and_grad
        self.ref_loss = ref_loss
        self.ref_grad = ref_grad
        self.has_pos_weight = has_pos_weight

    def __repr__(self):
        return self.name

    # keyword calls into fastloss; pos_weight only passed when the op takes it
    def _kw(self, weight, pos_weight, reduction):
        kw = {"weight": weight, "reduction": reduction}
        if self.has_pos_weight:
            kw["pos_weight"] = pos_weight
        else:
            assert pos_weight is None
        return kw

    def call_loss(self, x, y, weight=None, pos_weight=None, reduction="mean"):
        return self.loss(x, y, **self._kw(weight, pos_weight, reduction))

    def call_grad(self, x, y, weight=None, pos_weight=None, reduction="mean", grad_output=1.0,
                  out=None):
        return self.grad(x, y, **self._kw(weight, pos_weight, reduction),
                         grad_output=grad_output, out=out)

    def call_and_grad(self, x, y, weight=None, pos_weight=None, reduction="mean",
                      grad_output=1.0, out=None):
        return self.and_grad(x, y, **self._kw(weight, pos_weight, reduction),
                             grad_output=grad_output, out=out)

    # positional calls into fastloss.reference (its own float warnings, such as the 1/0 scale
    # of an empty 'mean' gradient, are the reference's business, not the kernel's)
    def reference_loss(self, x, y, weight=None, pos_weight=None, reduction="mean"):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.has_pos_weight:
                return self.ref_loss(x, y, weight, pos_weight, reduction)
            return self.ref_loss(x, y, weight, reduction)

    def reference_grad(self, x, y, weight=None, pos_weight=None, reduction="mean",
                       grad_output=1.0):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.has_pos_weight:
                return self.ref_grad(x, y, weight, pos_weight, reduction, grad_output)
            return self.ref_grad(x, y, weight, reduction, grad_output)

    # ---- per-element allowances ------------------------------------------------------------
    def grad_term_size(self, x, y, weight=None, pos_weight=None, reduction="mean",
                       grad_output=1.0):
        """Per element, the size of the terms its gradient is computed from, times its weight
        and scale (|weight * grad_output| [/ N]): where those terms cancel, the kernel's
        rounding is a few ulps of this size, not of the result. Only the logits gradient
        cancels, (1 - y) - (pos_weight*y + 1 - y)*sigmoid(-z) for z >= 0 (and its mirror); MSE
        and BCE gradients are products and quotients of exact or rounded factors, so 0."""
        shape = np.shape(x)
        if self is not LOGITS:
            return np.zeros(shape)
        # + one subnormal per coefficient: pos_weight*y is formed in the input dtype, where a
        # subnormal product keeps only a few bits
        tiny = float(np.finfo(np.asarray(x).dtype).smallest_subnormal) / ATOL[np.asarray(x).dtype]
        return _terms_scale(shape, weight, reduction, grad_output) * (
            _logits_coefficients(x, y, pos_weight) + tiny)

    def loss_term_size(self, x, y, weight=None, pos_weight=None):
        """Per element, how far a 'none' loss may be off in absolute terms beyond its relative
        tolerance. Every loss term is a sum of non-negative parts (no cancellation), held to
        RTOL alone, except for two float effects of the logits loss: the exp flushes below
        EXP_FLUSHED_BELOW (scalar_math.h), so log1p(exp(-|z|)) may be that much too small, and
        pos_weight*y is formed in the input dtype, where a subnormal product keeps only a few
        bits (an error of up to one subnormal times |z| + 1)."""
        shape = np.shape(x)
        if self is not LOGITS:
            return np.zeros(shape)
        dtype = np.asarray(x).dtype
        z = np.abs(np.asarray(x, dtype=np.float64))
        z = np.where(np.isfinite(z), z, 0.0)  # at +-inf a finite loss is an exact 0
        rounding = float(np.finfo(dtype).smallest_subnormal) * (z + 1.0)
        return _terms_scale(shape, weight, "none", 1.0) * (
            EXP_FLUSHED_BELOW[dtype] * _logits_coefficients(x, y, pos_weight) + rounding)

    # ---- checks against the reference ------------------------------------------------------
    def check_loss(self, loss, x, y, weight=None, pos_weight=None, reduction="mean",
                   max_ulps=None, where=None, what=None):
        """A loss from fastloss against the reference: reduced within ``max_ulps`` float32 ulps
        (default ``reduction_ulp_bound``) or rtol 1e-13 (float64); 'none' per element, with
        the saturated elements of BCE on their own against their exact clamped values.
        ``where``: a boolean mask of the elements to compare ('none' only)."""
        what = what or f"{self.name} loss"
        dtype = np.asarray(x).dtype
        ref = self.reference_loss(x, y, weight, pos_weight, reduction)
        if reduction != "none":
            if max_ulps is None:
                max_ulps = reduction_ulp_bound(self.name, np.size(x))
            assert_reduction_close(loss, ref, dtype, what=what, max_ulps=max_ulps)
            return
        saturated = _bce_saturated(x) if self is BCE else None
        _compare(loss, ref, dtype, self.loss_term_size(x, y, weight, pos_weight), where,
                 saturated, ref, what)

    def check_grad(self, grad, x, y, weight=None, pos_weight=None, reduction="mean",
                   grad_output=1.0, where=None, what=None):
        """A gradient from fastloss against the reference, element by element: RTOL, plus ATOL
        times ``grad_term_size`` where the terms cancel; BCE's saturated elements (p(1 - p)
        below the 1e-12 clamp) on their own, against (p - y) / dtype(1e-12) times the scale.
        ``where``: a boolean mask of the elements to compare."""
        what = what or f"{self.name} grad"
        dtype = np.asarray(x).dtype
        ref = self.reference_grad(x, y, weight, pos_weight, reduction, grad_output)
        atol = ATOL[dtype] * self.grad_term_size(x, y, weight, pos_weight, reduction,
                                                 grad_output)
        if np.ndim(grad_output) > 0:
            # An upstream gradient array reaches the kernels as weight * grad_output rounded to
            # the input dtype (fastloss._dispatch._times_weight): exact to 0.5 ulp relative, but a
            # subnormal product keeps only a few bits. Allowed: that rounding, per element.
            combined = _terms_scale(np.shape(x), weight, reduction, grad_output, signed=True)
            with np.errstate(invalid="ignore", over="ignore"):
                rounding = np.abs(combined - combined.astype(dtype).astype(np.float64))
                rounding = np.where(np.isfinite(combined), rounding, 0.0)
                unit = self.reference_grad(x, y, None, pos_weight, reduction, 1.0)
                atol = atol + np.where(rounding == 0, 0.0, np.abs(unit) * rounding)
        saturated = clamped = None
        if self is BCE:
            saturated = _bce_saturated(x)
            p = np.asarray(x, dtype=np.float64)
            clamped = ((p - np.asarray(y, dtype=np.float64)) / float(dtype.type(R.GRAD_EPS))
                       * _terms_scale(np.shape(x), weight, reduction, grad_output, signed=True))
        _compare(grad, ref, dtype, atol, where, saturated, clamped, what)


def _compare(out, ref, dtype, atol, where, saturated, saturated_expected, what):
    """``assert_elementwise_close`` over the elements ``where`` selects (all by default), the
    ``saturated`` ones (if any) against ``saturated_expected`` at SATURATED_RTOL."""
    out = np.asarray(out)
    shape = out.shape
    assert np.shape(ref) == shape, f"{what}: shape {shape}, expected {np.shape(ref)}"
    selected = np.ones(shape, dtype=bool) if where is None else np.broadcast_to(where, shape)
    ref = np.asarray(ref, dtype=np.float64)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), shape)
    if saturated is not None:
        expected = np.broadcast_to(np.asarray(saturated_expected, dtype=np.float64), shape)
        pick = selected & saturated
        assert_elementwise_close(out[pick], expected[pick], dtype, rtol=SATURATED_RTOL[dtype],
                                 atol=atol[pick], what=f"{what} (saturated elements)")
        selected = selected & ~saturated
    if where is None and saturated is None:
        assert_elementwise_close(out, ref, dtype, atol=atol, what=what)  # keeps the indices
    else:
        assert_elementwise_close(out[selected], ref[selected], dtype, atol=atol[selected],
                                 what=what)


def _terms_scale(shape, weight, reduction, grad_output, signed=False):
    """weight * (grad_output [/ N]) broadcast to ``shape``, in float64 (absolute unless signed),
    in the kernels' order: the mean's division first (a subnormal grad_output keeps the same
    lost bits)."""
    n = math.prod(shape)
    scale = np.asarray(grad_output, dtype=np.float64)
    if reduction == "mean" and n:
        scale = scale / n
    if weight is not None:
        scale = np.asarray(weight, dtype=np.float64) * scale
    scale = np.broadcast_to(scale, shape)
    return scale if signed else np.abs(scale)


def _logits_coefficients(x, y, pos_weight):
    """|pos_weight * y| + |1 - y|: the size of the two logistic terms of BCE with logits."""
    y64 = np.asarray(y, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.broadcast_to(np.abs(pw * y64) + np.abs(1.0 - y64), np.shape(x))


def _bce_saturated(p):
    """Where BCE's clamps decide the value: p(1 - p) below 1e-12 (in p's own dtype), so the
    gradient's denominator is the clamp; p = 0 and 1 also clamp a log at -100."""
    p = np.asarray(p)
    with np.errstate(invalid="ignore"):
        return (p * (p.dtype.type(1) - p)) < p.dtype.type(R.GRAD_EPS)


MSE = Op("mse", fastloss.mse_loss, fastloss.mse_loss_grad, fastloss.mse_loss_and_grad,
         R.mse_loss, R.mse_loss_grad, False)
BCE = Op("bce", fastloss.binary_cross_entropy, fastloss.binary_cross_entropy_grad,
         fastloss.binary_cross_entropy_and_grad, R.binary_cross_entropy,
         R.binary_cross_entropy_grad, False)
LOGITS = Op("logits", fastloss.binary_cross_entropy_with_logits,
            fastloss.binary_cross_entropy_with_logits_grad,
            fastloss.binary_cross_entropy_with_logits_and_grad,
            R.binary_cross_entropy_with_logits, R.binary_cross_entropy_with_logits_grad, True)
OPS = (MSE, BCE, LOGITS)
OPS_BY_NAME = {op.name: op for op in OPS}


# ---- data --------------------------------------------------------------------------------------
def make_inputs(op_name, shape, dtype, rng, soft=False):
    """Sensible (input, target) for one op: normal for MSE, probabilities (with exact 0.0 and 1.0
    entries) for BCE, normal*3 logits for BCE with logits; targets hard {0,1} or soft uniform."""
    dtype = np.dtype(dtype)
    if op_name == "mse":
        x = np.asarray(rng.standard_normal(shape), dtype=dtype)
        y = np.asarray(rng.standard_normal(shape), dtype=dtype)
        return x, y
    if soft:
        y = np.asarray(rng.random(shape), dtype=dtype)
    else:
        y = np.asarray(rng.integers(0, 2, size=shape), dtype=dtype)
    if op_name == "bce":
        x = np.asarray(rng.random(shape), dtype=dtype)
        flat = x.reshape(-1)
        if flat.size >= 3:  # exact 0.0 and 1.0 entries: the clamped logs of PyTorch's definition
            flat[::97] = 0.0
            flat[1::89] = 1.0
        return x, y
    if op_name == "logits":
        x = np.asarray(rng.standard_normal(shape) * 3.0, dtype=dtype)
        return x, y
    raise ValueError(op_name)


def make_weight(kind, shape, dtype, rng):
    """A weight of the given broadcast kind against an input of ``shape``.

    None; 'scalar' (a Python float); 'trailing' (shape[-1:], like (C,) for (B, C));
    'full' (the input's shape); 'col' (shape[:-1] + (1,), like (B, 1): not a trailing block).
    """
    if kind is None:
        return None
    if kind == "scalar":
        return 0.75
    if kind == "trailing":
        wshape = tuple(shape[-1:])
    elif kind == "full":
        wshape = tuple(shape)
    elif kind == "col":
        wshape = tuple(shape[:-1]) + (1,)
    else:
        raise ValueError(kind)
    return np.asarray(rng.uniform(0.5, 2.0, size=wshape), dtype=dtype)


def seed_for(*parts):
    """A fixed seed per test case, derived from its parameters (stable across runs)."""
    return zlib.crc32(repr(parts).encode())


# the smallest float64 that rounds to inf in float32: FLT_MAX + half an ulp (2**128 - 2**103)
F32_OVERFLOW = 2.0**128 - 2.0**103


# ---- comparisons -------------------------------------------------------------------------------
def _describe(index, out, ref):
    return f"at index {index}: got {out!r}, expected {ref!r}"


def assert_elementwise_close(out, ref, dtype, rtol=None, atol=None, what="result"):
    """|ref - out| <= atol + rtol*|ref| + tiny element by element, with NaN and inf required to
    match. ``tiny`` is the dtype's smallest subnormal (the rounding of a result near zero).

    Defaults: rtol RTOL[dtype] (float32 2e-6, float64 1e-12); atol 0. ``atol`` may be an array
    of the result's shape, one allowance per element (``Op.check_grad`` passes one); it never
    depends on the other elements.
    """
    dtype = np.dtype(dtype)
    assert isinstance(out, np.ndarray), f"{what}: expected numpy.ndarray, got {type(out)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype}, expected {dtype}"
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    if out.size == 0:
        return
    o = out.astype(np.float64).reshape(-1)
    r = ref.reshape(-1)
    if dtype == np.float32:
        # a finite float64 value at or beyond FLT_MAX + half an ulp rounds to +-inf in float32
        with np.errstate(invalid="ignore"):
            overflow = np.abs(r) >= F32_OVERFLOW
        r = np.where(overflow, np.copysign(np.inf, r), r)
    ref_nan = np.isnan(r)
    out_nan = np.isnan(o)
    if not np.array_equal(ref_nan, out_nan):
        i = int(np.flatnonzero(ref_nan != out_nan)[0])
        raise AssertionError(f"{what}: NaN mismatch {_describe(i, o[i], r[i])}")
    ref_inf = np.isinf(r)
    if not np.array_equal(o[ref_inf], r[ref_inf]) or np.isinf(o[~ref_inf & ~ref_nan]).any():
        bad = (ref_inf & (o != r)) | (~ref_inf & ~ref_nan & np.isinf(o))
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"{what}: infinity mismatch {_describe(i, o[i], r[i])}")
    finite = ~ref_inf & ~ref_nan
    if not finite.any():
        return
    rf, of = r[finite], o[finite]
    if rtol is None:
        rtol = RTOL[dtype]
    if atol is None:
        atol = 0.0
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), out.shape).reshape(-1)[finite]
    err = np.abs(rf - of)
    with np.errstate(invalid="ignore"):  # an infinite allowance stays infinite
        bound = atol + rtol * np.abs(rf) + float(np.finfo(dtype).smallest_subnormal)
    if not (err <= bound).all():
        j = int(np.argmax(np.where(err <= bound, -np.inf, err / np.maximum(bound, 1e-300))))
        i = int(np.flatnonzero(finite)[j])
        raise AssertionError(
            f"{what}: {int(np.count_nonzero(~(err <= bound)))} of {rf.size} elements out of "
            f"tolerance (rtol={rtol:g}, per-element atol up to {float(np.max(atol)):g}); worst "
            f"{_describe(i, o[i], r[i])}, |error|={err[j]:.3e} > bound {bound[j]:.3e}")


def float32_ulp(value):
    """The spacing of float32 at float32(value): 1 ulp of a float32 result near ``value``."""
    return float(np.spacing(np.abs(np.float32(value))))


def reduction_ulp_bound(op_name, n):
    """How many float32 ulps a reduced float32 loss of ``n`` elements may be from exact: 1, at
    any n. MSE terms are exact doubles; the BCE terms of float32 inputs are within ~1e-9
    relative of exact before they are summed (elementwise.h), so not even a sum of a few
    elements, or of many equal ones (tests/test_term_accuracy.py), keeps a per-element error."""
    return 1


def assert_reduction_close(out, exact, dtype, what="reduced loss", max_ulps=1):
    """A reduced loss: a NumPy scalar of ``dtype``; float32 within ``max_ulps`` float32 ulps
    of the exact float64 value, float64 within rtol 1e-13; NaN/inf must match exactly."""
    dtype = np.dtype(dtype)
    assert type(out) is dtype.type, (
        f"{what}: type {type(out).__name__}, expected {dtype.type.__name__}")
    exact = float(exact)
    got = float(out)
    if math.isnan(exact):
        assert math.isnan(got), f"{what}: got {got!r}, expected NaN"
        return
    if math.isinf(exact):
        assert got == exact, f"{what}: got {got!r}, expected {exact!r}"
        return
    if dtype == np.float32:
        if abs(exact) >= F32_OVERFLOW:  # the exact value rounds to +-inf in float32
            assert got == math.copysign(math.inf, exact), (
                f"{what}: got {got!r}, expected {math.copysign(math.inf, exact)!r} "
                f"(exact {exact!r} overflows float32)")
            return
        ulp = float32_ulp(exact)
        assert abs(got - exact) <= max_ulps * ulp, (
            f"{what}: float32 result {got!r} is {abs(got - exact) / ulp:.2f} ulp from the exact "
            f"value {exact!r} (1 ulp = {ulp:.3e})")
    else:
        rel = abs(got - exact) / abs(exact) if exact else (0.0 if got == 0 else math.inf)
        assert abs(got - exact) <= REDUCTION_RTOL_F64 * abs(exact), (
            f"{what}: float64 result {got!r} vs exact {exact!r}: relative error {rel:.3e} > "
            f"{REDUCTION_RTOL_F64:g}")


def assert_loss_matches(out, ref, dtype, reduction, what="loss", max_ulps=1):
    if reduction == "none":
        assert_elementwise_close(out, ref, dtype, what=what)
    else:
        assert_reduction_close(out, ref, dtype, what=what, max_ulps=max_ulps)


def assert_same_bits(a, b, what="result"):
    """Bitwise identity of two results (arrays or scalars), NaN payloads included."""
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    assert type(a) is type(b), f"{what}: types {type(a).__name__} vs {type(b).__name__}"
    assert a_arr.dtype == b_arr.dtype and a_arr.shape == b_arr.shape, (
        f"{what}: {a_arr.dtype}{a_arr.shape} vs {b_arr.dtype}{b_arr.shape}")
    if a_arr.tobytes() != b_arr.tobytes():
        ia = a_arr.reshape(-1).view(np.uint32 if a_arr.dtype == np.float32 else np.uint64)
        ib = b_arr.reshape(-1).view(np.uint32 if b_arr.dtype == np.float32 else np.uint64)
        i = int(np.flatnonzero(ia != ib)[0])
        raise AssertionError(f"{what}: bits differ, first at flat index {i}: "
                             f"{a_arr.reshape(-1)[i]!r} vs {b_arr.reshape(-1)[i]!r}")


def assert_within_ulps(a, b, max_ulps, what="result"):
    """Same type, dtype and shape, and values within ``max_ulps`` units in the last place of
    their own dtype (NaN and inf must match exactly)."""
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    assert type(a) is type(b), f"{what}: types {type(a).__name__} vs {type(b).__name__}"
    assert a_arr.dtype == b_arr.dtype and a_arr.shape == b_arr.shape, (
        f"{what}: {a_arr.dtype}{a_arr.shape} vs {b_arr.dtype}{b_arr.shape}")
    finite = np.isfinite(a_arr) & np.isfinite(b_arr)
    assert np.array_equal(a_arr[~finite], b_arr[~finite], equal_nan=True), (
        f"{what}: non-finite values differ")
    spacing = np.spacing(np.maximum(np.abs(a_arr[finite]), np.abs(b_arr[finite])))
    ulps = np.abs(a_arr[finite].astype(np.float64) - b_arr[finite]) / spacing
    assert ulps.size == 0 or ulps.max() <= max_ulps, (
        f"{what}: {ulps.max():.1f} ulps apart (allowed {max_ulps})")


def ulp_distance_f32(out, ref):
    """|out - ref| in units of the float32 spacing at float32(ref), computed in float64.

    ``out`` is a float32 array, ``ref`` its float64 reference. The spacing is taken at the
    float32 rounding of |ref|, which is correct for subnormal and zero results too (spacing(0)
    is the smallest subnormal, 2**-149), so tiny values are not divided by a zero ulp.
    """
    ref = np.asarray(ref, dtype=np.float64)
    spacing = np.spacing(np.abs(ref.astype(np.float32))).astype(np.float64)
    return np.abs(np.asarray(out, dtype=np.float64) - ref) / spacing


def exact_sum_chunked(terms, chunk=1 << 20):
    """math.fsum of all the float64 values of ``terms`` (correctly rounded, exact), streamed in
    chunks so a 2**27-element array never becomes one giant Python list."""
    flat = np.asarray(terms).reshape(-1)
    return math.fsum(itertools.chain.from_iterable(
        flat[i:i + chunk].astype(np.float64).tolist() for i in range(0, flat.size, chunk)))


# ---- fresh interpreters ------------------------------------------------------------------------
def python_env(**overrides):
    """This process's environment with ``overrides``; FASTLOSS_ISA is dropped unless given."""
    env = {**os.environ}
    env.pop("FASTLOSS_ISA", None)
    env.update(overrides)
    return env


def run_python(code, env, *args, timeout=300):
    """Runs ``code`` in a new interpreter (OpenMP reads OMP_NUM_THREADS once, at start-up);
    returns its stdout, failing the test on a non-zero exit or a fatal error."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0 and "Fatal Python error" not in proc.stderr, (
        f"subprocess failed with status {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def run_python_json(code, env, *args, timeout=300):
    """``run_python``, with the last line of stdout decoded as JSON."""
    return json.loads(run_python(code, env, *args, timeout=timeout).strip().splitlines()[-1])


def run_python_json_in_build(code, isa, *args, timeout=300):
    """``run_python_json`` in a fresh interpreter on the FASTLOSS_ISA=``isa`` build; skips the
    test where this CPU cannot run that build (the baseline runs everywhere)."""
    import pytest
    out = run_python_json(code, python_env(FASTLOSS_ISA=isa), *args, timeout=timeout)
    if out["isa"] != isa:
        assert isa != "baseline", out["isa"]
        pytest.skip(f"this CPU does not run the {isa} build (got {out['isa']})")
    return out


def import_cupy_or_skip():
    """Like pytest.importorskip("cupy"), but a CuPy that is installed and fails to import (a
    broken CUDA install raises ImportError, not ModuleNotFoundError) is a skip too."""
    import pytest
    try:
        import cupy
    except ImportError as error:
        if os.environ.get("FASTLOSS_TEST_REQUIRE_NVRTC") == "1":  # CI: see tests/test_cuda.py
            pytest.fail(f"FASTLOSS_TEST_REQUIRE_NVRTC=1 but cupy is not importable ({error})")
        pytest.skip(f"cupy is not importable ({type(error).__name__}: {error})")
    return cupy


def loss_case(op_name, shape, dtype, reduction, wkind, pkind, soft=None):
    """A pytest.param of one loss case, named op-dtype-reduction-shape-w<kind>-pw<kind>[-soft];
    ``soft`` is passed on as a last value when given."""
    import pytest
    values = (op_name, shape, dtype, reduction, wkind, pkind) + (() if soft is None else (soft,))
    label = (f"{op_name}-{np.dtype(dtype).name}-{reduction}-{'x'.join(map(str, shape))}"
             f"-w{wkind}-pw{pkind}{'-soft' if soft else ''}")
    return pytest.param(*values, id=label)


# ---- multi-class: cross-entropy and the softmax family --------------------------------------
def cross_entropy_grad_term_size(x, target, weight=None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.0, grad_output=1.0):
    """Per element, the size of the two terms of a cross-entropy gradient, |scale| (|A| p_c +
    |a_c|) (A p_c - a_c being the gradient, a_c the class's coefficient, A their row sum, scale
    the row's upstream gradient [/ the mean's divisor]): where the two cancel (p_c near a_c / A)
    the kernel's rounding is a few ulps of this size, not of the result."""
    with np.errstate(all="ignore"):
        logp, a, divisor = R._class_coefficients(x, target, weight, ignore_index,
                                                 label_smoothing)
        p = np.exp(logp)
        scale = np.asarray(grad_output, dtype=np.float64)
        if reduction == "mean":
            scale = scale / R.exact_sum(divisor)
        scale = np.broadcast_to(scale, logp.shape[:-1])[..., None]
        size = np.abs(scale) * (np.abs(np.sum(a, axis=-1, keepdims=True)) * p + np.abs(a))
    size = np.moveaxis(np.where(np.isfinite(size), size, 0.0), -1, 1)
    return size[0] if np.ndim(x) == 1 else size


def check_cross_entropy_loss(loss, x, target, weight=None, ignore_index=-100, reduction="mean",
                             label_smoothing=0.0, what="cross_entropy loss"):
    """A cross-entropy loss against the reference: reduced within 1 float32 ulp (float64: rtol
    1e-13) of the exact value, for any number of rows (each row's loss is exact to ~1e-15 in
    the kernels, fastloss/softmax.h); 'none' per element."""
    dtype = np.asarray(x).dtype
    with np.errstate(all="ignore"):
        ref = R.cross_entropy(x, target, weight, ignore_index, reduction, label_smoothing)
    if reduction == "none":
        if np.ndim(ref) == 0:
            assert isinstance(loss, np.ndarray) and loss.shape == (), (what, type(loss))
        assert_elementwise_close(np.asarray(loss) if np.ndim(ref) == 0 else loss,
                                 np.asarray(ref), dtype, what=what)
    else:
        assert_reduction_close(loss, ref, dtype, what=what, max_ulps=1)


def check_cross_entropy_grad(grad, x, target, weight=None, ignore_index=-100, reduction="mean",
                             label_smoothing=0.0, grad_output=1.0, what="cross_entropy grad"):
    """A cross-entropy gradient against the reference, element by element: RTOL, plus ATOL
    times ``cross_entropy_grad_term_size`` (where the two terms cancel)."""
    dtype = np.asarray(x).dtype
    with np.errstate(all="ignore"):
        ref = R.cross_entropy_grad(x, target, weight, ignore_index, reduction, label_smoothing,
                                   grad_output)
    atol = ATOL[dtype] * cross_entropy_grad_term_size(x, target, weight, ignore_index,
                                                       reduction, label_smoothing, grad_output)
    assert_elementwise_close(grad, ref, dtype, atol=atol, what=what)


def softmax_backward_term_size(grad_output, output, dim=-1, log=False):
    """Per element, the size of the terms of softmax's (log_softmax's) backward pass, whose
    difference cancels: |y| (|g| + |sum g y|) (|g| + exp(y) |sum g|)."""
    g = np.asarray(grad_output, dtype=np.float64)
    y = np.asarray(output, dtype=np.float64)
    axis = dim if y.ndim else None
    with np.errstate(all="ignore"):
        if log:
            size = np.abs(g) + np.exp(y) * np.abs(np.sum(g, axis=axis, keepdims=True))
        else:
            size = np.abs(y) * (np.abs(g) + np.abs(np.sum(g * y, axis=axis, keepdims=True)))
    return np.where(np.isfinite(size), size, 0.0)


def make_logits_and_target(shape, kind, dtype, rng, ignore_index=-100, scale=3.0):
    """Logits of ``shape`` (classes along dimension 1, 0 for (C,)) and a target: 'int64' or
    'int32' class indices (with one ignored row, when there are two or more), 'probabilities'
    (rows summing to 1)."""
    x = np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)
    axis = 1 if len(shape) >= 2 else 0
    classes = shape[axis]
    row_shape = shape[:1] + shape[2:] if len(shape) >= 2 else ()
    if kind == "probabilities":
        t = rng.random(shape)
        with np.errstate(invalid="ignore"):
            t = t / np.sum(t, axis=axis, keepdims=True)
        return x, np.asarray(t, dtype=dtype)
    t = rng.integers(0, max(classes, 1), size=row_shape).astype(kind)
    flat = t.reshape(-1)
    if flat.size >= 2:
        flat[1] = ignore_index
    return x, t


# ---- exact sums, correctly rounded -------------------------------------------------------------
def exact_fraction_sum(terms):
    """The exact sum of finite float64 ``terms`` as a Fraction: each term is M * 2**(e - 53)
    with an integer M (np.frexp), the terms of one exponent summed as Python ints."""
    flat = np.asarray(terms, dtype=np.float64).reshape(-1)
    assert np.isfinite(flat).all(), "exact sums of finite terms only"
    mantissa, exponent = np.frexp(flat)
    integers = (mantissa * 2.0**53).astype(np.int64)
    lowest = int(exponent.min()) - 53 if flat.size else 0
    total = 0
    for e in np.unique(exponent):
        total += sum(integers[exponent == e].tolist()) << (int(e) - 53 - lowest)
    return Fraction(total) * Fraction(2) ** lowest


def correctly_rounded(value, dtype):
    """The Fraction ``value`` rounded to nearest, ties to even, in ``dtype`` (a NumPy scalar).
    float() of a Fraction is correctly rounded to float64; float32 picks the nearest of the
    float32 neighbours of that double (rounding the double again could round twice)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64(float(value))
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess,
                  np.nextafter(guess, np.float32(np.inf))]

    def key(c):
        return (abs(Fraction(float(c)) - value), int(c.view(np.uint32)) & 1)
    return min(candidates, key=key)
