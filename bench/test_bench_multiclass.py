"""The multi-class track with pytest-benchmark: softmax cross-entropy of (N, C) float32 logits
and int64 class indices at (4096, 1000), (10^6, 10), (64, 10^5), fastloss against PyTorch,
JAX (skipped when absent) and NumPy (fastloss.bench.multiclass holds the implementations).

    pytest bench/test_bench_multiclass.py --benchmark      timed
    pytest bench/test_bench_multiclass.py --benchmark-disable   each case once (CI)

Every result is asserted: the mean loss against the exact one (fastloss within 1 float32 ulp,
the peers within a relative 1e-5), and the fused ops' gradients element by element against
fastloss.reference on a fixed sample of rows.
"""

import numpy as np
import pytest

from fastloss import reference
from fastloss.bench import multiclass
from fastloss.bench.peers import Unavailable

pytest.importorskip("pytest_benchmark")

_INPUTS: dict = {}


def _inputs(shape):
    """The inputs and the exact loss of the latest shape only (the arrays of (10^6, 10) take
    40 MB)."""
    if shape not in _INPUTS:
        _INPUTS.clear()
        x, y = multiclass.make_inputs(shape)
        _INPUTS[shape] = (x, y, multiclass.exact_mean(x, y))
    return _INPUTS[shape]


@pytest.mark.parametrize("impl", multiclass.IMPLEMENTATIONS)
@pytest.mark.parametrize("op", multiclass.OPS)
@pytest.mark.parametrize("shape", multiclass.SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_multiclass(benchmark, shape, op, impl, ceilings, record):
    x, y, exact = _inputs(shape)
    try:
        case = multiclass.builders(impl)[op](x, y)
    except Unavailable as reason:
        pytest.skip(f"{impl}: {reason}")
    benchmark.group = f"{op} {shape}"
    result = benchmark.pedantic(case, rounds=5, iterations=1, warmup_rounds=1)
    info = benchmark.extra_info
    info.update(op=f"{op} {shape[0]}x{shape[1]}", impl=impl, dtype="float32",
                n=shape[0] * shape[1], bytes_moved=multiclass.bytes_moved(op, shape))
    if benchmark.stats is not None:
        info["gbs"] = info["bytes_moved"] / benchmark.stats.stats.min / 1e9
        info["fraction_of_ceiling"] = info["gbs"] / ceilings[multiclass.ceiling_of(op)]
    record(dict(info))

    loss = multiclass.loss_of(result)
    if impl == "fastloss":
        assert multiclass.ulps_from(loss, exact) <= 1.0, (loss, exact)
    else:
        assert abs(loss - exact) <= 1e-5 * abs(exact), (impl, loss, exact)
    if op.endswith("_and_grad"):
        grad = result[1]
        grad = np.asarray(grad.detach() if hasattr(grad, "detach") else grad)
        rows = np.random.default_rng(0).choice(shape[0], size=min(shape[0], 16), replace=False)
        # the gradient of the mean over all rows, restricted to the sampled rows
        expected = reference.cross_entropy_grad(x[rows], y[rows], reduction="sum") / shape[0]
        np.testing.assert_allclose(grad[rows], expected, rtol=2e-5 if impl == "fastloss" else 1e-3,
                                   atol=1e-9 / shape[0] if impl == "fastloss" else 1e-7)


def test_stability_row():
    results = multiclass.stability(row_counts=(1000,))
    fastloss_rows = [r for r in results if r[1] == "fastloss"]
    assert fastloss_rows and all(error <= 1.0 for *_, error in fastloss_rows)
    assert multiclass.format_stability(results).count("\n") == len(results) + 1
