"""The checks every benchmark result goes through (result_checks.py), run on NumPy arrays and CPU
torch tensors: they must pass fastloss's own results, fail on the faults they exist for (a
gradient wrong in the tail or in a few chunks of a large array, a loss a few ulps off, NaN), and
the peers' bounds must follow from how each one sums. The GPU benchmark uses the same code on
CuPy and CUDA torch results, so without a GPU this is where that code runs.

Not a benchmark (no timing): it runs with CI's ``--benchmark-disable`` and a plain ``pytest
bench``, and is skipped by ``--benchmark``.
"""

import math

import numpy as np
import pytest
import result_checks as checks

import fastloss
from fastloss import reference
from fastloss.bench.inputs import exact_mean
from fastloss.bench.ops import OPS

LARGE_N = 300_007  # sampled (above checks.SAMPLE), and not a multiple of the 8192-element chunks

FASTLOSS = {
    "mse_loss_and_grad": fastloss.mse_loss_and_grad,
    "binary_cross_entropy_grad": fastloss.binary_cross_entropy_grad,
    "binary_cross_entropy_with_logits": fastloss.binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits_and_grad":
        fastloss.binary_cross_entropy_with_logits_and_grad,
    "sigmoid": fastloss.sigmoid,
}


def _inputs(op, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    made = {"values": rng.standard_normal(n).astype(dtype),
            "targets": rng.standard_normal(n).astype(dtype),
            "probs": np.clip(rng.random(n), 1e-6, 1 - 1e-6).astype(dtype),
            "labels": (rng.random(n) < 0.5).astype(dtype)}
    return tuple(made[name] for name in op.arrays)


def _case(op_name, n=LARGE_N, dtype=np.float32):
    """(op, fastloss's result, Expected) on fresh inputs."""
    op = OPS[op_name]
    arrays = _inputs(op, n, dtype)
    exact = exact_mean(op.reference, arrays) if op.reduces else None
    return op, FASTLOSS[op_name](*arrays), checks.expected_of(op, arrays, exact)


def test_sample_is_every_element_up_to_sample_then_fixed_with_both_ends():
    np.testing.assert_array_equal(checks.sample_indices(1000), np.arange(1000))
    indices = checks.sample_indices(10**8)
    np.testing.assert_array_equal(indices, checks.sample_indices(10**8))
    assert np.all(np.diff(indices) > 0) and indices[-1] == 10**8 - 1
    assert checks.SAMPLE * 0.97 < indices.size <= checks.SAMPLE
    np.testing.assert_array_equal(indices[:checks.EDGE], np.arange(checks.EDGE))
    np.testing.assert_array_equal(indices[-checks.EDGE:],
                                  np.arange(10**8 - checks.EDGE, 10**8))


@pytest.mark.parametrize("op_name", ["mse_loss_grad", "binary_cross_entropy_and_grad",
                                     "binary_cross_entropy_with_logits_grad", "sigmoid",
                                     "sigmoid_backward"])
def test_reference_on_the_sample_is_the_reference_on_all_elements(op_name):
    """reference_at evaluates only the sampled elements, yet gives the bits of the reference
    over the whole array (for a mean's gradient, 1/N of the whole N)."""
    op = OPS[op_name]
    arrays = _inputs(op, LARGE_N, np.float32)
    whole = getattr(reference, op_name)(*arrays)
    whole = whole[1] if isinstance(whole, tuple) else whole
    indices = checks.sample_indices(LARGE_N)
    np.testing.assert_array_equal(checks.reference_at(op, arrays, indices), whole[indices])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op_name", list(FASTLOSS))
def test_fastloss_results_pass(op_name, dtype):
    op, result, expected = _case(op_name, dtype=dtype)
    checks.assert_result(op, result, expected, dtype=dtype, impl="fastloss")


def _scaled(array, where, factor=1.5):
    wrong = array.copy()
    wrong[where] *= factor
    return wrong


@pytest.mark.parametrize("where", ["tail", "some_chunks", "one_element_sign"])
@pytest.mark.parametrize("op_name", ["mse_loss_and_grad",
                                     "binary_cross_entropy_with_logits_and_grad"])
def test_a_wrong_gradient_fails(op_name, where):
    """Faults of the parallel path (a few chunks of 8192 in the middle) and of the ragged tail
    (its last 10 elements) are found though only a sample of elements is checked; so is one
    flipped sign among the elements sampled."""
    op, (loss, grad), expected = _case(op_name)
    if where == "tail":
        wrong = _scaled(grad, slice(LARGE_N - 10, None))
    elif where == "some_chunks":
        chunks = np.arange(LARGE_N) // 8192
        wrong = _scaled(grad, (chunks % 16) == 5)
    else:
        wrong = _scaled(grad, int(expected.indices[len(expected.indices) // 2]), -1.0)
    with pytest.raises(AssertionError, match="array: .* elements out of tolerance"):
        checks.assert_result(op, (loss, wrong), expected, dtype=np.float32, impl="fastloss")


def test_nan_and_a_short_array_fail():
    op, (loss, grad), expected = _case("mse_loss_and_grad")
    wrong = grad.copy()
    wrong[expected.indices[7]] = np.nan
    with pytest.raises(AssertionError, match="1 of .* elements out of tolerance"):
        checks.assert_result(op, (loss, wrong), expected, dtype=np.float32, impl="fastloss")
    with pytest.raises(AssertionError, match="elements, expected 300007"):
        checks.assert_result(op, (loss, grad[:-1]), expected, dtype=np.float32, impl="fastloss")
    with pytest.raises(AssertionError, match="nan"):
        checks.assert_result(op, (np.float32(np.nan), grad), expected, dtype=np.float32,
                             impl="fastloss")


def test_fastloss_loss_is_held_to_one_ulp_at_large_n():
    """The float32 nearest the exact loss passes; 2 ulps above it (1.5 or more from the exact
    value) fails for fastloss, and is within what a peer summing pairwise is allowed."""
    op, (loss, grad), expected = _case("mse_loss_and_grad")
    nearest = np.float32(expected.exact_loss)
    checks.assert_result(op, (nearest, grad), expected, dtype=np.float32, impl="fastloss")
    two_up = nearest + np.float32(2) * np.spacing(nearest)
    with pytest.raises(AssertionError, match="from the exact"):
        checks.assert_result(op, (two_up, grad), expected, dtype=np.float32, impl="fastloss")
    checks.assert_result(op, (two_up, grad), expected, dtype=np.float32, impl="numpy-naive",
                         summation=checks.PAIRWISE)


def test_torch_results_go_through_the_same_checks():
    """The form of the torch results (CPU here, CUDA in test_bench_gpu.py): a 0-d tensor loss
    and a gradient tensor, sampled on their device."""
    torch = pytest.importorskip("torch")
    op, (loss, grad), expected = _case("binary_cross_entropy_with_logits_and_grad")
    checks.assert_result(op, (torch.tensor(loss), torch.from_numpy(grad)), expected,
                         dtype=np.float32, impl="torch", summation=checks.CPU_SUMMATION["torch"])
    with pytest.raises(AssertionError, match="out of tolerance"):
        checks.assert_result(op, (torch.tensor(loss), torch.from_numpy(grad) * 1.01), expected,
                             dtype=np.float32, impl="torch",
                             summation=checks.CPU_SUMMATION["torch"])
    inputs = tuple(torch.from_numpy(a) for a in _inputs(op, LARGE_N, np.float32))
    from_tensors = checks.expected_of(op, inputs, expected.exact_loss)
    np.testing.assert_array_equal(from_tensors.array, expected.array)
    assert from_tensors.n == LARGE_N


def test_peer_bounds_follow_the_summation_method():
    """2^22 float32 terms of 0.1 (the classic failure): a running sum (np.cumsum) is off by more
    than the pairwise and cascade bounds allow, yet within its own; NumPy's pairwise np.sum and
    PyTorch's cascade sum are within theirs."""
    n = 2**22
    terms = np.full(n, 0.1, dtype=np.float32)
    exact = float(np.float32(0.1))
    running = float(np.cumsum(terms)[-1]) / n
    bound = {method: checks.peer_loss_bound(checks.Summation(method), "float32", n, exact)
             for method in ("sequential", "pairwise", "cascade")}
    assert bound["pairwise"] < bound["cascade"] < bound["sequential"]
    assert bound["pairwise"] < abs(running - exact) <= bound["sequential"]
    assert abs(running - exact) > bound["cascade"]
    assert abs(float(np.sum(terms)) / n - exact) <= bound["pairwise"]
    torch = pytest.importorskip("torch")
    assert abs(torch.from_numpy(terms).sum().item() / n - exact) <= bound["cascade"]
    assert checks.summation_factor("sequential", 1) == 0
    assert checks.summation_factor("pairwise", 2**20) == 128 + 20


def test_crysx_offset_is_the_mean_of_its_epsilon_over_the_class_probability():
    op = OPS["binary_cross_entropy"]
    p = np.array([0.5, 1e-6, 0.25, 0.999], dtype=np.float64)
    labels = np.array([1.0, 1.0, 0.0, 0.0])
    q = np.array([0.5, 1e-6, 0.75, 0.001])
    assert checks.crysx_definition_offset(op, (p, labels), chunk=3) == pytest.approx(
        math.fsum(1e-7 / q) / 4, rel=1e-15)
    assert checks.crysx_definition_offset(OPS["mse_loss"], (p, labels)) == 0.0
