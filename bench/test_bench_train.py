"""One SGD step of the 30-64-64-1 MLP at batch 32 (bench/train_step.py): fastloss.nn against
hand-written NumPy and PyTorch CPU, under pytest-benchmark.

    pytest bench --benchmark -k train_step
"""

import pytest

from train_step import STEPS

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("impl", list(STEPS))
def test_train_step(benchmark, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    step = STEPS[impl]()
    for _ in range(50):  # warm-up outside the timing: buffers, BLAS and torch's allocator
        step()
    benchmark.extra_info.update(impl=impl, op="sgd_step_30-64-64-1_batch32", dtype="float32")
    loss = benchmark.pedantic(step, rounds=7, iterations=500)
    assert float(loss) > 0
