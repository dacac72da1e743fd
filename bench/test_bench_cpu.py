"""fastloss against NumPy (the seeds' formulas and best effort), Numba (serial and parallel),
PyTorch and crysx_nn on CPU, with pytest-benchmark.

    pytest bench --benchmark          timed, N = 1e3, 1e5, 1e7 (a few minutes)
    pytest bench --benchmark --full   also N = 1e8 (several GB, much longer)
    pytest bench --benchmark-disable  each case once, untimed (CI smoke run)

A peer that is not installed (``pip install ".[bench]"`` in the source tree) is skipped with the
reason.
Timed runs cycle through copies of inputs smaller than twice the last-level cache
(``fastloss.bench.timing.make_timed_case``), so no call finds its inputs cached by the previous one.

Each benchmark's extra_info (see --benchmark-json) holds op, impl, dtype, n, bytes_moved (each
input read once, each output written once), rel_error against fastloss.reference (of the loss,
against its exact value, or of the array: max |error| / max |expected|; array_rel_error too for
a fused loss and gradient) and, when timed, gbs (bytes_moved / median time), the ceiling it is
held against (read for a loss, copy for an op writing an array) and fraction_of_ceiling. The
implementations themselves live in fastloss.bench, shared with ``python -m fastloss bench``.

Every result is asserted at every N (bench/result_checks.py): arrays element by element (on a
fixed sample of 1e5 elements above that), fastloss's losses within its accuracy guarantee, the
peers' within a bound of the way each sums.
"""

import pytest
from result_checks import (CPU_SUMMATION, assert_loss_close, assert_result,
                           crysx_definition_offset, expected_of)

from fastloss.bench.cases import IMPLEMENTATIONS, make_case
from fastloss.bench.errors import loss_value, result_errors
from fastloss.bench.ops import OPS
from fastloss.bench.peers import Unavailable
from fastloss.bench.report import size_label
from fastloss.bench.timing import make_timed_case

pytest.importorskip("pytest_benchmark")

DTYPES = ("float32", "float64")
SIZES = (10**3, 10**5, 10**7)
BIG_SIZES = (10**8,)  # with --full
# (rounds, iterations) per N: a stable median within a few minutes for the whole run. A call on
# small N takes microseconds, so a round loops over it to rise well above the timer's cost.
SCHEDULE = {10**3: (20, 50), 10**5: (10, 3), 10**7: (5, 1), 10**8: (3, 1)}
# Besides the bounds of result_checks (at every N), each peer's loss is held to a fixed relative
# tolerance at small N: a wrong formula shows there, where a running sum's bound is still loose
# (n eps = 1.2e-2 for float32 at N = 1e5). Above it float32 accumulation drifts (NumPy's float32
# BLAS dot is off by ~1e-4 at N = 1e7) within those bounds.
CHECKED_UP_TO_N = 10**5
RTOL = {"float32": 1e-4, "float64": 1e-10}
# crysx_nn adds 1e-7 inside BCE's logs (log(p + 1e-7)) and clips the sigmoid before the loss: its
# losses differ from the definition by ~1e-6 relative, in any precision.
RTOL_BY_IMPL = {"crysx_nn": {"float32": 1e-4, "float64": 1e-5}}


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    sizes = SIZES + (BIG_SIZES if metafunc.config.getoption("full") else ())
    # Size-major order, so the inputs of one (dtype, N) are made once and then dropped.
    params = [
        pytest.param(op, impl, dtype, n, id=f"{op}-{impl}-{dtype}-{size_label(n)}",
                     marks=[pytest.mark.slow] if n in BIG_SIZES else [])
        for n in sizes for dtype in DTYPES for op in OPS for impl in IMPLEMENTATIONS
    ]
    metafunc.parametrize(("op_name", "impl", "dtype", "n"), params)


def test_bench(benchmark, op_name, impl, dtype, n, ceilings, inputs_cache, record):
    op = OPS[op_name]
    inputs = inputs_cache.get(dtype, n)
    try:
        # Copies to rotate through only when timed: an untimed run makes one call.
        case = (make_timed_case if benchmark.enabled else make_case)(impl, op, inputs)
    except Unavailable as reason:
        pytest.skip(f"{impl}: {reason}")
    benchmark.group = f"{op_name} {dtype} N={size_label(n)}"
    rounds, iterations = SCHEDULE[n]
    result = benchmark.pedantic(case, rounds=rounds, iterations=iterations, warmup_rounds=1)
    del case  # the rotation's copies

    info = benchmark.extra_info
    info.update(op=op_name, impl=impl, dtype=dtype, n=n,
                bytes_moved=op.bytes_moved(n, inputs.dtype.itemsize), ceiling=op.ceiling)
    info.update(result_errors(op, inputs, result))
    if benchmark.stats is not None:  # None when untimed (--benchmark-disable)
        median = benchmark.stats.stats.median
        info["gbs"] = info["bytes_moved"] / median / 1e9
        info["ceiling_gbs"] = ceilings[op.ceiling]
        info["fraction_of_ceiling"] = info["gbs"] / ceilings[op.ceiling]
    record(dict(info))

    check_result(op, impl, inputs, result)


_DEFINITION_OFFSETS: dict = {}


def check_result(op, impl, inputs, result):
    """result (NumPy or torch; a loss, an array or a (loss, grad) pair) against the reference."""
    exact = inputs.exact_loss(op) if op.reduces else None
    definition = 0.0
    if impl == "crysx_nn" and op.reduces:
        key = (op.reference.__name__, inputs.dtype.name, inputs.n)  # the same arrays per loss
        if key not in _DEFINITION_OFFSETS:
            _DEFINITION_OFFSETS[key] = crysx_definition_offset(op, inputs.arrays(op))
        definition = _DEFINITION_OFFSETS[key]
    assert_result(op, result, expected_of(op, inputs.arrays(op), exact), dtype=inputs.dtype,
                  impl=impl, summation=CPU_SUMMATION.get(impl), definition=definition)
    if op.reduces and impl != "fastloss" and inputs.n <= CHECKED_UP_TO_N:
        rtol = RTOL_BY_IMPL.get(impl, RTOL)[inputs.dtype.name]
        assert_loss_close(loss_value(result), exact, rtol * abs(exact), f"{impl} {op.name} loss")
