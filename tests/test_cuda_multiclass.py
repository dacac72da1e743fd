"""The CUDA kernels of the multi-class family (cuda/multiclass.cu) and their backend calls.

Without a GPU: the source compiles under NVRTC with the run-time options and every
instantiation the backend asks for, and ptxas reports no (or, for three kernels, a few bytes
of) spills; with a stand-in for CuPy, every call does all of its work on its input's device.
With a GPU (skipped here otherwise): values against fastloss.reference and the bits of
repeated calls.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

import fastloss
from _helpers import (
    assert_same_bits,
    check_cross_entropy_grad,
    check_cross_entropy_loss,
    cross_entropy_grad_term_size,
    make_logits_and_target,
    assert_elementwise_close,
)
from fastloss import _codes, _cuda
from fastloss import reference as R
from test_multiclass_half import TIE_TOLERANCE, assert_correctly_rounded
from test_cuda import _assert_no_contracted_multiply_adds, _ptxas_report
from test_cuda import fake_cupy, nvrtc_or_skip  # noqa: F401  (fixtures)

SOURCE = "multiclass.cu"


def test_sources_and_names():
    source, options, names = _cuda.kernel_sources_and_options(SOURCE)
    assert '#include "fastloss/softmax.h"' in source and '#include "fastloss/activations.h"' in source
    assert options == _cuda.kernel_sources_and_options()[1]  # the same options as losses.cu
    for line in source.splitlines():
        if re.match(r"\s*#\s*include", line):
            assert re.match(r'\s*#\s*include\s+"fastloss/[a-z_]+\.h"', line), line
    # every kernel the backend can launch is among the names the compile and ptxas checks
    # compile: one set per dtype the dispatch lets through (CuPy float16: ROW_HALF_DTYPES)
    launched = ("float32", "float64", *_cuda.ROW_HALF_DTYPES)
    assert launched == ("float32", "float64", "float16")
    rows = len(_codes.ROW_OPS) * 2
    cross_entropy = 3 + len(_codes.PASS_OUTPUTS) * len(_codes.TARGET_KINDS) * 2
    activations = len(_codes.ACTIVATIONS)
    assert len(names) == len(set(names)) == len(launched) * (rows + cross_entropy + activations)
    for dtype_name in launched:
        for family in _cuda._MULTICLASS_FAMILIES:
            assert set(_cuda._module_names(family, dtype_name)) <= set(names), dtype_name
    # the kernels take the header's codes as template arguments
    assert "static_cast<RowOp>(kOp)" in source and "static_cast<TargetKind>(kTargetKind)" in source


def test_compiles_with_nvrtc(nvrtc_or_skip):  # noqa: F811
    source, options, names = _cuda.kernel_sources_and_options(SOURCE)
    binary, kind, lowered = _cuda.nvrtc_compile(source, options, names, 90, kind="ptx",
                                                file_name=SOURCE)
    ptx = binary.decode()
    assert kind == "ptx" and set(lowered) == set(names)
    for name, mangled in lowered.items():
        assert f".entry {mangled}(" in ptx, name
    assert ".ftz." not in ptx
    _assert_no_contracted_multiply_adds(ptx, finishing="finish_pairs")


def test_nvrtc_reports_a_syntax_error(nvrtc_or_skip):  # noqa: F811
    source, options, names = _cuda.kernel_sources_and_options(SOURCE)
    broken = source.replace("namespace gpu {", "namespace gpu { int broken(", 1)
    with pytest.raises(_cuda.CompileError, match="multiclass.cu"):
        _cuda.nvrtc_compile(broken, options, names[:1], 90, kind="ptx", file_name=SOURCE)


# ptxas keeps a few bytes of three ElementwiseAndGrad warp kernels (outputs code 3) on the stack
# (4-12 bytes, at 72 of 255 registers); every other kernel spills nothing, every float16 one
# included (device_half.h's branch-free widening: half.h's branches made four of them spill).
SPILL_ALLOWED = {f"fastloss::gpu::cross_entropy<{t}, 3, {k}, 32>": 16
                 for t in ("float", "double") for k in (0, 1, 2)}


def test_no_kernel_spills(nvrtc_or_skip):  # noqa: F811
    _, _, names = _cuda.kernel_sources_and_options(SOURCE)
    report = _ptxas_report(90, SOURCE)
    for entry, (_, stores, loads) in report.items():
        allowed = SPILL_ALLOWED.get(entry, 0)
        assert stores <= allowed and loads <= allowed, (entry, stores, loads)
    assert set(report) == set(names)


_WIDEN_PROGRAM = r"""
#include <cstdio>
#include "fastloss/device_half.h"
int main() {
  for (unsigned h = 0; h < 65536; ++h) {
    const unsigned long long bits[2] = {
        fastloss::lanes::to_bits(fastloss::gpu::widen_float16(h)),
        fastloss::lanes::to_bits(fastloss::half::float16_to_double(h))};
    if (std::fwrite(bits, sizeof bits, 1, stdout) != 1) return 1;
  }
  return 0;
}
"""


def test_float16_widening_of_the_cuda_kernels_on_every_bit_pattern(tmp_path):
    """fastloss/device_half.h's widen_float16, which the CUDA kernels' Float16 loads with,
    compiled for the host (it is FASTLOSS_HD; its operations are IEEE doubles and integers,
    the same on either side): the bits half.h's float16_to_double gives on the CPU for every
    one of the 65536 patterns (NaN payloads and signs included), and NumPy's value for every
    non-NaN."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    source, binary = tmp_path / "widen.cpp", tmp_path / "widen"
    source.write_text(_WIDEN_PROGRAM)
    build = subprocess.run([compiler, "-std=c++17", "-O2", f"-I{_cuda.include_dir()}",
                            str(source), "-o", str(binary)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True)
    assert run.returncode == 0
    widened, cpu = np.frombuffer(run.stdout, np.uint64).reshape(-1, 2).T
    assert widened.size == 1 << 16
    assert np.array_equal(widened, cpu)
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    values = patterns.astype(np.float64)
    finite_or_inf = ~np.isnan(values)
    assert np.array_equal(widened[finite_or_inf], values[finite_or_inf].view(np.uint64))
    # and those that are NaN in float16 are NaN in double with the sign and payload moved up
    bits = patterns.view(np.uint16).astype(np.uint64)
    nan = ~finite_or_inf
    assert np.array_equal(widened[nan], ((bits[nan] & 0x8000) << 48) | (0x7ff << 52)
                          | ((bits[nan] & 0x3ff) << 42))


def test_grid_depends_on_the_row_count_only():
    assert _cuda._row_grid(1, 32) == 1 and _cuda._row_grid(0, 32) == 1
    assert _cuda._row_grid(10**9, 32) == _cuda.MAX_BLOCKS
    assert _cuda._row_grid(64, _cuda.THREADS) == 64
    assert _cuda._group(_cuda.WARP_ROWS_UP_TO) == 32
    assert _cuda._group(_cuda.WARP_ROWS_UP_TO + 1) == _cuda.THREADS


# ---- device placement, with a stand-in for CuPy (no GPU needed) --------------------------------
def _calls(fake, dtype=np.float32):
    rng = np.random.default_rng(0)
    x, t = make_logits_and_target((6, 5, 2), "int64", dtype, rng)
    _, p = make_logits_and_target((6, 5, 2), "probabilities", dtype, rng)
    w = np.asarray(rng.uniform(0.5, 2, 5), dtype)
    go = np.ones((6, 2), dtype)
    with fake.cuda.Device(1):
        gx, gt, gp, gw, ggo = (fake.asarray(a) for a in (x, t, p, w, go))
    return [
        lambda: fastloss.softmax(gx, 1), lambda: fastloss.log_softmax(gx, -1),
        lambda: fastloss.softmax_backward(gx, gp, 1), lambda: fastloss.log_softmax_backward(gx, gp),
        lambda: fastloss.cross_entropy(gx, gt), lambda: fastloss.cross_entropy(gx, gp, weight=gw),
        lambda: fastloss.cross_entropy_and_grad(gx, gt.astype(np.int32), weight=gw,
                                                label_smoothing=0.1, reduction="sum"),
        lambda: fastloss.cross_entropy_and_grad(gx, gt, reduction="none", grad_output=ggo),
        lambda: fastloss.cross_entropy_grad(gx, gp, reduction="mean"),
        lambda: fastloss.tanh(gx), lambda: fastloss.relu_backward(gx, gp),
        lambda: fastloss.relu(gx), lambda: fastloss.tanh_backward(gx, gp),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=lambda d: np.dtype(d).name)
def test_every_call_works_on_its_inputs_device(fake_cupy, dtype):  # noqa: F811
    for call in _calls(fake_cupy, dtype):
        fake_cupy.log.clear()
        result = call()
        assert fake_cupy.current == [0]
        assert any(what.startswith("launch") for what, _ in fake_cupy.log)
        assert [entry for entry in fake_cupy.log if entry[1] != 1] == []
        for array in result if isinstance(result, tuple) else (result,):
            assert array.device.id == 1


def test_cupy_float16_calls_launch_the_float16_kernels(fake_cupy):  # noqa: F811
    """Every row function, cross_entropy, tanh and relu of CuPy float16 arrays launches the
    Float16 instantiations (cuda/multiclass.cu), handing them the float16 arrays themselves
    (besides float64 sums and integer class indices): no float32 copy anywhere, and float16
    results."""
    for call in _calls(fake_cupy, np.float16):
        fake_cupy.launches.clear()
        result = call()
        assert fake_cupy.launches
        for name, dtypes in fake_cupy.launches:
            assert name.startswith(("fastloss::gpu::row_pass<fastloss::gpu::Float16, ",
                                    "fastloss::gpu::cross_entropy<fastloss::gpu::Float16, ",
                                    "fastloss::gpu::check_targets<fastloss::gpu::Float16, ",
                                    "fastloss::gpu::finish_pairs<fastloss::gpu::Float16>",
                                    "fastloss::gpu::activation<fastloss::gpu::Float16, ")), name
            assert "float32" not in dtypes, (name, dtypes)
            if not name.startswith(("fastloss::gpu::check_targets", "fastloss::gpu::finish")):
                assert "float16" in dtypes, (name, dtypes)  # the kernels that read the input
        for array in result if isinstance(result, tuple) else (result,):
            assert array.dtype == np.float16


def test_cuda_argument_errors(fake_cupy):  # noqa: F811
    with fake_cupy.cuda.Device(0):
        x = fake_cupy.asarray(np.zeros((4, 3), np.float32))
        t = fake_cupy.asarray(np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="weight"):
        fastloss.cross_entropy(x, t, weight=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="target"):
        fastloss.cross_entropy(x, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="contiguous"):
        fastloss.softmax(fake_cupy.asarray(np.zeros((4, 6), np.float32))[:, ::2])


# ---- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7, 3), (300, 1000), (3, 5000), (4, 6, 5), (5,), (0, 4)],
                         ids=str)
def test_values_on_the_gpu(cp, shape, dtype):
    rng = np.random.default_rng(3)
    for kind in ("int64", "int32", "probabilities"):
        x, t = make_logits_and_target(shape, kind, dtype, rng)
        classes = shape[1] if len(shape) > 1 else shape[0]
        w = np.asarray(rng.uniform(0.5, 2, classes), dtype)
        for kw in ({}, {"weight": w, "label_smoothing": 0.2}):
            gkw = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            for reduction in ("mean", "sum", "none"):
                loss, grad = fastloss.cross_entropy_and_grad(cp.asarray(x), cp.asarray(t),
                                                             reduction=reduction, **gkw)
                loss = cp.asnumpy(loss)
                check_cross_entropy_loss(loss if reduction == "none" else dtype(loss), x, t,
                                         reduction=reduction, **kw)
                check_cross_entropy_grad(cp.asnumpy(grad), x, t, reduction=reduction, **kw)
    gx = cp.asarray(x)
    for function, reference in ((fastloss.softmax, R.softmax),
                                (fastloss.log_softmax, R.log_softmax),
                                (fastloss.tanh, R.tanh)):
        out = function(gx)
        assert_elementwise_close(cp.asnumpy(out), reference(x), dtype)
        assert_same_bits(cp.asnumpy(function(gx)), cp.asnumpy(out))
    with pytest.raises(ValueError, match="class index"):
        bad = np.zeros(shape[:1] + shape[2:] if len(shape) > 1 else (), np.int64)  # (C,): ()
        if bad.size:
            bad.reshape(-1)[-1] = classes
            fastloss.cross_entropy(gx, cp.asarray(bad))
        else:
            raise ValueError("class index: nothing to check in an empty target")


# ---- float16 on a GPU ----------------------------------------------------------------------------
# The float16 kernels compute as the float32 ones (double math, math::exp) and round each stored
# value once from the double; the CPU's 16-bit rows take float32-grade exps (~1e-10 at most). So a
# GPU result is the reference rounded once, and the CPU's bits, except where the exact value lies
# within the CPU's ~1e-10 of a half-way point (assert_correctly_rounded's TIE_TOLERANCE, 1e-7,
# bounds that with a margin): there the two may be the two neighbours.
FLOAT16 = np.dtype(np.float16)


def _assert_same_half_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == FLOAT16 and got.shape == want.shape, what
    differ = got.view(np.uint16) != want.view(np.uint16)
    if differ.any():
        i = int(np.flatnonzero(differ.reshape(-1))[0])
        raise AssertionError(f"{what}: {int(differ.sum())} of {differ.size} differ, first at "
                             f"flat index {i}: {got.reshape(-1)[i]!r} vs {want.reshape(-1)[i]!r}")


def _assert_cpu_bits_but_near_ties(got, want, exact, scale=None, what="result"):
    """got (the GPU's float16) has want's bits (the CPU's; NaN for NaN), but where the two are
    neighbouring float16s about a half-way point that ``exact`` lies within TIE_TOLERANCE *
    scale (default |exact|) of; a zero's sign must agree."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == FLOAT16, (what, got.dtype, want.dtype)
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    nan = np.isnan(g64)
    assert np.array_equal(nan, np.isnan(w64)), f"{what}: NaN where the other has none"
    differ = (got.view(np.uint16) != want.view(np.uint16)) & ~nan
    if not differ.any():
        return
    exact = np.broadcast_to(np.asarray(exact, np.float64), got.shape)
    size = np.abs(exact) if scale is None else np.broadcast_to(np.asarray(scale, np.float64),
                                                               got.shape)
    with np.errstate(invalid="ignore"):
        adjacent = (np.nextafter(want, got) == got) & (g64 != w64)  # not +0 against -0
        near_tie = np.abs(exact - (g64 + w64) / 2) <= TIE_TOLERANCE * size
    bad = differ & ~(adjacent & near_tie)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} values differ from the "
                             f"CPU's away from a tie, first at flat index {i}: GPU "
                             f"{g64.reshape(-1)[i]!r}, CPU {w64.reshape(-1)[i]!r}, reference "
                             f"{exact.reshape(-1)[i]!r}")


def _check_half(gpu_result, cpu_result, exact, scale=None, what="result", cp=None):
    """The GPU's float16 result against the reference and the CPU's; returned on the host."""
    got = cp.asnumpy(gpu_result)
    assert_correctly_rounded(got, exact, FLOAT16, scale, what)
    _assert_cpu_bits_but_near_ties(got, cpu_result, exact, scale, what)
    return got


# warp rows (up to WARP_ROWS_UP_TO classes), block rows beyond; the CPU's short rows (<= 64)
HALF_CLASS_COUNTS = (1, 3, 10, 64, 65, 300, 1024, 1025, 3000)


@pytest.mark.parametrize("classes", HALF_CLASS_COUNTS)
def test_float16_softmax_family_on_the_gpu(cp, classes):
    rng = np.random.default_rng(classes + 101)
    rows = 37 if classes < 1000 else 6
    x = (rng.standard_normal((rows, classes)) * 3).astype(FLOAT16)
    g = rng.standard_normal((rows, classes)).astype(FLOAT16)
    gx, gg = cp.asarray(x), cp.asarray(g)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    y = _check_half(fastloss.softmax(gx, dim=1), fastloss.softmax(x, dim=1), R.softmax(x, 1),
                    what="softmax", cp=cp)
    exact = R.log_softmax(x, 1)
    ly = _check_half(fastloss.log_softmax(gx, dim=1), fastloss.log_softmax(x, dim=1), exact,
                     np.abs(exact) + np.abs(x64) + 1.0, "log_softmax", cp)
    y64, ly64 = y.astype(np.float64), ly.astype(np.float64)
    size = np.abs(y64) * (np.abs(g64) + np.abs(np.sum(g64 * y64, axis=1, keepdims=True)))
    _check_half(fastloss.softmax_backward(gg, cp.asarray(y), dim=1),
                fastloss.softmax_backward(g, y, dim=1), R.softmax_backward(g, y, 1), size,
                "softmax_backward", cp)
    size = np.abs(g64) + np.exp(ly64) * np.abs(np.sum(g64, axis=1, keepdims=True))
    _check_half(fastloss.log_softmax_backward(gg, cp.asarray(ly), dim=1),
                fastloss.log_softmax_backward(g, ly, dim=1), R.log_softmax_backward(g, ly, 1),
                size, "log_softmax_backward", cp)
    # the same bits again, in place and into out=
    again = cp.asarray(x)
    assert fastloss.softmax(again, dim=1, out=again) is again
    _assert_same_half_bits(cp.asnumpy(again), y, "softmax in place")


def test_float16_softmax_along_a_middle_dimension_on_the_gpu(cp):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 7, 5)) * 3).astype(FLOAT16)
    out = cp.empty(x.shape, dtype=cp.float16)
    assert fastloss.softmax(cp.asarray(x), dim=1, out=out) is out
    _check_half(out, fastloss.softmax(x, dim=1), R.softmax(x, 1), what="softmax(dim=1)", cp=cp)


def test_float16_results_exact_in_double_are_rounded_once_on_the_gpu(cp):
    """softmax_backward of one-class rows, y (g - g y), is exact in double for float16 g and y
    (the CPU test of the same name): the GPU's result must be NumPy's rounding of it bit for
    bit, also at the dozens of points where a rounding through float32 would differ."""
    rng = np.random.default_rng(21)
    g = rng.standard_normal((200000, 1)).astype(FLOAT16)
    y = rng.random((200000, 1)).astype(FLOAT16)
    g64, y64 = g.astype(np.float64), y.astype(np.float64)
    exact = y64 * (g64 - g64 * y64)
    assert np.count_nonzero(exact.astype(np.float32).astype(FLOAT16) != exact.astype(FLOAT16)) >= 8
    got = cp.asnumpy(fastloss.softmax_backward(cp.asarray(g), cp.asarray(y), dim=1))
    assert np.array_equal(got.view(np.uint16), exact.astype(FLOAT16).view(np.uint16))


@pytest.mark.parametrize("classes", (1, 10, 65, 300, 1025))
@pytest.mark.parametrize("kind", ["int64", "int32", "probabilities"])
def test_float16_cross_entropy_on_the_gpu(cp, kind, classes):
    rng = np.random.default_rng(classes * 7 + len(kind) + 1000)
    rows = 41
    x = (rng.standard_normal((rows, classes)) * 3).astype(FLOAT16)
    if kind == "probabilities":
        p = rng.random((rows, classes))
        target = (p / p.sum(axis=1, keepdims=True)).astype(FLOAT16)
    else:
        target = rng.integers(0, classes, rows).astype(kind)
        target[::5] = -100  # ignored rows
    weight = rng.uniform(0.5, 2.0, classes).astype(FLOAT16)
    gx, gt, gw = cp.asarray(x), cp.asarray(target), cp.asarray(weight)
    for kwargs, gkwargs in (({}, {}), ({"weight": weight}, {"weight": gw}),
                            ({"label_smoothing": 0.125}, {"label_smoothing": 0.125})):
        for reduction in ("none", "sum", "mean"):
            what = f"{reduction} {sorted(kwargs)}"
            exact = R.cross_entropy(x, target, reduction=reduction, **kwargs)
            size = np.abs(exact) + (1.0 if reduction == "none" else 0.0)
            loss = fastloss.cross_entropy(gx, gt, reduction=reduction, **gkwargs)
            assert loss.dtype == FLOAT16 and loss.shape == np.shape(exact)
            loss = _check_half(loss, fastloss.cross_entropy(x, target, reduction=reduction,
                                                            **kwargs),
                               exact, size, f"loss {what}", cp)
            both_loss, both_grad = fastloss.cross_entropy_and_grad(gx, gt, reduction=reduction,
                                                                   **gkwargs)
            _assert_same_half_bits(cp.asnumpy(both_loss), loss, f"and_grad loss {what}")
            exact_grad = R.cross_entropy_grad(x, target, reduction=reduction, **kwargs)
            size = cross_entropy_grad_term_size(x, target, reduction=reduction, **kwargs)
            grad = _check_half(both_grad, fastloss.cross_entropy_grad(x, target,
                                                                      reduction=reduction,
                                                                      **kwargs),
                               exact_grad, size, f"grad {what}", cp)
            _assert_same_half_bits(cp.asnumpy(fastloss.cross_entropy_grad(
                gx, gt, reduction=reduction, **gkwargs)), grad, f"grad alone {what}")


def test_float16_cross_entropy_of_spatial_inputs_with_a_grad_output_array_on_the_gpu(cp):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 5, 3, 2)) * 3).astype(FLOAT16)
    target = rng.integers(0, 5, (4, 3, 2))
    grad_output = rng.standard_normal((4, 3, 2)).astype(FLOAT16)
    kwargs = {"reduction": "none", "grad_output": grad_output}
    got = fastloss.cross_entropy_grad(cp.asarray(x), cp.asarray(target), reduction="none",
                                      grad_output=cp.asarray(grad_output))
    _check_half(got, fastloss.cross_entropy_grad(x, target, **kwargs),
                R.cross_entropy_grad(x, target, **kwargs),
                cross_entropy_grad_term_size(x, target, **kwargs), "(N, C, d1, d2) gradient", cp)


def test_float16_cross_entropy_mean_over_many_blocks_on_the_gpu(cp):
    """Rows over many blocks: the double-double sum, its division by the divisor pair and the
    one rounding (round to odd, then to float16) leave the mean the exact one rounded once."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((200003, 10)) * 3).astype(FLOAT16)
    target = rng.integers(0, 10, 200003)
    weight = rng.uniform(0.5, 2.0, 10).astype(FLOAT16)
    for kwargs in ({}, {"weight": weight}):
        gkwargs = {k: cp.asarray(v) for k, v in kwargs.items()}
        mean = fastloss.cross_entropy(cp.asarray(x), cp.asarray(target), **gkwargs)
        assert mean.shape == () and mean.dtype == FLOAT16
        _check_half(mean, fastloss.cross_entropy(x, target, **kwargs),
                    R.cross_entropy(x, target, **kwargs), what=f"mean {sorted(kwargs)}", cp=cp)


def test_float16_tanh_and_relu_of_every_bit_pattern_on_the_gpu(cp):
    """tanh: activations.h's double tanh on both, rounded once; the two doubles are a few
    double ulps apart at most, and no float16 pattern's tanh lies that close to a half-way
    point (the CPU test checks every pattern against NumPy's), so the CPU's bits, NaN for NaN.
    relu and relu_backward pass values through or make them +0: the CPU's bits exactly, a
    NaN's too (quiet, its sign kept: the rounding from double makes it so on both)."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(FLOAT16)
    gx = cp.asarray(x)
    tanh = cp.asnumpy(fastloss.tanh(gx))
    cpu = fastloss.tanh(x)
    assert tanh.dtype == FLOAT16
    assert np.array_equal(np.isnan(tanh), np.isnan(cpu))
    _assert_same_half_bits(np.where(np.isnan(tanh), 0, tanh).astype(FLOAT16),
                           np.where(np.isnan(cpu), 0, cpu).astype(FLOAT16), "tanh")
    assert np.array_equal(cp.asnumpy(fastloss.relu(gx)).view(np.uint16),
                          fastloss.relu(x).view(np.uint16))
    rng = np.random.default_rng(13)
    g = np.resize(rng.standard_normal(16).astype(FLOAT16), x.shape)
    assert np.array_equal(cp.asnumpy(fastloss.relu_backward(cp.asarray(g), gx)).view(np.uint16),
                          fastloss.relu_backward(g, x).view(np.uint16))
    y = fastloss.tanh(rng.standard_normal(40003).astype(FLOAT16))
    g = rng.standard_normal(40003).astype(FLOAT16)
    _assert_same_half_bits(cp.asnumpy(fastloss.tanh_backward(cp.asarray(g), cp.asarray(y))),
                           fastloss.tanh_backward(g, y), "tanh_backward")
