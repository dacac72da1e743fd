"""How a case is timed on the CPU: a warm-up call, the median of samples that each loop long
enough to rise above the timer, and inputs rotated through copies so that no call finds them
cached by the previous one."""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import time
from typing import Callable

from fastloss._machine import last_level_cache_bytes
from fastloss.bench.cases import make_case


@functools.cache
def rotation_bytes() -> int:
    """Twice the last-level cache: the bytes the timed calls' inputs cycle through."""
    return 2 * last_level_cache_bytes()


def rotation_count(op, inputs) -> int:
    """How many copies of the op's inputs (and outputs) the timed calls cycle through: enough
    to fill twice the last-level cache, so that no call finds its data still cached from the
    previous one (as a training step finds fresh activations). 1 from there on."""
    footprint = op.bytes_moved(inputs.n, inputs.dtype.itemsize)
    return max(1, math.ceil(rotation_bytes() / footprint))


def make_timed_case(impl: str, op, inputs) -> Callable:
    """``make_case`` cycling through ``rotation_count`` copies of the inputs. The copies hold
    the same values, so every call returns the same result."""
    first = make_case(impl, op, inputs)
    copies = rotation_count(op, inputs)
    if copies == 1:
        return first
    cases = [first] + [make_case(impl, op, inputs, tuple(a.copy() for a in inputs.arrays(op)))
                       for _ in range(copies - 1)]
    cycle = itertools.cycle(cases)
    return lambda: next(cycle)()


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


def interleaved_minimums(cases: dict, rounds: int = 15, min_sample_s: float = 2e-3,
                         settle_s: float = 0.0) -> dict:
    """{name: least seconds per call} of zero-argument ``cases``, timed in interleaved rounds:
    each round times every case once (a loop of calls lasting >= ``min_sample_s``), so a drift
    of the machine (the memory ceiling of a shared VM moves within minutes) hits every case
    alike; the minimum over the rounds is the sample least disturbed by other processes.

    ``settle_s``: a pause before each sample, for cases whose work goes on after they return
    and would land in the next case's sample. At N = 1e8 a JAX call leaves one of two cores
    busy for a while after it (its fresh 400 MB outputs are freed, its pool winds down): the
    sample after it, whichever case, ran 30-40 % slower, the copy probe 24.8 GB/s instead of
    32.4 (bench/NOTES.md)."""
    loops = {}
    for name, case in cases.items():
        case()  # warm-up: page faults of fresh outputs, thread pools, JIT compiles
        start = time.perf_counter()
        case()
        loops[name] = max(1, math.ceil(min_sample_s / max(time.perf_counter() - start, 1e-7)))
    best = dict.fromkeys(cases, math.inf)
    for _ in range(rounds):
        for name, case in cases.items():
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            for _ in range(loops[name]):
                case()
            best[name] = min(best[name], (time.perf_counter() - start) / loops[name])
    return best
