"""Processes forked after the OpenMP kernels ran (multiprocessing's 'fork' start method) can
call the kernels too: no hang, the same bits.

libgomp's thread pool does not survive fork(): a child entering a parallel region its parent
had used waits forever for threads that no longer exist. fastloss registers a pthread_atfork
child handler, and every kernel of a forked child takes its serial path (csrc/kernels.h,
``openmp_usable``); that path walks the same fixed chunks, so the bits are those of the parent.
Each pool below is given a deadline, so a regression shows up as a failure, not a stuck run.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

import fastloss
import fastloss._cpu
from _helpers import python_env, run_python_json

# Python 3.12+ warns when a process with threads (here: libgomp's) forks; that risk is the
# point of these tests.
pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")

CHILD_DEADLINE_S = 60
N = 200_003  # above the parallel threshold: in the parent this runs on the OpenMP threads


def kernel_results(seed):
    """Every kind of kernel on one seeded data set, as raw bytes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(N).astype(np.float32)
    y = rng.random(N).astype(np.float32)
    p = rng.random(N).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=N).astype(np.float32)
    z = x.astype(np.float64)
    loss, grad = fastloss.binary_cross_entropy_with_logits_and_grad(x, y, weight=w,
                                                                    pos_weight=np.float32(2.0))
    s = fastloss.sigmoid(z)
    results = {
        "mse": fastloss.mse_loss(x, y),
        "mse_sum64": fastloss.mse_loss(z, y.astype(np.float64), reduction="sum"),
        "bce": fastloss.binary_cross_entropy(p, y),
        "bce_grad": fastloss.binary_cross_entropy_grad(p, y),
        "logits_loss": loss,
        "logits_grad": grad,
        "mse_none": fastloss.mse_loss(x, y, reduction="none"),
        "sigmoid": s,
        "sigmoid_backward": fastloss.sigmoid_backward(z, s),
        "stream_read": np.float64(fastloss._cpu.stream_read(x)),
    }
    return {key: np.asarray(value).tobytes() for key, value in results.items()}


def child_call(seed):
    info = fastloss._cpu.build_info()
    assert info["forked_child"]
    return kernel_results(seed), info["max_threads"]


def run_in_fork_pool(seeds, processes=2):
    pool = multiprocessing.get_context("fork").Pool(processes)
    try:
        return pool.map_async(child_call, seeds).get(timeout=CHILD_DEADLINE_S)
    except multiprocessing.TimeoutError:
        pytest.fail(f"forked children did not finish within {CHILD_DEADLINE_S} s: "
                    "an OpenMP region hangs after fork")
    finally:
        pool.terminate()
        pool.join()


def test_forked_children_get_the_parents_bits():
    threads_before = fastloss._cpu.build_info()["max_threads"]
    assert not fastloss._cpu.build_info()["forked_child"]
    seeds = [11, 12, 13, 14]
    expected = [kernel_results(seed) for seed in seeds]  # the parent uses its OpenMP threads
    got = run_in_fork_pool(seeds)
    for seed, want, (results, child_threads) in zip(seeds, expected, got):
        differing = [key for key in want if want[key] != results[key]]
        assert not differing, f"seed {seed}: the forked child's bits differ for {differing}"
        assert child_threads == 1, "a forked child must run its kernels serially"
    # the handler runs in the child only: the parent keeps its threads, and its results
    assert fastloss._cpu.build_info()["max_threads"] == threads_before
    assert kernel_results(seeds[0]) == expected[0]


def test_forked_children_of_forked_children():
    """A pool started inside a forked worker (grand-children) still works."""
    kernel_results(1)
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()

    def middle():
        kernel_results(2)
        child_end.send([results for results, _ in run_in_fork_pool([3, 4])])

    process = context.Process(target=middle)
    process.start()
    try:
        assert parent_end.poll(2 * CHILD_DEADLINE_S), "the forked worker's own pool hung"
        grandchildren = parent_end.recv()
    finally:
        process.join(CHILD_DEADLINE_S)
        if process.is_alive():
            process.kill()
    assert grandchildren == [kernel_results(3), kernel_results(4)]


# The hang needs a parent whose OpenMP pool has more than one thread: on a one-core machine
# the in-process test above would pass without ever exercising it, so this one sets the count.
FORCED_THREADS_CODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import fastloss._cpu
import test_fork_safety as t

expected = t.kernel_results(21)
(results, child_threads), = t.run_in_fork_pool([21], processes=1)
print(json.dumps({"parent_threads": fastloss._cpu.build_info()["max_threads"],
                  "child_threads": child_threads, "same": results == expected}))
"""


def test_fork_after_a_three_thread_parallel_region():
    printed = run_python_json(FORCED_THREADS_CODE, python_env(OMP_NUM_THREADS="3"),
                              str(Path(__file__).resolve().parent),
                              timeout=2 * CHILD_DEADLINE_S)
    assert printed == {"parent_threads": 3, "child_threads": 1, "same": True}
