"""fastloss against CuPy expressions and PyTorch CUDA on the GPU, with pytest-benchmark.

    pytest bench/test_bench_gpu.py --benchmark          timed (needs CuPy and a CUDA device)
    pytest bench/test_bench_gpu.py --benchmark-disable  each case once, untimed

Skipped (not errors) without CuPy or without a CUDA device, so CI's
``pytest tests bench --benchmark-disable`` passes on machines with no GPU. The implementations
are those of ``bench/gpu.py`` (loaded by path: bench/ is not a package). pytest-benchmark times
on the host, so each timed call ends with a synchronisation of its stream; at N >= 2^24 the
kernels take tens of microseconds or more and the sync adds a few. The inputs and builders are
fastloss.bench's, on CuPy arrays. extra_info: op, impl, dtype, n, bytes_moved (inputs read
once, outputs written once) and, when timed, gbs.

Every result is asserted after its timing, as on the CPU (bench/result_checks.py, whose checks
test_result_checks.py runs without a GPU): the loss against the exact mean of host copies of the
inputs (fastloss within its guarantee, the peers within the bound of a running sum), the array
element by element against fastloss.reference on a fixed sample of 1e5 elements.
"""

import importlib.util
from pathlib import Path

import pytest
from result_checks import GPU_SUMMATION, assert_result, expected_of

from fastloss.bench.cases import DEVICE_IMPLEMENTATIONS
from fastloss.bench.inputs import Inputs
from fastloss.bench.ops import OPS as OP_DEFS

pytest.importorskip("pytest_benchmark")


def _load_gpu_module():
    spec = importlib.util.spec_from_file_location("fastloss_bench_gpu",
                                                  Path(__file__).with_name("gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu = _load_gpu_module()  # imports neither CuPy nor PyTorch


def _cupy_or_reason():
    """(cupy, None) with a usable CUDA device, else (None, why): never raises."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed"
    except Exception as error:  # a broken install, or an import warning turned into an error
        return None, f"CuPy could not be imported ({type(error).__name__}: {error})"
    try:
        if not cupy.cuda.is_available():
            return None, "no CUDA device (cupy.cuda.is_available() is False)"
    except Exception as error:
        return None, f"no CUDA device ({type(error).__name__}: {error})"
    return cupy, None


CUPY, SKIP_REASON = _cupy_or_reason()
pytestmark = pytest.mark.skipif(CUPY is None, reason=SKIP_REASON or "")

OPS = ("mse_loss", "mse_loss_and_grad", "binary_cross_entropy_with_logits")
SIZES = (2**24, 2**27)
DTYPE = "float32"
ROUNDS = 20


@pytest.fixture(scope="module")
def impls():
    implementations = gpu.Implementations(CUPY)
    yield implementations
    implementations.free()


class _LatestInputs:
    """The device inputs of the latest N only (the cases are ordered size by size), and what
    each op must give on them, made once for all implementations."""

    def __init__(self):
        self.inputs = None
        self._expected = {}

    def get(self, n):
        if self.inputs is None or self.inputs.n != n:
            self.inputs = None  # frees the old arrays first
            self._expected = {}
            CUPY.get_default_memory_pool().free_all_blocks()
            self.inputs = Inputs(DTYPE, n, xp=CUPY)
        return self.inputs

    def expected(self, op):
        if op.name not in self._expected:
            # The exact loss from host copies, chunk by chunk; mse_loss and mse_loss_and_grad
            # share one.
            exact = self.inputs.exact_loss(op) if op.reduces else None
            self._expected[op.name] = expected_of(op, self.inputs.arrays(op), exact)
        return self._expected[op.name]


@pytest.fixture(scope="module")
def inputs_cache():
    cache = _LatestInputs()
    yield cache
    cache.inputs = None


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"2^{n.bit_length() - 1}")
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("impl", DEVICE_IMPLEMENTATIONS)
def test_bench_gpu(benchmark, impl, op_name, n, impls, inputs_cache):
    if impl not in impls.names:
        pytest.skip(f"{impl}: {impls.missing.get(impl, 'unavailable')}")
    op = OP_DEFS[op_name]
    inputs = inputs_cache.get(n)
    case = impls.case(impl, op_name, inputs.arrays(op))

    def run():
        result = case()
        impls.synchronize(impl)
        return result

    benchmark.group = f"gpu {op_name} {DTYPE} N=2^{n.bit_length() - 1}"
    result = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=3)
    info = benchmark.extra_info
    info.update(op=op_name, impl=impl, dtype=DTYPE, n=n,
                bytes_moved=op.bytes_moved(n, 4))
    if benchmark.stats is not None:  # None when untimed (--benchmark-disable)
        info["gbs"] = info["bytes_moved"] / benchmark.stats.stats.median / 1e9
    assert_result(op, result, inputs_cache.expected(op), dtype=DTYPE, impl=impl,
                  summation=GPU_SUMMATION.get(impl))
