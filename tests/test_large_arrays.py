"""N = 2**31 + 5 float32 elements through mse_loss and sigmoid on the CPU: exact results, every
element in its place, nothing truncated to 32 bits.

Opt-in (``pytest --largemem``; .ci/run runs it once): the input alone is 8.6 GB. The target
is ``numpy.zeros`` with a few values written near index 2**31 and at the end, so its untouched
pages stay unallocated (the kernel maps reads of them to its zero page) and the peak stays near
one array; sigmoid runs in place (``out=x``, allowed). Measured on the 2-core CI machine:
27-36 s and 8.3 GiB peak RSS.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest

import fastloss

pytestmark = pytest.mark.largemem

N = 2**31 + 5
GIB = 2**30
# 3 * 2**22 elements: a multiple of the pattern's period, so every block starts in phase
BLOCK = 3 * 2**22
# The input repeats (-0.5, 0, 0.5); these places hold other values, straddling index 2**31 (where
# a 32-bit index would wrap) and ending the array (the last, 5-element chunk).
MARKERS = [2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, N - 3, N - 1]


def _pattern(length):
    return np.resize(np.array([-0.5, 0.0, 0.5], dtype=np.float32), length)


def _marker_values(index):
    """(input, target) at marker ``index``: small integers and halves, so sums stay exact."""
    k = MARKERS.index(index)
    return np.float32(k + 1.5), np.float32(-(k + 2))


def _available_memory():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def test_two_to_the_31_plus_5_float32_elements():
    needed = 10 * GIB  # 8.6 GB for the input, the rest for the interpreter and slack
    available = _available_memory()
    if available < needed:
        pytest.fail(f"this test needs {needed / GIB:.0f} GiB of available memory, the machine "
                    f"has {available / GIB:.1f} GiB: run it on a larger machine, or without "
                    f"--largemem")
    started = time.perf_counter()
    x = np.empty(N, dtype=np.float32)
    pattern = _pattern(BLOCK)
    for start in range(0, N, BLOCK):
        stop = min(N, start + BLOCK)
        x[start:stop] = pattern[:stop - start]
    y = np.zeros(N, dtype=np.float32)
    for index in MARKERS:
        x[index], y[index] = _marker_values(index)

    # the exact sum: a quarter for each pattern element that is not 0, then the markers'
    # own terms instead of the pattern's; every partial sum is a multiple of 0.25 below 2**51,
    # so the kernels' double sums are exact and the float32 results are this, rounded
    nonzero = N - (N + 2) // 3
    exact = 0.25 * nonzero
    for index in MARKERS:
        pattern_term = float(_pattern(index % 3 + 1)[-1]) ** 2
        marker_input, marker_target = _marker_values(index)
        exact += (float(marker_input) - float(marker_target)) ** 2 - pattern_term

    timer = time.perf_counter()
    total = fastloss.mse_loss(x, y, reduction="sum")
    mean = fastloss.mse_loss(x, y)
    mse_seconds = time.perf_counter() - timer
    assert total == np.float32(exact), f"sum {total!r}, exact {exact!r}"
    assert mean == np.float32(exact / N), f"mean {mean!r}, exact {exact / N!r}"
    del y

    timer = time.perf_counter()
    assert fastloss.sigmoid(x, out=x) is x
    sigmoid_seconds = time.perf_counter() - timer
    expected_block = fastloss.sigmoid(pattern)  # the same kernel's serial path, checked elsewhere
    for start in range(0, N, BLOCK):
        stop = min(N, start + BLOCK)
        expected = expected_block[:stop - start].copy()
        for index in MARKERS:
            if start <= index < stop:
                expected[index - start] = fastloss.sigmoid(np.array([_marker_values(index)[0]]))[0]
        if not np.array_equal(x[start:stop], expected):
            wrong = start + int(np.flatnonzero(x[start:stop] != expected)[0])
            raise AssertionError(f"sigmoid: first wrong element at index {wrong}")

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\nN = 2**31 + 5 float32: mse_loss x2 {mse_seconds:.1f} s, sigmoid (in place) "
          f"{sigmoid_seconds:.1f} s, whole test {time.perf_counter() - started:.1f} s, "
          f"peak RSS {peak_rss / GIB:.1f} GiB")
