"""The stability track: how far each implementation's float32 loss is from the exact value as N
grows, on the classic failure, and whether its bits depend on the thread count.

Exact values are ``fastloss.reference``'s float64 per-element terms summed with math.fsum
(``fastloss.bench.inputs.exact_mean``). Errors are relative and in ulps of float32 at the exact
value. A float32 running sum loses about one ulp of the total per element once the total dwarfs
the terms, so an error that grows with N is the accumulator's, not the formula's.

Used by ``python -m fastloss bench`` and ``bench/test_bench_stability.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from fastloss import _cpu, reference
from fastloss.bench.cases import make_case, runnable_cases
from fastloss.bench.errors import loss_value, relative_error, ulps
from fastloss.bench.inputs import Inputs
from fastloss.bench.ops import OPS
from fastloss.bench.peers import Unavailable
from fastloss.bench.report import grid, size_label

DTYPE = "float32"
# Ordered so that each op's arrays can be freed once no later op reads them.
LOSSES = ("mse_loss", "binary_cross_entropy_with_logits", "binary_cross_entropy")
QUICK_SIZES = (10**6,)
FULL_SIZES = (10**6, 10**7, 10**8)
BIG_SIZES = FULL_SIZES + (4 * 10**8,)  # 1.6 GB per float32 array
CLASSIC_N = 2**25
RANDOM, CLASSIC = "random", "2^25 x 0.1"
THREAD_COUNTS = (1, 2)
# Every thread pool a peer may use: fastloss and PyTorch (OpenMP), Numba, NumPy's BLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


class ClassicInputs:
    """The classic failure, for each loss: 2^25 equal terms of about 0.1 (one term is 0.1 in
    float32 for MSE, -log(0.9) for the BCE losses). A float32 running sum stops growing at 2^21,
    where half an ulp exceeds the term: 37.5 % low. The exact mean is the term itself (2^25 is
    a power of two, so the fsum of the copies divided by N is exact)."""

    _CONSTANTS = {"mse_loss": (math.sqrt(0.1), 0.0),
                  "binary_cross_entropy": (0.9, 1.0),
                  "binary_cross_entropy_with_logits": (math.log(9.0), 1.0)}

    def __init__(self, n: int = CLASSIC_N):
        self.dtype = np.dtype(DTYPE)
        self.n = n
        self._latest: tuple = (None, None)

    def arrays(self, op) -> tuple:
        if self._latest[0] != op.name:
            self._latest = (None, None)
            self._latest = (op.name, tuple(np.full(self.n, value, dtype=self.dtype)
                                           for value in self._CONSTANTS[op.name]))
        return self._latest[1]

    def exact_loss(self, op) -> float:
        one_term = tuple(a[:1] for a in self.arrays(op))
        return float(getattr(reference, op.name)(*one_term))

    def drop(self, *names) -> None:
        """Nothing to do: only the latest loss's arrays are kept."""


@dataclass
class Accuracy:
    op: str
    data: str  # RANDOM or CLASSIC
    n: int
    impl: str
    value: float
    exact: float

    @property
    def rel_error(self) -> float:
        return relative_error(self.value, self.exact)

    @property
    def ulps(self) -> float:
        return ulps(self.value, self.exact, DTYPE)


def datasets(sizes, classic_n=CLASSIC_N):
    """(data, N, inputs factory) in the order they are run: random data as N grows, then the
    classic failure (smaller only in the CLI's own test, where it cannot fail)."""
    return ([(RANDOM, n, lambda n=n: Inputs(DTYPE, n)) for n in sizes]
            + [(CLASSIC, classic_n, lambda: ClassicInputs(classic_n))])


def run_stability(sizes, impls, step=lambda message: None, classic_n=CLASSIC_N):
    """Each impl's float32 mean of each loss on each data set: (Accuracy list, missing impls).
    ``step`` is called once per (data set, loss) with a progress message."""
    results, missing = [], {}
    for data, n, make_inputs in datasets(sizes, classic_n):
        inputs = make_inputs()
        for index, op_name in enumerate(LOSSES):
            op = OPS[op_name]
            exact = inputs.exact_loss(op)
            for impl, case in runnable_cases(impls, op, inputs, missing):
                results.append(Accuracy(op_name, data, n, impl, loss_value(case()), exact))
                del case  # its output buffers, before the next impl makes its own
            still_read = {name for later in LOSSES[index + 1:] for name in OPS[later].arrays}
            inputs.drop(*(set(op.arrays) - still_read))
            step(f"stability {op_name} {data} N={size_label(n)}")
        del inputs
    return results, missing


# ---- determinism: the same bits with 1 and with 2 threads? ------------------------------------------
def _child(arguments: str) -> None:
    """In a subprocess whose thread counts are set by the environment: each impl's loss bits."""
    request = json.loads(arguments)
    inputs = Inputs(DTYPE, request["n"])
    bits = {}
    for impl in request["impls"]:
        try:
            bits[impl] = {op: float.hex(loss_value(make_case(impl, OPS[op], inputs)()))
                          for op in LOSSES}
        except Unavailable:
            continue
    threads = {"fastloss": _cpu.build_info()["max_threads"]}
    if "numba" in sys.modules:
        threads["numba"] = sys.modules["numba"].get_num_threads()
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    print(json.dumps({"bits": bits, "threads": threads}))


class Determinism:
    """Each thread count in its own interpreter (OpenMP and Numba read their thread count once,
    at start-up), all started at once: other work that is not timed may run meanwhile."""

    def __init__(self, impls, n: int, thread_counts=THREAD_COUNTS):
        request = json.dumps({"impls": list(impls), "n": n})
        code = "import sys; from fastloss.bench.stability import _child; _child(sys.argv[1])"
        self._children = {}
        for count in thread_counts:
            env = {**os.environ, **{name: str(count) for name in THREAD_VARIABLES}}
            self._children[count] = subprocess.Popen(
                [sys.executable, "-c", code, request], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)

    def result(self) -> dict:
        """{"bits": {threads: {impl: {op: hex}}}, "threads": {threads: {library: count}}}"""
        outcome: dict[str, dict] = {"bits": {}, "threads": {}}
        for count, child in self._children.items():
            stdout, stderr = child.communicate(timeout=900)
            if child.returncode != 0:
                raise RuntimeError(f"determinism check with {count} threads failed "
                                   f"(status {child.returncode}):\n{stderr[-2000:]}")
            report = json.loads(stdout.strip().splitlines()[-1])
            outcome["bits"][count] = report["bits"]
            outcome["threads"][count] = report["threads"]
        return outcome


def determinism(impls, n: int) -> dict:
    """``Determinism(impls, n).result()``: the bits of each loss with 1 and with 2 threads."""
    return Determinism(impls, n).result()


def same_bits(outcome: dict) -> dict:
    """{impl: {op: True when every thread count gave the same bits}}."""
    runs = list(outcome["bits"].values())
    return {impl: {op: len({run[impl][op] for run in runs}) == 1 for op in LOSSES}
            for impl in runs[0] if all(impl in run for run in runs)}


# ---- tables -------------------------------------------------------------------------------------------
def _format_ulps(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.2g}"


def format_stability(results) -> str:
    """Two grids, loss x data x N against impl: error in ulps, then relative error."""
    impls = list(dict.fromkeys(r.impl for r in results))
    keys = list(dict.fromkeys((r.op, r.data, r.n) for r in results))
    by_key = {(r.op, r.data, r.n, r.impl): r for r in results}
    header = ["loss", "data", "N"] + impls
    out = []
    for title, cell in (("error in float32 ulps of the exact mean", lambda r: _format_ulps(r.ulps)),
                        ("relative error", lambda r: f"{r.rel_error:.1e}")):
        rows = [[op, data, size_label(n)] + [cell(by_key[op, data, n, impl])
                                             if (op, data, n, impl) in by_key else "-"
                                             for impl in impls]
                for op, data, n in sorted(keys, key=lambda key: (LOSSES.index(key[0]),
                                                                  key[1] == CLASSIC, key[2]))]
        out += [f"{title}:"] + grid(header, rows) + [""]
    return "\n".join(out).rstrip()


def format_determinism(outcome: dict, n: int) -> str:
    same = same_bits(outcome)
    counts = " and ".join(str(k) for k in outcome["bits"])
    header = ["impl"] + list(LOSSES)
    rows = [[impl] + ["same" if same[impl][op] else "DIFFERENT" for op in LOSSES]
            for impl in same]
    threads = "; ".join(f"{k}: " + ", ".join(f"{lib} {c}" for lib, c in libs.items())
                        for k, libs in outcome["threads"].items())
    lines = [f"bits of each float32 mean with {counts} threads (N = {size_label(n)}, random "
             f"data; {'/'.join(THREAD_VARIABLES)} set per run):"]
    lines += grid(header, rows, left=1)
    lines.append(f"threads reported by the runs: {threads}")
    return "\n".join(lines)
