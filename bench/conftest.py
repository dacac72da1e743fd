"""Fixtures of the benchmarks: the machine's bandwidth ceiling, the inputs, a summary table.

Run with ``pytest --benchmark`` at the repository root (see the root conftest.py for the
options).
"""

import numpy as np
import pytest

from fastloss.bench.bandwidth import STREAM_N, STREAM_N_BIG, measure_bandwidth
from fastloss.bench.cases import IMPLEMENTATIONS
from fastloss.bench.inputs import Inputs
from fastloss.bench.load import OtherLoad
from fastloss.bench.report import size_label

_CEILINGS = pytest.StashKey[dict]()
_OTHER_LOAD = pytest.StashKey[OtherLoad]()
_RESULTS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def ceilings(pytestconfig):
    """Read and copy bandwidth (GB/s) measured once per session, in the same run as the
    benchmarks: the ceiling of a shared machine drifts between runs."""
    pytestconfig.stash[_OTHER_LOAD] = OtherLoad()  # from the first benchmark on
    n = STREAM_N_BIG if pytestconfig.getoption("full") else STREAM_N
    measured = measure_bandwidth(n)
    pytestconfig.stash[_CEILINGS] = measured
    return measured


class LatestInputs:
    """The Inputs of the latest (dtype, N) only.

    The benchmarks are ordered size by size, so each set is made once; keeping only the latest
    bounds the memory (the arrays of N = 1e8 in float64 take 3.2 GB).
    """

    def __init__(self):
        self._inputs = None

    def get(self, dtype, n) -> Inputs:
        if self._inputs is None or (self._inputs.dtype, self._inputs.n) != (np.dtype(dtype), n):
            self._inputs = None  # frees the old arrays before the new ones are made
            self._inputs = Inputs(dtype, n)
        return self._inputs


@pytest.fixture(scope="session")
def inputs_cache():
    return LatestInputs()


@pytest.fixture
def record(pytestconfig):
    """Appends a benchmark's extra_info to the session's results, for the summary below."""
    return pytestconfig.stash.setdefault(_RESULTS, []).append


def pytest_terminal_summary(terminalreporter, config):
    """GB/s and share of the ceiling side by side per implementation, and the stability track's
    errors: what pytest-benchmark's own table (times only, one row per benchmark) does not
    show."""
    _stability_summary(terminalreporter, config.stash.get(_RESULTS, []))
    results = [r for r in config.stash.get(_RESULTS, []) if "gbs" in r]
    if not results:
        return  # benchmarks skipped or untimed (--benchmark-disable)
    ceilings = config.stash[_CEILINGS]
    cells = {}
    for r in results:
        cells[(r["op"], r["dtype"], r["n"]), r["impl"]] = (
            f"{r['gbs']:.2f} ({100 * r['fraction_of_ceiling']:.0f}%)")
    impls = [impl for impl in IMPLEMENTATIONS if any(key[1] == impl for key in cells)]
    groups = list(dict.fromkeys(key[0] for key in cells))
    header = ["op", "dtype", "N"] + impls
    lines = [header] + [[op, dtype, size_label(n)] + [cells.get(((op, dtype, n), impl), "-")
                                                      for impl in impls]
                        for op, dtype, n in groups]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    write = terminalreporter.write_line
    terminalreporter.write_sep(
        "-", f"GB/s (% of ceiling): read {ceilings['read_gbs']:.1f} GB/s for losses, "
             f"copy {ceilings['copy_gbs']:.1f} GB/s for ops writing an array")
    warning = config.stash[_OTHER_LOAD].warning()
    if warning:
        write(warning, yellow=True)
    for line in lines:
        write("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))).rstrip())


def _stability_summary(terminalreporter, records):
    from fastloss.bench.stability import Accuracy, format_stability
    accuracy = [Accuracy(r["op"], r["data"], r["n"], r["impl"], r["value"], r["exact"])
                for r in records if r.get("track") == "stability"]
    if not accuracy:
        return
    terminalreporter.write_sep("-", "stability track: float32 means against the exact value")
    for line in format_stability(accuracy).splitlines():
        terminalreporter.write_line(line)
