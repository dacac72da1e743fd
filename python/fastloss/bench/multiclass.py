"""The multi-class track (``python -m fastloss bench --multiclass``, bench/test_bench_multiclass.py):
softmax cross-entropy of (N, C) float32 logits and int64 class indices at (4096, 1000),
(10^6, 10) and (64, 10^5), fastloss against PyTorch, JAX (optional) and NumPy.

- ops: ``cross_entropy`` (the mean loss alone) and ``cross_entropy_and_grad`` (fastloss's fused
  pass into ``out=``; PyTorch's forward + backward through autograd, as in training; JAX's
  ``value_and_grad`` under jit; NumPy's loss and gradient from one log-sum-exp).
- bytes: the logits read once and the targets (8 bytes a row) read once, plus the gradient
  written once for the fused op; held against the read ceiling (the loss) or the copy ceiling
  (the fused op) measured in the same run (``fastloss.bench.bandwidth``).
- timing: interleaved rounds, each round calling every implementation once (a drift of the
  shared machine hits them alike); the minimum of the rounds is kept. Every array is at least
  16 MB: beyond the cache, no rotation of copies is needed.
- stability: the float32 mean over rows that are all equal (N = 10^5 and 10^6 rows of 10
  classes), where per-row errors cannot average out, against the exact value, in ulps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

import fastloss
from fastloss import reference
from fastloss.bench.peers import Unavailable, jax_multiclass, numpy_formulas, torch_calls
from fastloss.bench.report import format_seconds, grid

SHAPES = ((4096, 1000), (10**6, 10), (64, 10**5))
OPS = ("cross_entropy", "cross_entropy_and_grad")
IMPLEMENTATIONS = ("fastloss", "torch", "jax", "numpy")
STABILITY_ROWS = (10**5, 10**6)


def _fastloss_and_grad(x, y):
    out = np.empty_like(x)
    return lambda: fastloss.cross_entropy_and_grad(x, y, out=out)


FASTLOSS = {
    "cross_entropy": lambda x, y: lambda: fastloss.cross_entropy(x, y),
    "cross_entropy_and_grad": _fastloss_and_grad,
}


def builders(impl: str) -> dict:
    """op name -> build(logits, labels) -> run(); raises Unavailable for a missing peer."""
    if impl == "fastloss":
        return FASTLOSS
    if impl == "torch":
        return torch_calls.multiclass_builders()
    if impl == "jax":
        return jax_multiclass.multiclass_builders()
    if impl == "numpy":
        return numpy_formulas.MULTICLASS
    raise ValueError(f"unknown implementation {impl!r}; known: {', '.join(IMPLEMENTATIONS)}")


def make_inputs(shape, seed=0):
    """float32 logits (standard normal times 2) and int64 class indices of one shape."""
    rng = np.random.default_rng([16, seed])
    rows, classes = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 2
    return x, rng.integers(0, classes, rows)


def bytes_moved(op: str, shape) -> int:
    rows, classes = shape
    return rows * classes * 4 + rows * 8 + (rows * classes * 4 if op.endswith("_and_grad") else 0)


def ceiling_of(op: str) -> str:
    return "copy_gbs" if op.endswith("_and_grad") else "read_gbs"


def exact_mean(x, y, chunk_rows=65536) -> float:
    """The exact mean loss: fastloss.reference's float64 row losses, math.fsum, in chunks."""
    terms = []
    for start in range(0, len(y), chunk_rows):
        terms.extend(reference.cross_entropy(x[start:start + chunk_rows],
                                             y[start:start + chunk_rows],
                                             reduction="none").tolist())
    return math.fsum(terms) / len(y)


def loss_of(result) -> float:
    """The loss of a result: a scalar, a 0-d tensor or array, or the first of (loss, grad)."""
    if isinstance(result, tuple):
        result = result[0]
    return float(np.asarray(result.detach() if hasattr(result, "detach") else result))


def ulps_from(value: float, exact: float) -> float:
    return abs(value - exact) / float(np.spacing(np.float32(abs(exact))))


def time_interleaved(cases: dict, rounds: int) -> dict:
    """{name: the minimum seconds of one call over ``rounds`` rounds}, every round calling each
    case once in turn."""
    best = {name: math.inf for name in cases}
    for case in cases.values():  # warm-up: page faults, thread pools, JIT
        case()
    for _ in range(rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@dataclass
class Row:
    op: str
    shape: tuple
    impl: str
    seconds: float
    gbs: float
    ceiling_fraction: float
    vs_torch: float | None  # PyTorch's time / this time
    error_ulps: float


def run(shapes=SHAPES, impls=IMPLEMENTATIONS, ceilings=None, rounds=5,
        step=lambda message: None):
    """Rows of every (shape, op, implementation) that runs here, and {impl: why not} for the
    others."""
    rows, missing = [], {}
    for shape in shapes:
        x, y = make_inputs(shape)
        exact = exact_mean(x, y)
        for op in OPS:
            cases = {}
            for impl in impls:
                try:
                    cases[impl] = builders(impl)[op](x, y)
                except Unavailable as reason:
                    missing[impl] = str(reason)
            seconds = time_interleaved(cases, rounds)
            errors = {impl: ulps_from(loss_of(case()), exact) for impl, case in cases.items()}
            del cases
            torch_seconds = seconds.get("torch")
            for impl, s in seconds.items():
                gbs = bytes_moved(op, shape) / s / 1e9
                rows.append(Row(op, shape, impl, s, gbs,
                                gbs / ceilings[ceiling_of(op)] if ceilings else math.nan,
                                torch_seconds / s if torch_seconds else None, errors[impl]))
            step(f"{op} {shape}: " + ", ".join(f"{impl} {format_seconds(s)}"
                                               for impl, s in seconds.items()))
    return rows, missing


def format_table(rows) -> str:
    header = ("op", "shape", "impl", "time", "GB/s", "% ceil", "vs torch", "err (ulp)")
    lines = [(row.op, f"({row.shape[0]}, {row.shape[1]})", row.impl, format_seconds(row.seconds),
              f"{row.gbs:.2f}", f"{100 * row.ceiling_fraction:.0f}%",
              f"{row.vs_torch:.2f}x" if row.vs_torch else "-", f"{row.error_ulps:.2f}")
             for row in rows]
    return "\n".join(grid(header, lines))


def stability(impls=IMPLEMENTATIONS, row_counts=STABILITY_ROWS, classes=10):
    """[(rows, impl, float32 mean, exact, ulps)]: the mean over equal rows (the exact mean is
    the one row's loss), each implementation's cross_entropy op."""
    row = np.linspace(-3, 2, classes).astype(np.float32)
    exact = reference.cross_entropy(row[None], np.array([classes // 3]))
    results = []
    for n in row_counts:
        x = np.broadcast_to(row, (n, classes)).copy()
        y = np.full(n, classes // 3)
        for impl in impls:
            try:
                value = loss_of(builders(impl)["cross_entropy"](x, y)())
            except Unavailable:
                continue
            results.append((n, impl, value, exact, ulps_from(value, exact)))
    return results


def format_stability(results) -> str:
    header = ("rows x 10", "impl", "float32 mean", "exact", "err (ulp)")
    return "\n".join(grid(header, [(str(n), impl, f"{value:.9g}", f"{exact:.12g}",
                                    f"{error:.2f}") for n, impl, value, exact, error in results],
                          left=2))
