"""Benchmarks of fastloss against NumPy and PyTorch, measured against the machine's bandwidth.

Used by ``python -m fastloss bench`` (``main`` below) and by the pytest-benchmark harness in
``bench/`` of the source tree, so that the bandwidth probe, the test data and every compared
implementation exist once.

The kernels are memory-bound for large N, so each timing is also given as bandwidth: the bytes
an ideal single pass moves (each input read once, each output written once) divided by the
time, next to a STREAM-like ceiling measured in the same run (the ceiling of a shared VM drifts
between runs, so a figure from another run would not compare).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastloss
from fastloss import _cpu, reference

# ---- bandwidth ceiling ---------------------------------------------------------------------------
STREAM_N = 25_000_000  # float32s: 100 MB per array, far beyond any cache
STREAM_N_BIG = 100_000_000


def measure_bandwidth(n: int = STREAM_N, repeats: int = 7) -> dict:
    """Read and copy bandwidth in GB/s (1e9 bytes/s): median of ``repeats`` after a warm-up.

    read: ``_cpu.stream_read`` sums an n-float32 array with all threads (4n bytes).
    copy: ``_cpu.stream_copy`` copies it into another (8n bytes: one read, one write).
    """
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros_like(src)  # zeros, not empty: the pages must exist before the timed copy
    _cpu.stream_read(src)  # warm-up: starts the OpenMP threads
    _cpu.stream_copy(src, dst)
    read_s, copy_s = [], []
    for _ in range(repeats):  # interleaved, so a drift of the machine hits both alike
        read_s.append(_seconds(_cpu.stream_read, src))
        copy_s.append(_seconds(_cpu.stream_copy, src, dst))
    return {"read_gbs": 4 * n / statistics.median(read_s) / 1e9,
            "copy_gbs": 8 * n / statistics.median(copy_s) / 1e9}


def _seconds(function, *args):
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


# ---- test data -----------------------------------------------------------------------------------
BCE_EPS = 1e-7  # the naive BCE's clip, as in Keras
PROB_MIN = 1e-6  # probabilities lie in [PROB_MIN, 1 - PROB_MIN]: the clip above never bites


class Inputs:
    """The arrays of one (dtype, N), made on first use, and the exact losses over them.

    Arrays, each from ``np.random.default_rng([0, k])`` (seed 0, a stream k of its own, so that
    each is the same whichever is made first):
      values   standard normal: predictions, logits, upstream gradients
      targets  standard normal: regression targets
      probs    uniform in [1e-6, 1 - 1e-6]: BCE inputs and sigmoid outputs
      labels   hard targets, 0 or 1
    """

    _STREAMS = {"values": 1, "targets": 2, "probs": 3, "labels": 4}

    def __init__(self, dtype, n: int):
        self.dtype = np.dtype(dtype)
        self.n = int(n)
        self._arrays = {}
        self._exact = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = self._make(name)
        return self._arrays[name]

    def _make(self, name):
        rng = np.random.default_rng([0, self._STREAMS[name]])
        if name in ("values", "targets"):
            return rng.standard_normal(self.n, dtype=self.dtype)
        if name == "probs":
            return np.clip(rng.random(self.n, dtype=self.dtype), PROB_MIN, 1 - PROB_MIN)
        return (rng.random(self.n, dtype=self.dtype) < 0.5).astype(self.dtype)

    def arrays(self, op: Op) -> tuple:
        return tuple(self[name] for name in op.arrays)

    def exact_loss(self, op: Op) -> float:
        """The op's loss in exact float64 (``fastloss.reference``: float64 terms, math.fsum)."""
        key = op.reference.__name__  # mse_loss and mse_loss_and_grad share one
        if key not in self._exact:
            self._exact[key] = float(op.reference(*self.arrays(op)))
        return self._exact[key]


# ---- the compared operations ---------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    name: str
    arrays: tuple  # names in Inputs, in argument order
    writes_array: bool  # an array out (out=), besides or instead of a loss
    reference: Callable | None = None  # exact float64 loss, for the ops that reduce

    @property
    def reduces(self) -> bool:
        return self.reference is not None

    def bytes_moved(self, n: int, itemsize: int) -> int:
        """Each input read once and the output array written once: the least any pass moves."""
        return (len(self.arrays) + self.writes_array) * n * itemsize

    @property
    def ceiling(self) -> str:
        """The probe it is held against: a loss only reads; an op writing an array also writes."""
        return "copy_gbs" if self.writes_array else "read_gbs"


_MSE, _BCE, _LOGITS = ("values", "targets"), ("probs", "labels"), ("values", "labels")
OPS = {op.name: op for op in (
    Op("mse_loss", _MSE, False, reference.mse_loss),
    Op("mse_loss_grad", _MSE, True),
    Op("mse_loss_and_grad", _MSE, True, reference.mse_loss),
    Op("binary_cross_entropy", _BCE, False, reference.binary_cross_entropy),
    Op("binary_cross_entropy_and_grad", _BCE, True, reference.binary_cross_entropy),
    Op("binary_cross_entropy_with_logits", _LOGITS, False,
       reference.binary_cross_entropy_with_logits),
    Op("binary_cross_entropy_with_logits_and_grad", _LOGITS, True,
       reference.binary_cross_entropy_with_logits),
    Op("sigmoid", ("values",), True),
    Op("sigmoid_backward", ("values", "probs"), True),  # grad_output, output
)}
# What `python -m fastloss bench` shows: the three losses, two fused loss+grad passes, sigmoid.
CLI_OPS = ("mse_loss", "mse_loss_and_grad", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_and_grad",
           "sigmoid")


# ---- implementations -----------------------------------------------------------------------------
# Each builder takes the op's input arrays and returns a zero-argument callable that runs the op
# once. Anything that need not be timed (output buffers, tensors wrapping the arrays) is made by
# the builder, outside the callable.

def _with_out(function, *arrays):
    out = np.empty_like(arrays[0])
    return lambda: function(*arrays, out=out)


_FASTLOSS = {
    "mse_loss": lambda x, y: lambda: fastloss.mse_loss(x, y),
    "mse_loss_grad": lambda x, y: _with_out(fastloss.mse_loss_grad, x, y),
    "mse_loss_and_grad": lambda x, y: _with_out(fastloss.mse_loss_and_grad, x, y),
    "binary_cross_entropy": lambda p, t: lambda: fastloss.binary_cross_entropy(p, t),
    "binary_cross_entropy_and_grad":
        lambda p, t: _with_out(fastloss.binary_cross_entropy_and_grad, p, t),
    "binary_cross_entropy_with_logits":
        lambda z, t: lambda: fastloss.binary_cross_entropy_with_logits(z, t),
    "binary_cross_entropy_with_logits_and_grad":
        lambda z, t: _with_out(fastloss.binary_cross_entropy_with_logits_and_grad, z, t),
    "sigmoid": lambda z: _with_out(fastloss.sigmoid, z),
    "sigmoid_backward": lambda g, s: _with_out(fastloss.sigmoid_backward, g, s),
}


# NumPy, naive: the textbook formulas, one temporary per operator, loss and gradient separately.
def _naive_mse_loss(x, y):
    return np.mean((x - y) ** 2)


def _naive_mse_loss_grad(x, y):
    return 2 * (x - y) / x.size


def _naive_bce(p, t):
    pc = np.clip(p, BCE_EPS, 1 - BCE_EPS)
    return -np.mean(t * np.log(pc) + (1 - t) * np.log(1 - pc))


def _naive_bce_grad(p, t):
    pc = np.clip(p, BCE_EPS, 1 - BCE_EPS)
    return (pc - t) / (pc * (1 - pc)) / p.size


def _naive_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _naive_bce_logits(z, t):
    return np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))


def _naive_bce_logits_grad(z, t):
    return (_naive_sigmoid(z) - t) / z.size


def _naive_sigmoid_backward(g, s):
    return g * s * (1 - s)


def _loss_and_grad(loss, grad):
    return lambda *arrays: (loss(*arrays), grad(*arrays))


_NAIVE_FUNCTIONS = {
    "mse_loss": _naive_mse_loss,
    "mse_loss_grad": _naive_mse_loss_grad,
    "mse_loss_and_grad": _loss_and_grad(_naive_mse_loss, _naive_mse_loss_grad),
    "binary_cross_entropy": _naive_bce,
    "binary_cross_entropy_and_grad": _loss_and_grad(_naive_bce, _naive_bce_grad),
    "binary_cross_entropy_with_logits": _naive_bce_logits,
    "binary_cross_entropy_with_logits_and_grad":
        _loss_and_grad(_naive_bce_logits, _naive_bce_logits_grad),
    "sigmoid": _naive_sigmoid,
    "sigmoid_backward": _naive_sigmoid_backward,
}


def _bind(function):
    return lambda *arrays: functools.partial(function, *arrays)


_NUMPY_NAIVE = {name: _bind(function) for name, function in _NAIVE_FUNCTIONS.items()}


# NumPy, best effort: what a careful NumPy user writes: preallocated buffers, in-place ufuncs,
# BLAS dot products for the sums, and the same definitions as fastloss (BCE's logs clamped at
# -100 like PyTorch's rather than clipped inputs).
def _best_mse_loss(x, y):
    diff = np.empty_like(x)

    def run():
        np.subtract(x, y, out=diff)
        return np.dot(diff, diff) / x.size
    return run


def _best_mse_loss_grad(x, y):
    out = np.empty_like(x)

    def run():
        np.subtract(x, y, out=out)
        return np.multiply(out, 2 / x.size, out=out)
    return run


def _best_mse_loss_and_grad(x, y):
    out = np.empty_like(x)

    def run():
        np.subtract(x, y, out=out)
        loss = np.dot(out, out) / x.size
        return loss, np.multiply(out, 2 / x.size, out=out)
    return run


def _bce_sum(p, t, log_p, log_q):
    """Sum of t*log(p) + (1-t)*log(1-p), logs clamped at -100, via t*(log p - log q) + log q."""
    np.log(p, out=log_p)
    np.maximum(log_p, reference.LOG_CLAMP, out=log_p)
    np.negative(p, out=log_q)
    np.log1p(log_q, out=log_q)
    np.maximum(log_q, reference.LOG_CLAMP, out=log_q)
    np.subtract(log_p, log_q, out=log_p)
    return np.dot(t, log_p) + log_q.sum()


def _best_bce(p, t):
    log_p, log_q = np.empty_like(p), np.empty_like(p)
    return lambda: -_bce_sum(p, t, log_p, log_q) / p.size


def _best_bce_and_grad(p, t):
    log_p, log_q, out = np.empty_like(p), np.empty_like(p), np.empty_like(p)

    def run():
        loss = -_bce_sum(p, t, log_p, log_q) / p.size
        denominator = log_q  # reused: p * (1 - p) clamped like PyTorch's, times N for the mean
        np.subtract(1, p, out=denominator)
        np.multiply(denominator, p, out=denominator)
        np.maximum(denominator, reference.GRAD_EPS, out=denominator)
        np.multiply(denominator, p.size, out=denominator)
        np.subtract(p, t, out=out)
        return loss, np.divide(out, denominator, out=out)
    return run


def _logits_sum(z, t, buffer):
    """Sum of max(z, 0) - z*t + log1p(exp(-|z|)): the overflow-free form."""
    np.abs(z, out=buffer)
    np.negative(buffer, out=buffer)
    np.exp(buffer, out=buffer)
    np.log1p(buffer, out=buffer)
    softplus_tail = buffer.sum()
    return softplus_tail + np.maximum(z, 0, out=buffer).sum() - np.dot(z, t)


def _tanh_sigmoid(z, out):
    """sigmoid(z) = (1 + tanh(z/2)) / 2: one transcendental, no overflow for any z."""
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    np.multiply(out, 0.5, out=out)
    return np.add(out, 0.5, out=out)


def _best_bce_logits(z, t):
    buffer = np.empty_like(z)
    return lambda: _logits_sum(z, t, buffer) / z.size


def _best_bce_logits_and_grad(z, t):
    buffer, out = np.empty_like(z), np.empty_like(z)

    def run():
        loss = _logits_sum(z, t, buffer) / z.size
        _tanh_sigmoid(z, out)
        np.subtract(out, t, out=out)
        return loss, np.multiply(out, 1 / z.size, out=out)
    return run


def _best_sigmoid(z):
    out = np.empty_like(z)
    return lambda: _tanh_sigmoid(z, out)


def _best_sigmoid_backward(g, s):
    out = np.empty_like(g)

    def run():
        np.subtract(1, s, out=out)
        np.multiply(out, s, out=out)
        return np.multiply(out, g, out=out)
    return run


_NUMPY_BEST = {
    "mse_loss": _best_mse_loss,
    "mse_loss_grad": _best_mse_loss_grad,
    "mse_loss_and_grad": _best_mse_loss_and_grad,
    "binary_cross_entropy": _best_bce,
    "binary_cross_entropy_and_grad": _best_bce_and_grad,
    "binary_cross_entropy_with_logits": _best_bce_logits,
    "binary_cross_entropy_with_logits_and_grad": _best_bce_logits_and_grad,
    "sigmoid": _best_sigmoid,
    "sigmoid_backward": _best_sigmoid_backward,
}


def torch_autograd_builder(to_tensor, loss):
    """build(input, target) -> run(), which returns (loss, d loss / d input) by a PyTorch
    forward + backward through autograd, as in training. ``to_tensor`` wraps an array without
    copying (torch.from_numpy on the CPU, DLPack on the GPU: bench/gpu.py)."""
    import torch

    def build(input, target):
        leaf, target = to_tensor(input).detach().requires_grad_(), to_tensor(target)

        def run():
            value = loss(leaf, target)
            (grad,) = torch.autograd.grad(value, leaf)  # returns it, accumulates nothing
            return value.detach(), grad
        return run
    return build


# PyTorch (CPU, its default thread count): tensors share the NumPy arrays (torch.from_numpy).
# Gradients come from aten's own backward kernels writing into out= where PyTorch has one, and
# from autograd (forward + backward, as in training) for the *_and_grad ops.
@functools.cache
def _torch_builders():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    tensor = torch.from_numpy
    mean = 1  # at::Reduction::Mean, the reduction argument of aten's *_backward kernels

    def loss_only(loss):
        def build(input, target):
            input, target = tensor(input), tensor(target)
            return lambda: loss(input, target)
        return build

    with_autograd = functools.partial(torch_autograd_builder, tensor)

    def mse_loss_grad(x, y):
        x, y, out = tensor(x), tensor(y), tensor(np.empty_like(x))
        one = torch.ones((), dtype=x.dtype)
        return lambda: torch.ops.aten.mse_loss_backward.grad_input(one, x, y, mean,
                                                                   grad_input=out)

    def sigmoid(z):
        z, out = tensor(z), tensor(np.empty_like(z))
        return lambda: torch.sigmoid(z, out=out)

    def sigmoid_backward(g, s):
        g, s, out = tensor(g), tensor(s), tensor(np.empty_like(g))
        return lambda: torch.ops.aten.sigmoid_backward.grad_input(g, s, grad_input=out)

    return {
        "mse_loss": loss_only(F.mse_loss),
        "mse_loss_grad": mse_loss_grad,
        "mse_loss_and_grad": with_autograd(F.mse_loss),
        "binary_cross_entropy": loss_only(F.binary_cross_entropy),
        "binary_cross_entropy_and_grad": with_autograd(F.binary_cross_entropy),
        "binary_cross_entropy_with_logits": loss_only(F.binary_cross_entropy_with_logits),
        "binary_cross_entropy_with_logits_and_grad":
            with_autograd(F.binary_cross_entropy_with_logits),
        "sigmoid": sigmoid,
        "sigmoid_backward": sigmoid_backward,
    }


IMPLEMENTATIONS = ("fastloss", "numpy-naive", "numpy-best", "torch")
CLI_IMPLEMENTATIONS = ("fastloss", "numpy-naive", "torch")


class Unavailable(Exception):
    """An implementation that cannot run here (PyTorch missing)."""


def make_case(impl: str, op: Op, inputs: Inputs) -> Callable:
    """The zero-argument callable that runs ``op`` once with ``impl`` on ``inputs``."""
    if impl == "torch":
        builders = _torch_builders()
        if builders is None:
            raise Unavailable("PyTorch is not importable")
    else:
        builders = {"fastloss": _FASTLOSS, "numpy-naive": _NUMPY_NAIVE,
                    "numpy-best": _NUMPY_BEST}[impl]
    return builders[op.name](*inputs.arrays(op))


def loss_value(result) -> float:
    """The loss out of what a case returns: a scalar (NumPy or 0-d tensor) or (loss, grad)."""
    if isinstance(result, tuple):
        result = result[0]
    return float(result)


def ulps(value: float, exact: float, dtype) -> float:
    """|value - exact| in units in the last place of ``exact`` rounded to ``dtype``."""
    return abs(value - exact) / float(np.spacing(np.abs(np.dtype(dtype).type(exact))))


def relative_error(value: float, exact: float) -> float:
    """|value - exact| / |exact| (absolute when exact is 0)."""
    return abs(value - exact) / abs(exact) if exact else abs(value)


# ---- timing --------------------------------------------------------------------------------------
def time_case(case: Callable, repeats: int = 7, min_sample_s: float = 1e-3):
    """(median seconds per call, result of a call): median of ``repeats`` samples.

    A warm-up call first (page faults on fresh outputs, thread pools, lazy imports). A call on
    a small N takes microseconds, near the timer's own cost, so each sample times a loop of
    calls lasting at least ``min_sample_s``, sized by a second, timed warm-up call.
    """
    start = time.perf_counter()
    result = case()
    one_call = time.perf_counter() - start
    if one_call < min_sample_s:  # the first call's time may be mostly warm-up: time another
        start = time.perf_counter()
        case()
        one_call = time.perf_counter() - start
    loops = max(1, math.ceil(min_sample_s / max(one_call, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            case()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples), result


# ---- the machine ---------------------------------------------------------------------------------
_OPENMP_RELEASES = {201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0", 202011: "5.1",
                    202111: "5.2", 202411: "6.0"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def openmp_description(info: dict) -> str:
    if not info["openmp"]:
        return "off (single thread)"
    version = info["openmp_version"]
    release = _OPENMP_RELEASES.get(version)
    return f"on, OpenMP {release} ({version})" if release else f"on ({version})"


def package_version(name: str):
    """The installed version of ``name`` without importing it (importing torch takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


class OtherLoad:
    """How much of the CPU other processes took while we measured (Linux; None elsewhere).

    On a machine whose cores are shared, a parallel call waits for its descheduled OpenMP
    threads: a pass of microseconds can take a scheduler time slice (milliseconds). The CPU
    time of the whole machine (/proc/stat, steal included) minus our own tells if that happened.
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = stat.readline().split()[1:]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, AttributeError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        machine_busy = (user + nice + system + irq + softirq + steal) / ticks
        own = os.times()
        return time.perf_counter(), machine_busy, own.user + own.system

    def fraction(self):
        """Share of all cores' time used by others since construction, or None if unknown."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else None

    def warning(self, threshold=0.05):
        share = self.fraction()
        if share is None or share < threshold:
            return None
        return (f"warning: other processes used {100 * share:.0f}% of the CPU during the run; "
                "timings are noisy (parallel calls wait for descheduled threads: rerun on a "
                "quiet machine, or with OMP_WAIT_POLICY=passive)")


# ---- python -m fastloss bench --------------------------------------------------------------------
QUICK_SIZES = (10**3, 10**5, 10**7)
FULL_SIZES = QUICK_SIZES + (10**8,)


def size_label(n: int) -> str:
    exponent = round(math.log10(n))
    return f"1e{exponent}" if 10**exponent == n else str(n)


def format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


@dataclass
class Row:
    op: str
    n: int
    impl: str
    seconds: float
    gbs: float
    ceiling_fraction: float
    speedup: float | None  # NumPy naive's time / this time
    error_ulps: float | None  # reductions only


def run_benchmarks(ops, sizes, impls, dtype, ceilings, repeats=7, progress=sys.stderr):
    """Times every (op, size, impl); returns Rows and the implementations that were missing."""
    rows, missing = [], {}
    step, steps = 0, len(sizes) * len(ops)
    for n in sizes:
        inputs = Inputs(dtype, n)  # once per size: every op and implementation reads the same
        for op_name in ops:
            op = OPS[op_name]
            timed = {}
            for impl in impls:
                try:
                    case = make_case(impl, op, inputs)
                except Unavailable as reason:
                    missing[impl] = str(reason)
                    continue
                seconds, result = time_case(case, repeats)
                # Keep the loss only: the case and its result hold output buffers of size N.
                timed[impl] = seconds, loss_value(result) if op.reduces else None
                del case, result
            exact = inputs.exact_loss(op) if op.reduces else None
            baseline = timed.get("numpy-naive", (None,))[0]
            for impl, (seconds, loss) in timed.items():
                gbs = op.bytes_moved(n, inputs.dtype.itemsize) / seconds / 1e9
                rows.append(Row(
                    op_name, n, impl, seconds, gbs, gbs / ceilings[op.ceiling],
                    baseline / seconds if baseline else None,
                    ulps(loss, exact, dtype) if op.reduces else None))
            step += 1
            summary = ", ".join(f"{impl} {format_seconds(seconds)}"
                                for impl, (seconds, _) in timed.items())
            print(f"[{step}/{steps}] {op_name} N={size_label(n)}: {summary}",
                  file=progress, flush=True)
        del inputs
    return rows, missing


def format_table(rows) -> str:
    header = ("op", "N", "impl", "time", "GB/s", "% ceil", "vs numpy", "err (ulp)")
    lines = [header]
    for row in rows:
        lines.append((
            row.op, size_label(row.n), row.impl, format_seconds(row.seconds),
            f"{row.gbs:.2f}", f"{100 * row.ceiling_fraction:.0f}%",
            f"{row.speedup:.1f}x" if row.speedup is not None else "-",
            f"{row.error_ulps:.1f}" if row.error_ulps is not None else "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left_aligned = 3  # op, N, impl; numbers right-aligned
    out = []
    for index, line in enumerate(lines):
        group = line[:2]
        if index > 1 and group == lines[index - 1][:2]:
            line = ("", "") + line[2:]  # op and N once per group: the table reads at a glance
        elif index > 1:
            out.append("")
        cells = [cell.ljust(width) if i < left_aligned else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("-" * len(out[-1]))
    return "\n".join(out)


def format_header(dtype, ceilings, stream_n, sizes, repeats, other_load=None) -> str:
    info = _cpu.build_info()
    torch_version = package_version("torch")
    python = platform.python_version()
    if platform.python_implementation() != "CPython":
        python = f"{platform.python_implementation()} {python}"
    warning = other_load.warning() if other_load else None
    return "\n".join(([warning] if warning else []) + [
        f"fastloss {fastloss.__version__} benchmark, {np.dtype(dtype).name}, "
        f"N = {', '.join(size_label(n) for n in sizes)}, median of {repeats} after warm-up",
        f"machine:   {cpu_model()}, {os.cpu_count()} logical cores; fastloss uses "
        f"{info['max_threads']} threads, ISA {info['isa']}, {info['compiler']}",
        f"versions:  Python {python}, NumPy {np.__version__}, "
        f"PyTorch {torch_version or 'not installed'}",
        f"ceilings:  read {ceilings['read_gbs']:.1f} GB/s, copy {ceilings['copy_gbs']:.1f} GB/s "
        f"(STREAM-like, {4 * stream_n / 1e6:.0f} MB arrays, measured in this run)",
        "GB/s:      bytes of an ideal pass (each input read once, each output written once) "
        "/ time",
        "% ceil:    share of the read ceiling (losses) or of the copy ceiling (ops writing an "
        "array);",
        "           small N runs in cache and can pass 100%",
        "vs numpy:  numpy-naive's time / time",
        "err (ulp): |loss - exact| in ulps of the exact loss rounded to the dtype;",
        "           exact: fastloss.reference (float64 terms, math.fsum)",
    ])


def plot(rows, ceilings, path, dtype) -> None:
    """GB/s against N, a line per implementation, one subplot per op; the ceiling dashed."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    ops = list(dict.fromkeys(row.op for row in rows))
    columns = min(3, len(ops))
    rows_of_plots = math.ceil(len(ops) / columns)
    figure = Figure(figsize=(5 * columns, 3.6 * rows_of_plots), layout="constrained")
    axes = figure.subplots(rows_of_plots, columns, squeeze=False).ravel()
    for axis, op_name in zip(axes, ops):
        mine = [row for row in rows if row.op == op_name]
        for impl in dict.fromkeys(row.impl for row in mine):
            points = [(row.n, row.gbs) for row in mine if row.impl == impl]
            axis.plot(*zip(*points), marker="o", label=impl)
        ceiling = OPS[op_name].ceiling
        axis.axhline(ceilings[ceiling], linestyle="--", color="grey",
                     label=ceiling.replace("_gbs", " ceiling"))
        axis.set(xscale="log", yscale="log", title=op_name, xlabel="N", ylabel="GB/s")
        axis.legend(fontsize="small")
    for axis in axes[len(ops):]:
        axis.set_visible(False)
    figure.suptitle(f"fastloss {fastloss.__version__}, {np.dtype(dtype).name}, {cpu_model()}")
    figure.savefig(path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="sizes", action="store_const", const=QUICK_SIZES,
                      help="N = 1e3, 1e5, 1e7 (the default; well under a minute)")
    size.add_argument("--full", dest="sizes", action="store_const", const=FULL_SIZES,
                      help="adds N = 1e8 (several GB of memory, a few minutes)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="default: %(default)s")
    parser.add_argument("--plot", metavar="PATH",
                        help="also write a PNG of GB/s against N (needs matplotlib)")
    parser.set_defaults(sizes=QUICK_SIZES)


def main(args: argparse.Namespace) -> int:
    repeats = 7
    other_load = OtherLoad()
    stream_n = STREAM_N_BIG if max(args.sizes) >= STREAM_N_BIG else STREAM_N
    print(f"measuring the bandwidth ceiling ({4 * stream_n / 1e6:.0f} MB arrays)...",
          file=sys.stderr, flush=True)
    ceilings = measure_bandwidth(stream_n, repeats)
    rows, missing = run_benchmarks(CLI_OPS, args.sizes, CLI_IMPLEMENTATIONS, args.dtype,
                                   ceilings, repeats)
    print(format_header(args.dtype, ceilings, stream_n, args.sizes, repeats, other_load))
    for impl, reason in missing.items():
        print(f"note: {impl} skipped: {reason}")
    print()
    print(format_table(rows))
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            print(f"\nmatplotlib is not installed: no plot written to {args.plot}")
        else:
            plot(rows, ceilings, args.plot, args.dtype)
            print(f"\nplot written to {args.plot}")
    return 0
