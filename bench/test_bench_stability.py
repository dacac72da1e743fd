"""The stability track with pytest-benchmark: float32 losses of fastloss and every peer against
the exact value as N grows, on the classic failure (2^25 terms of about 0.1), and the bits with 1
and 2 threads.

    pytest bench/test_bench_stability.py --benchmark          N = 1e6, 1e7 and 2^25
    pytest bench/test_bench_stability.py --benchmark --full   also N = 1e8
    pytest bench/test_bench_stability.py --benchmark --big    also N = 4e8 (about 12 GB)

Each case makes one call (the benchmark times it once: the track is about accuracy, the timings
are elsewhere). extra_info: track, op, impl, data ("random" or the classic failure), n, value,
exact (math.fsum of float64 terms), rel_error, ulps (of float32 at the exact value). The peers'
errors are results: each is only held to the error bound of the way it sums
(bench/result_checks.py), which a float32 running sum meets even 37.5 % off. fastloss must stay
within one ulp on random data (four on the classic failure, whose equal terms share one rounding
error of float32 exp/log) and give the same bits for any thread count (what tests/ asserts too;
here beside the peers). The summary at the end of the run lays the errors side by side
(bench/conftest.py).
"""

import pytest
from result_checks import (CPU_SUMMATION, assert_loss_close, crysx_definition_offset,
                           peer_loss_bound)

from fastloss.bench import stability
from fastloss.bench.cases import IMPLEMENTATIONS, make_case
from fastloss.bench.errors import loss_value
from fastloss.bench.inputs import Inputs
from fastloss.bench.ops import OPS
from fastloss.bench.peers import Unavailable
from fastloss.bench.report import size_label

pytest.importorskip("pytest_benchmark")

DEFAULT_SIZES = (10**6, 10**7)
DETERMINISM_N = 10**6


def pytest_generate_tests(metafunc):
    if "data" not in metafunc.fixturenames:
        return
    options = metafunc.config.option
    sizes = (stability.BIG_SIZES if options.big else
             stability.FULL_SIZES if options.full else DEFAULT_SIZES)
    params = [
        pytest.param(data, n, op, impl, id=f"{op}-{impl}-{data.replace(' ', '')}-{size_label(n)}",
                     marks=[pytest.mark.slow] if n > 10**7 else [])
        for data, n, _ in stability.datasets(sizes)
        for op in stability.LOSSES for impl in IMPLEMENTATIONS
    ]
    metafunc.parametrize(("data", "n", "op_name", "impl"), params)


class LatestDataset:
    """The inputs of the latest data set, holding only the arrays of the latest loss: at
    N = 4e8 each float32 array takes 1.6 GB (the cases run loss by loss, see LOSSES)."""

    def __init__(self):
        self._key, self._inputs = None, None

    def get(self, data, n, op):
        if self._key != (data, n):
            self._key, self._inputs = None, None  # frees the old arrays first
            self._inputs = (stability.ClassicInputs() if data == stability.CLASSIC
                            else Inputs(stability.DTYPE, n))
            self._key = (data, n)
        inputs = self._inputs
        inputs.drop(*({"values", "targets", "probs", "labels"} - set(op.arrays)))
        return inputs


@pytest.fixture(scope="module")
def dataset_cache():
    return LatestDataset()


def test_stability(benchmark, data, n, op_name, impl, dataset_cache, record):
    op = OPS[op_name]
    inputs = dataset_cache.get(data, n, op)
    try:
        case = make_case(impl, op, inputs)
    except Unavailable as reason:
        pytest.skip(f"{impl}: {reason}")
    benchmark.group = f"stability {op_name} {data} N={size_label(n)}"
    result = benchmark.pedantic(case, rounds=1, iterations=1)
    del case
    accuracy = stability.Accuracy(op_name, data, n, impl, loss_value(result),
                                  inputs.exact_loss(op))
    info = benchmark.extra_info
    info.update(track="stability", op=op_name, impl=impl, data=data, n=n, value=accuracy.value,
                exact=accuracy.exact, rel_error=accuracy.rel_error, ulps=accuracy.ulps)
    record(dict(info))
    if impl == "fastloss":
        # Equal terms share one rounding error of the float32 exp/log (up to ~3 ulp for the
        # BCE losses): on the classic failure it does not average out as on random data.
        bound = 4.0 if data == stability.CLASSIC else 1.0
        assert accuracy.ulps <= bound, f"fastloss {op_name} is {accuracy.ulps:.2f} ulp off"
    else:
        definition = (crysx_definition_offset(op, inputs.arrays(op)) if impl == "crysx_nn"
                      else 0.0)
        assert_loss_close(accuracy.value, accuracy.exact,
                          peer_loss_bound(CPU_SUMMATION[impl], stability.DTYPE, n, accuracy.exact,
                                          definition), f"{impl} {op_name} ({data})")


def test_same_bits_with_one_and_two_threads(benchmark, record):
    """Every implementation's losses in two fresh interpreters, with 1 and 2 threads."""
    benchmark.group = "stability determinism"
    outcome = benchmark.pedantic(stability.determinism, args=(IMPLEMENTATIONS, DETERMINISM_N),
                                 rounds=1, iterations=1)
    same = stability.same_bits(outcome)
    benchmark.extra_info.update(track="determinism", n=DETERMINISM_N, same_bits=same,
                                threads=outcome["threads"])
    record(dict(benchmark.extra_info))
    assert all(same["fastloss"].values()), f"fastloss bits depend on the thread count: {same}"
