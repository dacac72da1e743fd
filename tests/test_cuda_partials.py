"""The CUDA reductions as double-doubles (cuda/losses.cu, fastloss._cuda.loss_pass and
loss_partial): the same bits as the CPU's reduced losses, and block partials (hi, lo) that
fastloss._dd adds to the whole array's result.

Three parts:
- Compile tests (no GPU; with FASTLOSS_TEST_REQUIRE_NVRTC=1 they fail instead of skipping):
  every run-time loss module compiles under NVRTC, the kernels' signatures are the argument
  lists _cuda.py launches them with, and ptxas (sm_90) reports no spills and at most 64
  registers for the reducing kernels.
- The GPU's order of additions emulated step for step in NumPy (IEEE doubles, no FMA: the
  same roundings as the kernels'), run here: on the same terms it gives the CPU's bits, at
  awkward N and on 2^24 equal terms. This checks the design without a GPU; the GPU tests
  check that the kernels follow it (both words of a partial, bit for bit).
- GPU tests (skipped without CuPy or a device, like tests/test_cuda.py's): reduced losses
  bit-equal to the CPU baseline build's (the build whose per-element terms CUDA reproduces:
  cuda/losses.cu says why) and to the in-process CPU for the squared error, on awkward N and
  on equal terms; partials added by fastloss._dd equal to the whole-array result.
A stand-in for CuPy (tests/_fake_cupy.py) also runs loss_partial's Python path here.
"""

from __future__ import annotations

import math
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from _helpers import (
    OPS,
    OPS_BY_NAME,
    assert_same_bits,
    correctly_rounded,
    exact_fraction_sum,
    make_inputs,
    python_env,
    seed_for,
)
from fastloss import _codes, _cuda, _dd, _dispatch
from test_cuda import _ptxas_report
from test_cuda import fake_cupy, nvrtc_or_skip  # noqa: F401  (fixtures)

AWKWARD_N = (1, 7, 8191, 8193, 10**6 + 3)
EQUAL_TERMS = 2**24
OP_CODES = {"mse": _codes.SQUARED_ERROR, "bce": _codes.BINARY_CROSS_ENTROPY,
            "logits": _codes.BINARY_CROSS_ENTROPY_WITH_LOGITS}
dtype_ids = lambda d: np.dtype(d).name  # noqa: E731


# ==== compile tests: no GPU needed ================================================================

# The Itanium mangling of the parameter lists _cuda.py launches with (T_ is the storage type):
# finish_sum(const double* partials, long long count, long long n, int mean, T* out,
# double* sum_out); loss_pass(long long n, const T* input, target, weight, long long period,
# pos_weight, long long period, T* loss_out, T* grad_out, double grad_scale,
# double* block_sums, int* out_of_range); S<k>_ are back-references to earlier types, whose
# numbers depend on the template arguments.
FINISH_PARAMETERS = r"PKdxxiPT_Pd"
LOSS_PASS_PARAMETERS = r"xPKT_S\d+_S\d+_xS\d+_xPS\d+_S\d+_dPdPi"


@pytest.mark.parametrize("dtype_name", ("float32", "float64", "float16"))
@pytest.mark.parametrize("op", _codes.LOSS_OPS)
def test_every_loss_module_compiles_under_nvrtc(nvrtc_or_skip, op, dtype_name):  # noqa: F811
    """Each run-time module (one per op and dtype: every outputs code, weighted or not, and
    finish_sum) compiles as the run-time path compiles it, and its kernels take the arguments
    _cuda.py passes (the mangled parameter lists)."""
    source, options, _ = _cuda.kernel_sources_and_options()
    names = _cuda._module_names(f"loss{op}", dtype_name)
    assert len(names) == 2 * len(_codes.PASS_OUTPUTS) + 1
    binary, kind, lowered = _cuda.nvrtc_compile(source, options, names, 90, kind="ptx")
    ptx = binary.decode()
    for name, mangled in lowered.items():
        assert f".entry {mangled}(" in ptx, name
        wanted = FINISH_PARAMETERS if "finish_sum" in name else LOSS_PASS_PARAMETERS
        assert re.search(f"EEv{wanted}$", mangled), (name, mangled)


def _reduces(name):
    match = re.fullmatch(r"fastloss::gpu::loss_pass<[^,]+, \d, (\d), \w+>", name)
    return "finish_sum" in name or (match is not None and int(match.group(1)) in (
        _codes.SUM, _codes.SUM_AND_GRAD))


def test_reducing_kernels_do_not_spill(nvrtc_or_skip):  # noqa: F811
    """The double-double accumulators (two doubles a thread, both words through the shuffles)
    fit: ptxas for sm_90 reports no spills and at most 64 registers (4 resident blocks of 256
    threads per SM) for finish_sum and every Sum/SumAndGrad loss pass (bench/NOTES.md has the
    figures; tests/test_cuda.py checks every kernel's spills and grid depth)."""
    report = _ptxas_report(90)
    reducing = {name: figures for name, figures in report.items() if _reduces(name)}
    assert len(reducing) == 3 * (3 * 2 * 2 + 1)
    for name, (registers, spill_stores, spill_loads) in sorted(reducing.items()):
        print(f"{registers:3d} registers, spills {spill_stores}/{spill_loads}: {name}")
        assert spill_stores == spill_loads == 0, f"{name} spills ({registers} registers)"
        assert registers <= 64, f"{name}: {registers} registers"


# ==== the GPU's order, emulated (no GPU needed) =================================================
# NumPy's float64 +, - are IEEE operations rounded once, with no contraction: the same roundings
# as the kernels' (compiled with -fmad=false). Each function is the one of cuda/losses.cu or
# fastloss/double_double.h of the same name, over arrays of threads.

def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _add_term(hi, lo, term):
    s, e = _two_sum(hi, term)
    return s, lo + e


def _accumulate(xh, xl, yh, yl):
    s, e = _two_sum(xh, yh)
    return s, (xl + yl) + e


def _warp_tree(hi, lo, lanes):
    """warp_tree<lanes> over the last axis (32 lanes): lane l adds lane l + offset, or its own
    pair where that is past the warp (__shfl_down_sync)."""
    for offset in (16, 8, 4, 2, 1):
        if offset >= lanes:
            continue
        other_hi, other_lo = hi.copy(), lo.copy()
        other_hi[..., :32 - offset] = hi[..., offset:]
        other_lo[..., :32 - offset] = lo[..., offset:]
        hi, lo = _accumulate(hi, lo, other_hi, other_lo)
    return hi, lo


def _block_tree(hi, lo):
    """block_tree over the last axis (the block's threads): thread 0's (hi, lo)."""
    warps = _cuda.THREADS // 32
    hi, lo = _warp_tree(hi.reshape(*hi.shape[:-1], warps, 32),
                        lo.reshape(*lo.shape[:-1], warps, 32), 32)
    sums_hi = np.zeros(hi.shape[:-2] + (32,))
    sums_lo = np.zeros(hi.shape[:-2] + (32,))
    sums_hi[..., :warps] = hi[..., 0]
    sums_lo[..., :warps] = lo[..., 0]
    hi, lo = _warp_tree(sums_hi, sums_lo, warps)
    return hi[..., 0], lo[..., 0]


def emulated_block_partials(terms, dtype_name):
    """The loss pass's block partials (hi, lo) for these per-element double terms: thread t
    of T adds the elements of groups t, t + T, ... in order (dd::add_term), then block_tree."""
    terms = np.asarray(terms, dtype=np.float64).reshape(-1)
    n = terms.size
    width = _cuda._GROUP_ELEMENTS[dtype_name]
    groups = -(-n // width)
    blocks = _cuda._grid(n, dtype_name)
    threads = blocks * _cuda.THREADS
    hi, lo = np.zeros(threads), np.zeros(threads)
    thread = np.arange(threads, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        for first in range(0, groups, threads):
            for k in range(width):
                i = (thread + first) * width + k
                inside = i < n
                new_hi, new_lo = _add_term(hi, lo, terms[np.minimum(i, n - 1)])
                hi, lo = np.where(inside, new_hi, hi), np.where(inside, new_lo, lo)
        return _block_tree(hi.reshape(blocks, _cuda.THREADS), lo.reshape(blocks, _cuda.THREADS))


def emulated_total(block_hi, block_lo):
    """finish_sum's normalized total (hi, lo) of the block partials, as Python floats."""
    count, threads, batch = block_hi.size, _cuda.THREADS, 8
    hi, lo = np.zeros(threads), np.zeros(threads)
    thread = np.arange(threads, dtype=np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        for base in range(0, count, batch * threads):
            active = thread + base < count
            for k in range(batch):
                i = thread + base + k * threads
                inside = i < count
                other_hi = np.where(inside, block_hi[np.minimum(i, count - 1)], 0.0)
                other_lo = np.where(inside, block_lo[np.minimum(i, count - 1)], 0.0)
                new_hi, new_lo = _accumulate(hi, lo, other_hi, other_lo)
                hi, lo = np.where(active, new_hi, hi), np.where(active, new_lo, lo)
        hi, lo = _block_tree(hi, lo)
    return _dd.normalize(float(hi), float(lo))


def stored(hi, lo, dtype):
    """The total rounded once to ``dtype`` as finish_sum (and the CPU module) round it."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64(hi)
    return dtype.type(_dd.round_to_odd(hi, lo))  # NumPy's double -> float32/16: rounded once


def emulated_loss(terms, dtype, reduction):
    """The reduced loss the kernels compute from these per-element double terms."""
    hi, lo = emulated_total(*emulated_block_partials(terms, np.dtype(dtype).name))
    if reduction == "mean":
        hi, lo = _dd.divide(hi, lo, np.asarray(terms).size)
    return stored(hi, lo, dtype)


def _mse_terms(x, y, weight=None):
    """The squared error's double terms, as every build computes them: (x - y)^2 [* w]."""
    d = x.astype(np.float64) - y.astype(np.float64)
    terms = d * d
    return terms if weight is None else terms * np.broadcast_to(weight, x.shape).astype(np.float64)


def _case_inputs(op_name, n, dtype, tag):
    rng = np.random.default_rng(seed_for("cuda-partials", tag, op_name, n, np.dtype(dtype).name))
    return make_inputs(op_name, (n,), dtype, rng, soft=True)


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=dtype_ids)
@pytest.mark.parametrize("n", AWKWARD_N)
def test_emulated_gpu_order_gives_the_cpu_bits(dtype, n):
    """The squared error's terms (which NumPy reproduces exactly) added in the GPU's order give
    the CPU's reduced losses bit for bit, and the exact sum (mean) correctly rounded."""
    x, y = _case_inputs("mse", n, dtype, "emulated")
    terms = _mse_terms(x, y)
    exact = exact_fraction_sum(terms)
    for reduction, value in (("sum", exact), ("mean", exact / n)):
        got = emulated_loss(terms, dtype, reduction)
        assert_same_bits(got, fastloss.mse_loss(x, y, reduction=reduction), what=reduction)
        assert_same_bits(got, correctly_rounded(value, dtype), what=f"exact {reduction}")


@pytest.mark.parametrize("op_name", ("bce", "logits"))
@pytest.mark.parametrize("n", (8193, 10**6 + 3))
def test_emulated_gpu_order_gives_the_cpu_bits_cross_entropy(op_name, n):
    """float64 cross-entropy terms (the CPU's own, from reduction='none', weighted) added in the
    GPU's order give that CPU build's reduced losses bit for bit."""
    op = OPS_BY_NAME[op_name]
    x, y = _case_inputs(op_name, n, np.float64, "emulated-ce")
    w = np.random.default_rng(n).uniform(0.5, 2.0, n)
    terms = op.call_loss(x, y, w, None, "none")
    for reduction in ("sum", "mean"):
        assert_same_bits(emulated_loss(terms, np.float64, reduction),
                         op.call_loss(x, y, w, None, reduction), what=reduction)


def _equal_pair(op_name, dtype):
    """One (input, target) pair for the equal-terms tests: its term is not a short binary
    fraction, so 2^24 copies exercise every lo word."""
    value = {"mse": (0.1, 0.7), "bce": (0.3, 0.9), "logits": (1.7, 0.25)}[op_name]
    return tuple(np.full(EQUAL_TERMS, v, dtype=dtype) for v in value)


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=dtype_ids)
def test_emulated_equal_terms(dtype):
    """2^24 copies of one squared error t: the GPU's order gives the CPU's bits, the sum
    2^24 t and the mean t, each rounded once."""
    x, y = _equal_pair("mse", dtype)
    terms = _mse_terms(x[:1], y[:1])
    t = float(terms[0])
    terms = np.broadcast_to(terms, (EQUAL_TERMS,))
    for reduction, value in (("sum", t * EQUAL_TERMS), ("mean", t)):
        got = emulated_loss(terms, dtype, reduction)
        assert_same_bits(got, fastloss.mse_loss(x, y, reduction=reduction), what=reduction)
        assert_same_bits(got, np.dtype(dtype).type(value), what=f"exact {reduction}")


# ==== loss_partial's Python path, with a stand-in for CuPy (no GPU needed) ======================

@pytest.mark.parametrize("want_grad", (False, True))
@pytest.mark.parametrize("op_name", ("mse", "bce", "logits"))
def test_loss_partial_runs_on_the_inputs_device(fake_cupy, op_name, want_grad):  # noqa: F811
    """_dispatch.loss_partial takes the CUDA backend: the pass and finish_sum launch on the
    input's device (GPU 1 while GPU 0 is current), the pair comes back as Python floats (the
    stand-in's kernels do nothing: the zeros the total starts as), the gradient on GPU 1."""
    x, y = make_inputs(op_name, (6, 7), np.float32, np.random.default_rng(5), soft=True)
    with fake_cupy.cuda.Device(1):
        gx, gy, gw = fake_cupy.asarray(x), fake_cupy.asarray(y), fake_cupy.asarray(x[0])
    fake_cupy.log.clear()
    result = _dispatch.loss_partial(OP_CODES[op_name], want_grad, gx, gy, gw, None, 0.25)
    launches = [what for what, _ in fake_cupy.log if what.startswith("launch")]
    outputs = _codes.SUM_AND_GRAD if want_grad else _codes.SUM
    assert launches == [f"launch {_cuda._loss_pass_name('float32', OP_CODES[op_name], outputs, True)}",
                        "launch fastloss::gpu::finish_sum<float>"]
    assert all(device == 1 for _, device in fake_cupy.log)
    assert fake_cupy.current == [0]
    assert len(result) == (3 if want_grad else 2)
    assert all(type(v) is float for v in result[:2]) and result[:2] == (0.0, 0.0)
    if want_grad:
        assert result[2].shape == x.shape and result[2].device.id == 1


def test_loss_partial_takes_sums_only(fake_cupy):  # noqa: F811
    gx = fake_cupy.asarray(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="SUM or SUM_AND_GRAD"):
        _cuda.loss_partial(_codes.SQUARED_ERROR, _codes.ELEMENTWISE, gx, gx, None, None, 1.0)


# ==== GPU tests ==================================================================================
# (the `cp` fixture, in conftest.py, skips them without CuPy or a CUDA device)

_BASELINE_SCRIPT = r"""
import pickle, sys
import fastloss, fastloss._cpu
assert fastloss._cpu.build_info()["isa"] == "baseline", fastloss._cpu.build_info()
import numpy as np
def array(a):  # ("full", size, value, dtype name): an array of equal values, not pickled
    return np.full(a[1], a[2], dtype=a[3]) if isinstance(a, tuple) and a[:1] == ("full",) else a
with open(sys.argv[1], "rb") as f:
    calls = pickle.load(f)
results = [getattr(fastloss, name)(*map(array, args), **kwargs) for name, args, kwargs in calls]
with open(sys.argv[2], "wb") as f:
    pickle.dump(results, f)
"""


def _portable(a):
    """``a`` for the baseline's calls: a large array of one value as ("full", size, value,
    dtype name), which the script rebuilds (2^24 equal terms would pickle to 128 MB each)."""
    if a.size >= EQUAL_TERMS and (a == a.flat[0]).all():
        return ("full", a.size, float(a.flat[0]), a.dtype.name)
    return a


def _cpu_baseline(calls, tmp_path):
    """Results of ``calls`` [(fastloss function name, args, kwargs)] computed by the CPU's
    portable build (FASTLOSS_ISA=baseline: SSE2, no FMA, whose per-element terms CUDA
    reproduces) in a fresh interpreter (the build is chosen once per process)."""
    source, target = tmp_path / "calls.pkl", tmp_path / "results.pkl"
    with open(source, "wb") as f:
        pickle.dump(calls, f)
    result = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, str(source), str(target)],
                            env=python_env(FASTLOSS_ISA="baseline"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(target, "rb") as f:
        return pickle.load(f)


def _same_bits_or_both_nan(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    if np.isnan(want) and np.isnan(got) and got.dtype == want.dtype:
        return  # a NaN's sign and payload are not portable
    assert_same_bits(got[()], want[()], what=what)


def _loss_calls():
    """(what, op, x, y, kwargs) of every reduced-loss comparison: each op, float32 and float64,
    the awkward sizes, unweighted and (at 8193) weighted, and 2^24 equal terms."""
    cases = []
    for op in OPS:
        for dtype in (np.float32, np.float64):
            for n in AWKWARD_N:
                x, y = _case_inputs(op.name, n, dtype, "gpu")
                cases.append((f"{op.name} {np.dtype(dtype).name} n={n}", op, x, y, {}))
            x, y = _case_inputs(op.name, 8193, dtype, "gpu-weighted")
            rng = np.random.default_rng(seed_for("gpu-weighted", op.name))
            kw = {"weight": np.asarray(rng.uniform(0.5, 2.0, 8193), dtype=dtype)}
            if op.has_pos_weight:
                kw["pos_weight"] = np.asarray(rng.uniform(0.5, 2.0, 1), dtype=dtype)
            cases.append((f"{op.name} {np.dtype(dtype).name} weighted", op, x, y, kw))
            x, y = _equal_pair(op.name, dtype)
            cases.append((f"{op.name} {np.dtype(dtype).name} 2^24 equal terms", op, x, y, {}))
    return cases


def test_reduced_losses_have_the_cpu_bits(cp, tmp_path):
    """Every reduced loss ('sum', 'mean') and the loss of *_and_grad: the CPU baseline build's
    bits; the squared error's also the in-process CPU's (its terms are the same bits in every
    build). The float16 mean of the squared error too (CuPy's one 16-bit dtype)."""
    calls, gpu, in_process = [], [], []
    for what, op, x, y, kw in _loss_calls():
        gkw = {k: cp.asarray(v) for k, v in kw.items()}
        for reduction in ("sum", "mean"):
            calls.append((op.loss.__name__, (_portable(x), _portable(y)),
                          dict(kw, reduction=reduction)))
            gpu.append((f"{what} {reduction}", op.loss(cp.asarray(x), cp.asarray(y),
                                                       reduction=reduction, **gkw)))
            in_process.append(op.loss(x, y, reduction=reduction, **kw) if op.name == "mse"
                              else None)
        calls.append((op.and_grad.__name__, (_portable(x), _portable(y)),
                      dict(kw, reduction="mean")))
        gpu.append((f"{what} and_grad", op.and_grad(cp.asarray(x), cp.asarray(y),
                                                    reduction="mean", **gkw)[0]))
        in_process.append(None)
    x16, y16 = (a.astype(np.float16) for a in _case_inputs("mse", 10**6 + 3, np.float32, "f16"))
    calls.append(("mse_loss", (x16, y16), {}))
    gpu.append(("mse float16 mean", fastloss.mse_loss(cp.asarray(x16), cp.asarray(y16))))
    in_process.append(fastloss.mse_loss(x16, y16))
    cpu = _cpu_baseline(calls, tmp_path)
    for (what, got), want, also in zip(gpu, cpu, in_process):
        if isinstance(want, tuple):
            want = want[0]
        got = cp.asnumpy(got)[()]
        _same_bits_or_both_nan(got, want, what)
        if also is not None:
            _same_bits_or_both_nan(got, also, what + " (in-process CPU)")


@pytest.mark.parametrize("n", AWKWARD_N + (EQUAL_TERMS,))
def test_kernels_follow_the_emulated_order(cp, n):
    """The GPU's partial of the whole array (loss_partial: both words) and its reduced losses
    are the emulation's bits, on float64 terms the GPU itself computed (reduction='none') and
    on the squared error's float32 terms (NumPy's)."""
    cases = [(op, np.float64) for op in OPS] + [(OPS_BY_NAME["mse"], np.float32)]
    for op, dtype in cases:
        x, y = _equal_pair(op.name, dtype) if n == EQUAL_TERMS else _case_inputs(op.name, n, dtype, "order")
        gx, gy = cp.asarray(x), cp.asarray(y)
        if dtype == np.float64:
            terms = cp.asnumpy(op.call_loss(gx, gy, None, None, "none"))
        else:
            terms = _mse_terms(x, y)
        blocks = emulated_block_partials(terms, np.dtype(dtype).name)
        want = emulated_total(*blocks)
        with gx.device:
            got = _dispatch.loss_partial(OP_CODES[op.name], False, gx, gy, None, None, 1.0)
        what = f"{op.name} {np.dtype(dtype).name} n={n}"
        assert_same_bits(np.float64(got[0]), np.float64(want[0]), what=what + " hi")
        assert_same_bits(np.float64(got[1]), np.float64(want[1]), what=what + " lo")
        for reduction in ("sum", "mean"):
            assert_same_bits(cp.asnumpy(op.call_loss(gx, gy, None, None, reduction))[()],
                             emulated_loss(terms, dtype, reduction), what=f"{what} {reduction}")


def _blocks(n):
    """Awkward block boundaries of [0, n): a 1-element block, odd sizes, one across 8192."""
    cuts = sorted({0, 1, 8, 8191, 8192 + 977, n // 3, n // 2 + 5, n})
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if 0 <= a < b <= n]


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=dtype_ids)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_partials_added_by_dd_give_the_whole_array_result(cp, op, dtype):
    """Blocks of a CuPy array, each through loss_partial, added by fastloss._dd.total and
    rounded once as fastloss._dask rounds them: the whole array's reduced loss, bit for bit,
    'sum' and 'mean'; the SUM_AND_GRAD partials' gradients are the whole gradient's blocks
    (grad_scale = grad_output / N, as _dask passes it for 'mean')."""
    n = 10**5 + 7
    x, y = _case_inputs(op.name, n, dtype, "partials")
    w = np.asarray(np.random.default_rng(n).uniform(0.5, 2.0, n), dtype=dtype)
    gx, gy, gw = cp.asarray(x), cp.asarray(y), cp.asarray(w)
    code = OP_CODES[op.name]
    partials, grads = [], []
    with gx.device:
        for a, b in _blocks(n):
            hi, lo, grad = _dispatch.loss_partial(code, True, gx[a:b], gy[a:b], gw[a:b], None,
                                                  0.5 / n)
            assert type(hi) is float and type(lo) is float
            assert _dd.normalize(hi, lo) == (hi, lo)  # normalized, as the CPU's
            assert (hi, lo) == _dispatch.loss_partial(code, False, gx[a:b], gy[a:b], gw[a:b],
                                                      None, 1.0)
            partials.append((hi, lo))
            grads.append(cp.asnumpy(grad))
    hi, lo = _dd.total(partials)
    what = f"{op.name} {np.dtype(dtype).name}"
    assert_same_bits(_dd.rounded(hi, lo, dtype),
                     cp.asnumpy(op.call_loss(gx, gy, gw, None, "sum"))[()], what=what + " sum")
    assert_same_bits(_dd.rounded(*_dd.divide(hi, lo, n), dtype),
                     cp.asnumpy(op.call_loss(gx, gy, gw, None, "mean"))[()], what=what + " mean")
    whole = cp.asnumpy(op.call_grad(gx, gy, gw, None, "mean", 0.5))
    assert_same_bits(np.concatenate(grads), whole, what=what + " gradient")
    if op.name == "mse":  # the in-process CPU's partials add to the same total
        cpu = [fastloss._cpu.loss_partial(code, _codes.SUM, x[a:b], y[a:b], w[a:b], None, 1.0,
                                          None) for a, b in _blocks(n)]
        assert _dd.total(cpu)[0] == hi


def test_loss_partial_edge_cases(cp):
    empty = cp.zeros(0, dtype=cp.float32)
    with empty.device:
        assert _dispatch.loss_partial(_codes.SQUARED_ERROR, False, empty, empty, None, None,
                                      1.0) == (0.0, 0.0)
        bad = cp.asarray(np.array([0.5, 1.5], np.float32))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            _dispatch.loss_partial(_codes.BINARY_CROSS_ENTROPY, False, bad, bad * 0, None, None,
                                   1.0)
        big = cp.full(4, 1e300, dtype=cp.float64)  # an overflowing sum: (inf, 0), as the CPU's
        hi, lo = _dispatch.loss_partial(_codes.SQUARED_ERROR, False, big, -big, None, None, 1.0)
        assert (hi, lo) == (math.inf, 0.0)


def test_dask_arrays_of_cupy_blocks(cp):
    """Reduced losses of a Dask array of CuPy blocks equal the in-memory CuPy result, bit for
    bit; and cross_entropy's (the blocks' (sum, divisor) pairs from cuda/multiclass.cu)."""
    da = pytest.importorskip("dask.array")
    x, y = _case_inputs("logits", 30011, np.float32, "dask")
    gx, gy = cp.asarray(x), cp.asarray(y)
    dx, dy = da.from_array(gx, chunks=7001), da.from_array(gy, chunks=7001)
    lazy = fastloss.binary_cross_entropy_with_logits(dx, dy, reduction="sum")
    rng = np.random.default_rng(5)
    logits = cp.asarray((rng.standard_normal((3001, 300)) * 3).astype(np.float32))
    labels = cp.asarray(rng.integers(0, 300, 3001))
    weight = (rng.random(300) + 0.5).astype(np.float32)
    for reduction in ("sum", "mean"):
        got = fastloss.cross_entropy(da.from_array(logits, chunks=(700, 300)),
                                     da.from_array(labels, chunks=700), weight=weight,
                                     reduction=reduction).compute()
        want = fastloss.cross_entropy(logits, labels, weight=cp.asarray(weight),
                                      reduction=reduction)
        assert_same_bits(np.asarray(got.get() if hasattr(got, "get") else got)[()],
                         cp.asnumpy(want)[()], what=f"cross_entropy {reduction}")
    for reduction in ("sum", "mean"):
        got = fastloss.binary_cross_entropy_with_logits(dx, dy, reduction=reduction).compute()
        want = fastloss.binary_cross_entropy_with_logits(gx, gy, reduction=reduction)
        assert_same_bits(np.asarray(got.get() if hasattr(got, "get") else got)[()],
                         cp.asnumpy(want)[()], what=reduction)
    assert lazy is not None
