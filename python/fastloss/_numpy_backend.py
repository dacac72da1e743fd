"""NumPy arrays -> fastloss._cpu. Weights are shaped for the kernels by ``_weights``; every
other check (dtypes, shapes, contiguity, out=) is made in C++ (csrc/module.cpp).
"""

from __future__ import annotations

import numpy as np

from . import _cpu
from ._weights import grad_weight, periodic_weight, split_grad_output

REDUCTION_CODES = {"mean": 0, "sum": 1, "none": 2}

SQUARED_ERROR, BINARY_CROSS_ENTROPY, BINARY_CROSS_ENTROPY_WITH_LOGITS = 0, 1, 2


def reduction_code(reduction):
    code = REDUCTION_CODES.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return code


def loss_pass(op, want_loss, want_grad, input, target, weight, pos_weight, reduction,
              grad_output, out):
    code = reduction_code(reduction)
    if want_grad:
        grad_output, grad_array = split_grad_output(np, grad_output, input, reduction)
        if grad_array is not None:
            # An upstream gradient per element scales the gradient, not the loss: the gradient
            # pass is weighted by weight * grad_output, and the loss (if wanted) has its own,
            # made first: `out` may be the input, the target or the weight.
            loss = (loss_pass(op, True, False, input, target, weight, pos_weight, reduction,
                              1.0, None) if want_loss else None)
            grad = loss_pass(op, False, True, input, target,
                             grad_weight(np, weight, grad_array, input), pos_weight, reduction,
                             1.0, out)
            return (loss, grad) if want_loss else grad
    if weight is not None:
        weight = periodic_weight(np, weight, input, "weight")
    if pos_weight is not None:
        pos_weight = periodic_weight(np, pos_weight, input, "pos_weight")
    return _cpu.loss_pass(op, code, want_loss, want_grad, input, target, weight, pos_weight,
                          grad_output, out)


def sigmoid(input, out):
    return _cpu.sigmoid(input, out)


def sigmoid_backward(grad_output, output, out):
    return _cpu.sigmoid_backward(grad_output, output, out)
