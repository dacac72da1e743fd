"""The memory-bandwidth ceiling: a STREAM-like read and copy probe, measured in the same run as
the timings it is set against (the ceiling of a shared VM drifts between runs)."""

from __future__ import annotations

import statistics
import time

import numpy as np

from fastloss import _cpu

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
