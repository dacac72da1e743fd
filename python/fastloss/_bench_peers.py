"""The optional peers of the benchmarks: Numba kernels written as a user writes them, and crysx_nn.

Both are imported only when a benchmark asks for them; a missing one raises ``Unavailable`` with
the reason and the install command, and the benchmark skips it (``fastloss._bench.make_case``).

Numba: the per-element formulas of the NumPy seeds (``fastloss._bench``, ``numpy-naive``) in
plain loops, compiled twice: ``@njit(fastmath=True)`` (one thread; LLVM may reorder the sum
into SIMD lanes) and ``@njit(parallel=True)`` with ``prange`` (Numba gives each thread its own
partial sum). The accumulator has the input's dtype, as in a kernel written for float32 data:
that is the sum whose drift the stability track measures. (A bare ``total = 0.0`` would make
Numba accumulate in float64: crysx_nn's kernels are that case.)

crysx_nn (PyPI ``crysx-nn``): its Numba functions ``loss.MSE_loss``, ``loss.BCE_loss``,
``activation.Sigmoid`` and their ``*_grad``, called as its documentation says: (samples,
outputs) arrays, losses averaged over the outputs, so divided by the batch size for PyTorch's
mean. It has no BCE with logits; a crysx_nn user composes ``Sigmoid`` and ``BCE_loss``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math

import numpy as np

BCE_EPS = 1e-7  # the seeds' clip of BCE's input (Keras's epsilon)

INSTALL_HINT = "pip install 'fastloss[bench]'"
# crysx-nn 0.1.7 pins numpy==1.19.2, which has no wheel for Python 3.11 and fails to build,
# so it cannot be a dependency of the extra; its code runs on current NumPy and Numba.
CRYSX_INSTALL_HINT = "pip install --no-deps crysx-nn (its numpy==1.19.2 pin cannot install)"


class Unavailable(Exception):
    """An implementation that cannot run here (a peer not installed); the message says why."""


# ---- Numba ------------------------------------------------------------------------------------------
def _import_numba():
    try:
        import numba
    except ImportError as error:
        raise Unavailable(f"Numba is not installed ({error}; {INSTALL_HINT})") from None
    return numba


@functools.cache
def _numba_formulas():
    """The seeds' per-element formulas, inlined into the loops below by Numba."""
    numba = _import_numba()
    inline = numba.njit(inline="always")

    @inline
    def squared_error(x, y):
        return (x - y) ** 2

    @inline
    def squared_error_grad(x, y, k):
        return 2 * (x - y) / k

    @inline
    def clip(p):
        return min(max(p, BCE_EPS), 1 - BCE_EPS)

    @inline
    def clipped_bce(p, t):
        p = clip(p)
        return -(t * np.log(p) + (1 - t) * np.log(1 - p))

    @inline
    def clipped_bce_grad(p, t, k):
        p = clip(p)
        return (p - t) / (p * (1 - p)) / k

    @inline
    def logistic(z):
        return 1 / (1 + np.exp(-z))

    @inline
    def bce_logits(z, t):
        return max(z, 0) - z * t + np.log1p(np.exp(-abs(z)))

    @inline
    def bce_logits_grad(z, t, k):
        return (logistic(z) - t) / k

    @inline
    def logistic_backward(g, s, k):
        return g * s * (1 - s)

    return {"mse": (squared_error, squared_error_grad),
            "bce": (clipped_bce, clipped_bce_grad),
            "logits": (bce_logits, bce_logits_grad),
            "logistic": logistic, "logistic_backward": logistic_backward}


# Loop shapes. `prange` is `range` in a function compiled without parallel=True, so each loop is
# written once and compiled both ways. `scalar` is the input's scalar type (np.float32): the
# formulas' float64 constants promote each term to float64, and the sum must not follow.
def _loss_loop(term, prange, scalar):
    def loss(a, b):
        total = scalar(0)
        for i in prange(a.size):
            total += scalar(term(a[i], b[i]))
        return total / a.size
    return loss


def _grad_loop(grad, prange):
    def gradient(a, b, out):
        k = a.size
        for i in prange(k):
            out[i] = grad(a[i], b[i], k)
        return out
    return gradient


def _fused_loop(term, grad, prange, scalar):
    def loss_and_grad(a, b, out):
        k = a.size
        total = scalar(0)
        for i in prange(k):
            total += scalar(term(a[i], b[i]))
            out[i] = grad(a[i], b[i], k)
        return total / k, out
    return loss_and_grad


def _map_loop(function, prange):
    def elementwise(a, out):
        for i in prange(a.size):
            out[i] = function(a[i])
        return out
    return elementwise


@functools.cache
def numba_kernels(parallel: bool, dtype: str) -> dict:
    """op name -> compiled (on first call) kernel, for arrays of ``dtype``."""
    numba = _import_numba()
    formulas = _numba_formulas()
    compile = numba.njit(parallel=True) if parallel else numba.njit(fastmath=True)
    prange, scalar = numba.prange, np.dtype(dtype).type
    kernels = {}
    for op, stem in (("mse_loss", "mse"), ("binary_cross_entropy", "bce"),
                     ("binary_cross_entropy_with_logits", "logits")):
        term, grad = formulas[stem]
        kernels[op] = compile(_loss_loop(term, prange, scalar))
        kernels[f"{op}_grad"] = compile(_grad_loop(grad, prange))
        kernels[f"{op}_and_grad"] = compile(_fused_loop(term, grad, prange, scalar))
    kernels["sigmoid"] = compile(_map_loop(formulas["logistic"], prange))
    kernels["sigmoid_backward"] = compile(_grad_loop(formulas["logistic_backward"], prange))
    return kernels


def numba_case(parallel: bool, op_name: str, writes_array: bool, *arrays):
    """run() for ``op_name`` with the serial or the parallel Numba kernel; compiled here."""
    kernel = numba_kernels(parallel, arrays[0].dtype.name)[op_name]
    if writes_array:
        arrays += (np.empty_like(arrays[0]),)
    _compile_once(("numba", parallel, op_name, arrays[0].dtype.name),
                  lambda: kernel(*_heads(arrays)))
    return functools.partial(kernel, *arrays)


_compiled: set = set()
_HEAD = 20  # elements of the arrays a compile runs on: 2 samples of 10 outputs for crysx_nn


def _heads(arrays):
    """The first elements (rows) of each array: the same Numba types (a leading slice of a
    C-contiguous array is C-contiguous), and a call that costs nothing at any N."""
    return tuple(a[:_HEAD] if a.ndim == 1 else a[:2] for a in arrays)


def _compile_once(key, compile_call) -> None:
    """Runs ``compile_call`` the first time ``key`` (a function and a dtype) is seen: the JIT
    compile happens there, on a few elements, never in a timed call, and never again for the
    copies that timed runs cycle through (thousands at N = 1e3)."""
    if key not in _compiled:
        _compiled.add(key)
        compile_call()


# ---- crysx_nn ---------------------------------------------------------------------------------------
@functools.cache
def _crysx_modules():
    try:
        # Each module prints a warning on stdout when CuPy is missing; the table owns stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            from crysx_nn import activation, loss
    except ImportError as error:
        if getattr(error, "name", None) == "crysx_nn":
            raise Unavailable(f"crysx_nn is not installed ({CRYSX_INSTALL_HINT})") from None
        raise Unavailable(f"crysx_nn cannot be imported ({error}; {INSTALL_HINT})") from None
    except Exception as error:  # an incompatible NumPy or Numba fails in other ways
        raise Unavailable(
            f"crysx_nn cannot be imported ({type(error).__name__}: {error})") from None
    return activation, loss


def _as_batch(a):
    """(samples, outputs) as crysx_nn expects: 10 outputs per sample (an MNIST-sized layer)
    where N allows."""
    return a.reshape(-1, math.gcd(a.size, 10))


def crysx_builder(op_name, *arrays):
    """run() calling crysx_nn for ``op_name``; arrays come back flat, losses as PyTorch's mean."""
    activation, loss = _crysx_modules()
    a, b = (_as_batch(array) for array in arrays) if len(arrays) == 2 else (
        _as_batch(arrays[0]), None)
    batch = a.shape[0]

    def mse():
        return loss.MSE_loss(a, b) / batch

    def mse_grad():
        return (loss.MSE_loss_grad(a, b) / batch).reshape(-1)

    def bce():
        return loss.BCE_loss(a, b) / batch

    def bce_grad():
        return (loss.BCE_loss_grad(a, b) / batch).reshape(-1)

    def logits():
        return loss.BCE_loss(activation.Sigmoid(a), b) / batch

    def logits_grad(output=None):
        output = activation.Sigmoid(a) if output is None else output
        grad = loss.BCE_loss_grad(output, b) * activation.Sigmoid_grad(a) / batch
        return grad.reshape(-1)

    def logits_and_grad():
        output = activation.Sigmoid(a)
        return loss.BCE_loss(output, b) / batch, logits_grad(output)

    def sigmoid():
        return activation.Sigmoid(a).reshape(-1)

    # crysx_nn's Sigmoid_grad takes the sigmoid's input, the benchmark gives its output s: the
    # input, log(s / (1 - s)), is made here, outside the timed call.
    pre_activation = (np.log(b) - np.log1p(-b)) if op_name == "sigmoid_backward" else None

    def sigmoid_backward():
        return (a * activation.Sigmoid_grad(pre_activation)).reshape(-1)

    run = {
        "mse_loss": mse, "mse_loss_grad": mse_grad,
        "mse_loss_and_grad": lambda: (mse(), mse_grad()),
        "binary_cross_entropy": bce, "binary_cross_entropy_grad": bce_grad,
        "binary_cross_entropy_and_grad": lambda: (bce(), bce_grad()),
        "binary_cross_entropy_with_logits": logits,
        "binary_cross_entropy_with_logits_grad": logits_grad,
        "binary_cross_entropy_with_logits_and_grad": logits_and_grad,
        "sigmoid": sigmoid, "sigmoid_backward": sigmoid_backward,
    }[op_name]
    # crysx_nn caches its compiled functions on disk; loading them still takes a call.
    _compile_once(("crysx_nn", op_name, a.dtype.name),
                  lambda: crysx_builder(op_name, *(x[:_HEAD] for x in arrays))())
    return run
