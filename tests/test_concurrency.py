"""Eight Python threads calling the kernels at once, each on its own arrays, get exactly the
results of one thread calling them alone: with the default OpenMP thread count and with
OMP_NUM_THREADS=1.

Calls at or above the parallel threshold release the GIL, so those run truly at the same time
(each Python thread then drives an OpenMP team of its own); smaller calls keep the GIL and
interleave. Both kinds are mixed here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

import fastloss
import fastloss._cpu
from _helpers import python_env, run_python_json

THREADS = 8
REPEATS = 4
# Per thread: sizes on both sides of the parallel threshold (32768) and of a chunk (8192).
SIZES = [16, 1000, 8193, 32_768, 40_000, 100_003, 5, 250_001]


def thread_results(index):
    """What thread ``index`` computes: every public function on arrays of its own."""
    n = SIZES[index]
    dtype = np.float32 if index % 2 == 0 else np.float64
    rng = np.random.default_rng(1000 + index)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.random(n).astype(dtype)
    w = rng.uniform(0.5, 2.0, size=n).astype(dtype)
    grad_out = np.empty_like(x)
    loss, grad = fastloss.mse_loss_and_grad(x, y, weight=w, out=grad_out)
    results = {
        "mse": fastloss.mse_loss(x, y),
        "mse_and_grad": (loss, grad.copy()),
        "mse_grad_none": fastloss.mse_loss_grad(x, y, reduction="none", grad_output=x),
        "bce": fastloss.binary_cross_entropy(y, (x > 0).astype(dtype), reduction="sum"),
        "bce_and_grad": fastloss.binary_cross_entropy_and_grad(y, y[::-1], weight=w),
        "logits": fastloss.binary_cross_entropy_with_logits(x, y, pos_weight=w,
                                                            reduction="none"),
        "logits_grad": fastloss.binary_cross_entropy_with_logits_grad(x, y, weight=w),
        "sigmoid": fastloss.sigmoid(x),
        "sigmoid_backward": fastloss.sigmoid_backward(x, fastloss.sigmoid(y)),
    }
    return {key: _bytes_of(value) for key, value in results.items()}


def _bytes_of(value):
    parts = value if isinstance(value, tuple) else (value,)  # (loss, grad) pairs
    return b"".join(np.asarray(part).tobytes() for part in parts)


def concurrent_mismatches():
    """Runs thread_results in 8 threads at once, REPEATS times each; returns what differed from
    the single-threaded results (a list of strings; empty when all agree)."""
    expected = [thread_results(i) for i in range(THREADS)]
    start = threading.Barrier(THREADS)
    problems = []

    def work(index):
        try:
            start.wait()
            for repeat in range(REPEATS):
                got = thread_results(index)
                problems.extend(f"thread {index} repeat {repeat}: {key}"
                                for key in expected[index] if got[key] != expected[index][key])
        except Exception as error:  # noqa: BLE001 (reported to the main thread)
            problems.append(f"thread {index}: {error!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    problems.extend(f"thread {i} did not finish" for i, t in enumerate(threads) if t.is_alive())
    return problems


def test_eight_threads_get_the_single_threaded_bits():
    assert any(n >= fastloss._cpu.build_info()["parallel_threshold"] for n in SIZES)
    assert concurrent_mismatches() == []


ONE_OPENMP_THREAD_CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import fastloss._cpu
import test_concurrency as t
print(json.dumps({"max_threads": fastloss._cpu.build_info()["max_threads"],
                  "problems": t.concurrent_mismatches()}))
"""


def test_eight_threads_with_omp_num_threads_1():
    printed = run_python_json(ONE_OPENMP_THREAD_CODE, python_env(OMP_NUM_THREADS="1"),
                              str(Path(__file__).resolve().parent))
    assert printed == {"max_threads": 1, "problems": []}
