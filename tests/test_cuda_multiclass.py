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
    make_logits_and_target,
    assert_elementwise_close,
)
from fastloss import _codes, _cuda
from fastloss import reference as R
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
    rows = 2 * len(_codes.ROW_OPS) * 2
    cross_entropy = 2 * (3 + len(_codes.PASS_OUTPUTS) * len(_codes.TARGET_KINDS) * 2)
    activations = 2 * len(_codes.ACTIVATIONS)
    assert len(names) == len(set(names)) == rows + cross_entropy + activations
    for dtype_name in ("float32", "float64"):
        for family in _cuda._MULTICLASS_FAMILIES:
            assert set(_cuda._module_names(family, dtype_name)) <= set(names)
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
# (4-12 bytes, at 72 of 255 registers); every other kernel spills nothing.
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
def _calls(fake):
    rng = np.random.default_rng(0)
    x, t = make_logits_and_target((6, 5, 2), "int64", np.float32, rng)
    _, p = make_logits_and_target((6, 5, 2), "probabilities", np.float32, rng)
    w = np.asarray(rng.uniform(0.5, 2, 5), np.float32)
    go = np.ones((6, 2), np.float32)
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
    ]


def test_every_call_works_on_its_inputs_device(fake_cupy):  # noqa: F811
    for call in _calls(fake_cupy):
        fake_cupy.log.clear()
        result = call()
        assert fake_cupy.current == [0]
        assert any(what.startswith("launch") for what, _ in fake_cupy.log)
        assert [entry for entry in fake_cupy.log if entry[1] != 1] == []
        for array in result if isinstance(result, tuple) else (result,):
            assert array.device.id == 1


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
        bad = np.zeros(shape[:1] + shape[2:], np.int64)
        if bad.size:
            bad.reshape(-1)[-1] = classes
            fastloss.cross_entropy(gx, cp.asarray(bad))
        else:
            raise ValueError("class index: nothing to check in an empty target")
