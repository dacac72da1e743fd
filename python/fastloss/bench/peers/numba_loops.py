"""Numba kernels written as a user writes them: the per-element formulas of the NumPy seeds
(``numpy_formulas``, ``numpy-naive``) in plain loops, compiled twice: ``@njit(fastmath=True)``
(one thread; LLVM may reorder the sum into SIMD lanes) and ``@njit(parallel=True)`` with
``prange`` (Numba gives each thread its own partial sum). The accumulator has the input's dtype,
as in a kernel written for float32 data: that is the sum whose drift the stability track
measures. (A bare ``total = 0.0`` would make Numba accumulate in float64: crysx_nn's kernels
are that case.)
"""

from __future__ import annotations

import functools

import numpy as np

from fastloss.bench.ops import OPS
from fastloss.bench.peers import INSTALL_HINT, Unavailable
from fastloss.bench.peers.numpy_formulas import BCE_EPS


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
    compile_once(("numba", parallel, op_name, arrays[0].dtype.name),
                 lambda: kernel(*heads(arrays)))
    return functools.partial(kernel, *arrays)


@functools.cache
def builders(parallel: bool) -> dict:
    """op name -> build(*arrays) -> run(), with the serial or the parallel kernels."""
    return {name: functools.partial(numba_case, parallel, name, op.writes_array)
            for name, op in OPS.items()}


_compiled: set = set()
_HEAD = 20  # elements of the arrays a compile runs on: 2 samples of 10 outputs for crysx_nn


def heads(arrays):
    """The first elements (rows) of each array: the same Numba types (a leading slice of a
    C-contiguous array is C-contiguous), and a call that costs nothing at any N."""
    return tuple(a[:_HEAD] if a.ndim == 1 else a[:2] for a in arrays)


def compile_once(key, compile_call) -> None:
    """Runs ``compile_call`` the first time ``key`` (a function and a dtype) is seen: the JIT
    compile happens there, on a few elements, never in a timed call, and never again for the
    copies that timed runs cycle through (thousands at N = 1e3)."""
    if key not in _compiled:
        _compiled.add(key)
        compile_call()
