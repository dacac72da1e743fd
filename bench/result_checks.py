"""What the benchmarks assert about every result they time, at every size: the CPU benchmarks
(test_bench_cpu.py, test_bench_torch.py) and the GPU one (test_bench_gpu.py) share it, and
test_result_checks.py runs it on NumPy arrays where no GPU is there.

Arrays (gradients, sigmoid) are checked element by element, |got - ref| <= atol + rtol * |ref|,
against ``fastloss.reference`` on the same inputs; above SAMPLE elements on a fixed sample (the
first and last elements, where chunked loops start and end ragged, and fixed random ones), so
the check stays cheap at N = 1e8. atol is per dtype, in units of the op's own scale: 1 for
sigmoid and its backward, 1/N for the gradient of a mean. No tolerance depends on the values.

Reduced losses are checked against the exact mean (math.fsum of float64 terms):
  fastloss: its guarantee at any N (float32 within 1 ulp, 4 for the BCE losses below 1e5
    elements, as tests/_helpers.py reduction_ulp_bound; float64 within 1e-13 relative);
  peers: a first-order error bound of the way each one sums (``summation_factor``): float32
    running sums drift with N, so the bound grows with N instead of the check being skipped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fastloss import reference

SAMPLE = 100_000
EDGE = 1_000
SAMPLE_SEED = 20240612

# rtol: a few ulps of rounding per element. atol (times the op's unit, see array_tolerance): the
# peers' forms that cancel, sigmoid(z) - t and (1 + tanh(z / 2)) / 2, are off by about eps
# absolute where the result is small (1e-5 relative for sigmoid(-5) in float32).
ARRAY_RTOL = {"float32": 2e-6, "float64": 1e-12}
ARRAY_ATOL = {"float32": 1e-6, "float64": 1e-14}

FASTLOSS_RTOL_F64 = 1e-13
# Each peer evaluates a term with a few operations in the input dtype (libm exp/log within about
# an ulp; 1 - p rounded for p < 1/2): at most TERM_ULPS eps * (|term| + 1) per term.
TERM_ULPS = 8


@dataclass(frozen=True)
class Summation:
    """How an implementation adds its terms: ``method`` (see summation_factor), the dtype of its
    accumulator (None: the input's) and how large the parts it adds may be against the terms."""
    method: str
    accumulator: str | None = None
    parts: float = 1.0


SEQUENTIAL = Summation("sequential")
# NumPy's np.sum and np.add.reduce: pairwise (numpy/_core/src/umath/loops_utils.h.src).
PAIRWISE = Summation("pairwise")
# numpy-out sums parts of each term that cancel (t * (log p - log q) + log q; max(z, 0) - z * t
# + the softplus tail) with BLAS dot products, which run along lanes in float32: on the bench's
# inputs the parts add to 1.7x (BCE) and 1.5x (logits) the terms.
NUMPY_OUT = Summation("sequential", parts=3.0)

CPU_SUMMATION = {
    "numpy-naive": PAIRWISE,
    "numpy-out": NUMPY_OUT,
    "numba": SEQUENTIAL,  # a running sum in the input dtype (fastmath may split it into lanes)
    "numba-parallel": SEQUENTIAL,  # one running sum per thread
    "torch": Summation("cascade"),  # aten/src/ATen/native/cpu/SumKernel.cpp
    "jax": SEQUENTIAL,  # XLA's CPU reduction: a loop in the input dtype, vectorised
    "crysx_nn": Summation("sequential", accumulator="float64"),  # `loss = 0.0` under prange
}
# On the GPU each thread adds a strided run of elements before a tree combines the threads'
# sums; how long the runs are depends on the launch (CuPy's single-output reduction runs one
# block), so the bound takes them as long as N.
GPU_SUMMATION = {"cupy": SEQUENTIAL, "torch": SEQUENTIAL}

# crysx_nn's arrays: its logits gradient divides by 1 - s for a rounded s = sigmoid(z), a
# relative error of eps * s / (1 - s) ~ eps * e^z: 5e-5 at z = 6, the largest logits of 1e8
# standard normal samples.
ARRAY_RTOL_BY_IMPL = {"crysx_nn": {"float32": 1e-4, "float64": 1e-12}}
CRYSX_EPSILON = 1e-7  # crysx_nn's log(p + 1e-7)


def eps(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def size(array) -> int:
    """The element count of a NumPy or CuPy array or a torch tensor."""
    return int(array.numel() if hasattr(array, "numel") else array.size)


def sample_indices(n: int) -> np.ndarray:
    """Every index below SAMPLE elements; else the first and last EDGE and fixed random ones."""
    if n <= SAMPLE:
        return np.arange(n)
    middle = np.random.default_rng(SAMPLE_SEED).integers(EDGE, n - EDGE, SAMPLE - 2 * EDGE)
    return np.unique(np.concatenate([np.arange(EDGE), middle, np.arange(n - EDGE, n)]))


def reference_at(op, arrays, indices) -> np.ndarray:
    """``fastloss.reference``'s array result of ``op`` on the whole inputs (NumPy, CuPy or
    torch), at ``indices`` only: only the sampled elements are copied and computed.

    The gradient of a mean over N elements is the per-element gradient times 1/N: the reference
    evaluated on the sampled elements with reduction='sum' and grad_output=1/N gives the same
    float64 values as on all N with reduction='mean'."""
    n = size(arrays[0])
    sampled = [take(a, indices) for a in arrays]
    if op.name in ("sigmoid", "sigmoid_backward"):
        return getattr(reference, op.name)(*sampled)
    grad_name = op.name.replace("_and_grad", "_grad")
    if not grad_name.endswith("_grad"):
        raise ValueError(f"{op.name} writes no array")
    return getattr(reference, grad_name)(*sampled, reduction="sum", grad_output=1.0 / n)


def array_tolerance(dtype, n: int, op, impl: str = "fastloss") -> tuple[float, float]:
    """(rtol, atol) of one element of ``op``'s array computed by ``impl``."""
    dtype = np.dtype(dtype).name
    rtol = ARRAY_RTOL_BY_IMPL.get(impl, ARRAY_RTOL)[dtype]
    scale = 1.0 if op.name.startswith("sigmoid") else 1.0 / n
    return rtol, ARRAY_ATOL[dtype] * scale


def assert_array_close(got, expected, rtol: float, atol: float, what: str = "array",
                       indices=None) -> None:
    """|got - expected| <= atol + rtol * |expected| for every element; NaN and inf must match.
    The message names the number of elements out of tolerance and the worst one (its index in
    the whole array when ``indices``, the sampled positions, are given)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    expected = np.asarray(expected, dtype=np.float64).reshape(-1)
    assert got.shape == expected.shape, f"{what}: {got.size} elements, expected {expected.size}"
    with np.errstate(invalid="ignore"):
        error = np.abs(got - expected)
        bound = atol + rtol * np.abs(expected)
        same_special = ((np.isnan(got) & np.isnan(expected))
                        | (np.isinf(expected) & (got == expected)))
        bad = ~(error <= bound) & ~same_special
    if bad.any():
        worst = int(np.flatnonzero(bad)[np.argmax(np.where(bad, error - bound, -np.inf)[bad])])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.size} elements out of tolerance (rtol={rtol:g}, "
            f"atol={atol:g}); worst at index {worst if indices is None else int(indices[worst])}: "
            f"got {got[worst]!r}, expected {expected[worst]!r}")


def summation_factor(method: str, n: int) -> float:
    """k with |computed sum - exact sum| <= k * eps * (sum of |parts|), first order.

    sequential: a running sum, n - 1 roundings on the way (Higham, Accuracy and Stability of
        Numerical Algorithms, 4.2); of no use once n * eps passes 1, but still finite.
    pairwise: NumPy's pairwise_sum adds a block of up to 128 elements with 8 interleaved
        accumulators (at most 15 + 3 + 7 roundings on a path), halving larger ranges: one more
        per level. 128 + ceil(log2 n) covers it.
    cascade: PyTorch's CPU sum (SumKernel.cpp, multi_row_sum) adds runs of L = 2^max(4,
        ceil(log2 m) // 4) values at each of 4 levels over m <= n / 16 rows (4 or more vector
        lanes x 4 interleaved rows); the top level takes up to 16 L values when log2 m is not a
        multiple of 4. Then the tails, rows and lanes (< 64) and one partial sum per thread.
    """
    if n <= 1:
        return 0.0
    if method == "sequential":
        return float(n - 1)
    if method == "pairwise":
        return 128.0 + math.ceil(math.log2(n))
    if method == "cascade":
        level = 2 ** max(4, math.ceil(math.log2(max(n // 16, 2))) // 4)
        return 20.0 * level + 64 + (os.cpu_count() or 1)
    raise ValueError(f"unknown summation method {method!r}")


def fastloss_loss_bound(op_name: str, dtype, n: int, exact: float) -> float:
    """How far fastloss's reduced loss may be from the exact value: its documented guarantee."""
    if np.dtype(dtype) == np.float64:
        return FASTLOSS_RTOL_F64 * abs(exact)
    ulps = 1 if op_name.startswith("mse") or n >= 100_000 else 4
    return ulps * float(np.spacing(np.abs(np.float32(exact))))


def peer_loss_bound(summation: Summation, dtype, n: int, exact: float,
                    definition: float = 0.0) -> float:
    """A bound on |peer's mean - exact mean| for non-negative terms (so the mean of |terms| is
    |exact|): the terms' own rounding, the sum's, the division by N, and ``definition``, how far
    the peer's definition may move the mean (crysx_nn's epsilon, see crysx_definition_offset)."""
    term_eps, sum_eps = eps(dtype), eps(summation.accumulator or dtype)
    magnitude = abs(exact)
    return (TERM_ULPS * term_eps * (magnitude + 1.0)
            + summation_factor(summation.method, n) * sum_eps * summation.parts * magnitude
            + term_eps * magnitude + definition)


def crysx_definition_offset(op, arrays, chunk: int = 1 << 21) -> float:
    """crysx_nn's BCE takes log(q + 1e-7) for the probability q of each term's class, moving the
    term by at most 1e-7 / q; for the logits, q = sigmoid(+-z) is rounded to the input dtype first
    (a relative error of eps, so up to eps / q more after log(1 - s)). The mean of those bounds
    over the inputs, in chunks (float64 temporaries of 16 MB)."""
    if op.name.startswith("mse"):
        return 0.0
    per_q = CRYSX_EPSILON + (eps(arrays[0].dtype) if "logits" in op.name else 0.0)
    total = 0.0
    for start in range(0, arrays[0].size, chunk):
        first, labels = (np.asarray(a[start:start + chunk], dtype=np.float64) for a in arrays)
        if "logits" in op.name:
            q = reference.sigmoid(np.where(labels == 1, first, -first))
        else:
            q = np.where(labels == 1, first, 1.0 - first)
        total += math.fsum(per_q / q)
    return total / arrays[0].size


def assert_loss_close(value: float, exact: float, bound: float, what: str = "loss") -> None:
    value = float(value)
    assert math.isfinite(value), f"{what}: {value!r}, expected {exact!r}"
    assert abs(value - exact) <= bound, (
        f"{what}: {value!r} is {abs(value - exact):.3e} from the exact {exact!r}; the bound is "
        f"{bound:.3e} ({abs(value - exact) / bound:.2f}x over)")


def split_result(op, result):
    """(loss or None, array or None) out of what a case returns."""
    if op.reduces and op.writes_array:
        loss, array = result
        return loss, array
    return (result, None) if op.reduces else (None, result)


def take(array, indices: np.ndarray) -> np.ndarray:
    """array.reshape(-1)[indices] on the host: NumPy, torch (any device) or CuPy. Only the
    sampled elements leave the device."""
    if hasattr(array, "detach"):  # torch
        import torch
        flat = array.detach().reshape(-1)
        return flat[torch.as_tensor(indices, device=flat.device)].cpu().numpy()
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy.asnumpy(array.reshape(-1)[cupy.asarray(indices)])
    return np.asarray(array).reshape(-1)[indices]


def host_scalar(value) -> float:
    """A loss as a float: a NumPy scalar, a 0-d torch tensor (any device) or 0-d CuPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    elif type(value).__module__.startswith("cupy"):
        value = value.get()
    return float(np.asarray(value))


def host_copy(array) -> np.ndarray:
    """A whole array on the host (NumPy, CuPy or torch on any device): for the exact losses."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy.asnumpy(array)
    return np.asarray(array)


@dataclass(frozen=True)
class Expected:
    """What one op must give on one set of inputs: the exact loss (for ops that reduce) and the
    reference array at the sampled indices (for ops that write one)."""
    n: int
    exact_loss: float | None
    indices: np.ndarray
    array: np.ndarray | None


def expected_of(op, arrays, exact_loss: float | None) -> Expected:
    """``Expected`` of ``op`` on ``arrays`` (NumPy, CuPy or torch), given its exact loss (e.g.
    ``fastloss.bench.inputs.exact_mean``; None for ops that do not reduce)."""
    if op.reduces and exact_loss is None:
        raise ValueError(f"{op.name} reduces: its exact loss is needed")
    n = size(arrays[0])
    indices = sample_indices(n)
    return Expected(n, exact_loss if op.reduces else None, indices,
                    reference_at(op, arrays, indices) if op.writes_array else None)


def assert_result(op, result, expected: Expected, *, dtype, impl: str,
                  summation: Summation | None = None, definition: float = 0.0) -> None:
    """One benchmark result (a loss, an array or a (loss, array) pair; NumPy, CuPy or torch)
    against ``expected``: the loss within fastloss's guarantee (``summation`` None) or within the
    peer's bound, the array element by element at the sampled indices."""
    loss, array = split_result(op, result)
    n = expected.n
    if loss is not None:
        assert expected.exact_loss is not None, f"{op.name}: no exact loss to check against"
        bound = (fastloss_loss_bound(op.name, dtype, n, expected.exact_loss) if summation is None
                 else peer_loss_bound(summation, dtype, n, expected.exact_loss, definition))
        assert_loss_close(host_scalar(loss), expected.exact_loss, bound,
                          f"{impl} {op.name} loss")
    if array is not None:
        assert expected.array is not None, f"{op.name}: no reference array to check against"
        assert size(array) == n, (
            f"{impl} {op.name} array: {size(array)} elements, expected {n}")
        rtol, atol = array_tolerance(dtype, n, op, impl)
        assert_array_close(take(array, expected.indices), expected.array, rtol, atol,
                           f"{impl} {op.name} array", expected.indices)
