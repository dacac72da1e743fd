"""One SGD step of the 30-64-64-1 MLP at batch 32 (bench/train_step.py): fastloss.nn against
hand-written NumPy, PyTorch CPU and a jax.jit step, under pytest-benchmark.

    pytest bench --benchmark -k train_step

Each implementation's step is checked against an independent float64 one (fastloss.reference's
loss and gradient, backpropagated by hand): the first step's loss and updated weights, and after
the timing the loss of one more step at the weights the timed steps left.
"""

import numpy as np
import pytest
from train_step import LR, STEPS, problem

from fastloss import reference

pytest.importorskip("pytest_benchmark")


def reference_step(params, X, Y):
    """float64: the loss at ``params`` and the parameters after the first SGD step (momentum
    starts from the gradient itself, so the step is lr * gradient)."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in params]
    activations, pre_activations = [X], []
    for index, (weight, bias) in enumerate(params):
        z = activations[-1] @ weight.T + bias
        pre_activations.append(z)
        activations.append(np.maximum(z, 0) if index < len(params) - 1 else z)
    logits = activations[-1]  # the Sigmoid + BCELoss of the model is BCE on these logits
    loss = reference.binary_cross_entropy_with_logits(logits, Y)
    grad = reference.binary_cross_entropy_with_logits_grad(logits, Y)
    updated = [None] * len(params)
    for index in range(len(params) - 1, -1, -1):
        weight, bias = params[index]
        grad_weight, grad_bias = grad.T @ activations[index], grad.sum(axis=0)
        if index > 0:
            grad = (grad @ weight) * (pre_activations[index - 1] > 0)
        updated[index] = (weight - LR * grad_weight, bias - LR * grad_bias)
    return loss, updated


@pytest.mark.parametrize("impl", list(STEPS))
def test_train_step(benchmark, impl):
    if impl in ("torch", "jax"):
        pytest.importorskip(impl)
    step = STEPS[impl]()
    for _ in range(50):  # warm-up outside the timing: buffers, BLAS and torch's allocator
        step()
    benchmark.extra_info.update(impl=impl, op="sgd_step_30-64-64-1_batch32", dtype="float32")
    loss = benchmark.pedantic(step, rounds=7, iterations=500)
    step.finish()
    assert float(loss) > 0

    X, Y, initial = problem()
    # After thousands of steps the loss is ~1e-4, a mean of softplus(-|z|) at logits |z| ~ 10:
    # each term carries z's float32 rounding times |z|, plus the clip of the NumPy step.
    before = step.parameters()
    assert float(step()) == pytest.approx(reference_step(before, X, Y)[0], rel=1e-3)

    # A fresh step from the initial weights. float32 forward and update: the loss within a few
    # ulps; each weight within half an ulp of its value (~7e-9 at 0.1) plus the rounding of its
    # update, against updates of 1e-4 to 1e-3.
    expected_loss, expected_params = reference_step(initial, X, Y)
    first = STEPS[impl]()
    assert float(first()) == pytest.approx(expected_loss, rel=1e-6)
    for layer, (got, expected) in enumerate(zip(first.parameters(), expected_params)):
        for name, array, want in zip(("weight", "bias"), got, expected):
            np.testing.assert_allclose(array, want, rtol=1e-6, atol=2e-8,
                                       err_msg=f"layer {layer} {name} after the first step")
