"""bench/gpu.py's timing and report logic, with stand-ins for CuPy (no GPU needed).

What the events time and what the tables say can be checked without a device: the order in
which the harness enqueues work on the stream, and the rows it writes. The GPU timings
themselves wait for a GPU (bench/NOTES.md).
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np


def _load_gpu_module():
    spec = importlib.util.spec_from_file_location("fastloss_bench_gpu_harness",
                                                  Path(__file__).with_name("gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu = _load_gpu_module()  # imports neither CuPy nor PyTorch


class FakeCupy:
    """What bench/gpu.py's timing and throughput code calls; everything enqueued on the
    stream is logged in order (``log``). Each event pair reads as 1 ms."""

    float32 = np.float32

    def __init__(self):
        self.log: list[str] = []
        fake = self

        class Event:
            def record(self, stream=None):
                fake.log.append("event")

            def synchronize(self):
                pass

        class Stream:
            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                pass

            def synchronize(self):
                pass

        class Array:
            def __init__(self, name):
                self.name = name

            def fill(self, value):
                fake.log.append(f"write {self.name}")

            def sum(self, out=None):
                fake.log.append(f"read {self.name}")

        self.stream = Stream()
        self.cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda start, end: 1.0,
                                          get_current_stream=lambda: self.stream)
        self._names = iter(["first", "second", "sink"])
        self._array = Array
        self.random = types.SimpleNamespace(RandomState=_RandomState)

    def empty(self, shape, dtype=None):
        return self._array(next(self._names))

    def ones(self, shape, dtype=None):
        return self._array(next(self._names))

    @staticmethod
    def clip(a, low, high):
        return np.clip(a, low, high)


class _RandomState:
    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, n, dtype):
        return self._rng.standard_normal(n).astype(dtype)

    def random_sample(self, n, dtype):
        return self._rng.random(n).astype(dtype)


def test_l2_flush_writes_then_reads_another_buffer():
    """The write evicts the case's lines; the read of a second buffer then writes the dirty
    ones back, so the timed region starts with a clean L2."""
    cp = FakeCupy()
    flush = gpu.L2Flush(cp)
    flush()
    flush()
    written, read = flush.written.name, flush.read.name
    assert written != read
    assert cp.log == [f"write {written}", f"read {read}"] * 2


def test_time_events_flushes_l2_outside_the_timed_region():
    cp = FakeCupy()
    flush = gpu.L2Flush(cp)
    seconds = gpu.time_events(cp, lambda: cp.log.append("case"), cp.stream, flush, repeats=3,
                              warmup=2)
    assert seconds == 1e-3
    one_repeat = ["write first", "read second", "event", "case", "event"]
    assert cp.log == ["case", "case"] + one_repeat * 3


class _FakeImplementations:
    names = ("fastloss",)

    def __init__(self, cp):
        self.cp = cp

    def case(self, impl, op_name, arrays):
        return lambda: None

    def stream(self, impl):
        return self.cp.stream

    def synchronize(self, impl):
        pass

    def free(self):
        return 2**40


def test_rows_that_wait_on_the_host_are_marked(capsys):
    """fastloss's binary_cross_entropy reads its range-check flag back inside the timed region:
    its rows say so, in the throughput and latency tables, with the reason under each."""
    cp = FakeCupy()
    report = gpu.Report(None)
    impls = _FakeImplementations(cp)
    gpu.throughput_section(report, cp, impls, ("float32",), (10,), 20, gpu.L2Flush(cp), 1000.0)
    gpu.latency_section(report, cp, impls, ("float32",))
    rows = [line for line in report.lines if line.startswith("| ")]
    marked = [row.split(" | ")[0] for row in rows if "(host sync)" in row]
    assert marked == ["| binary_cross_entropy (host sync)"] * 2
    for name in gpu.BENCH_OPS:
        if name != "binary_cross_entropy":
            assert any(row.startswith(f"| {name} | ") for row in rows), name
    notes = [line for line in report.lines if line.startswith("- (host sync)")]
    assert len(notes) == 2 and "range-check flag back to the host" in notes[0]
    assert "error" not in capsys.readouterr().err
