"""The element-wise work around a dense layer's matrix products, for each array library.

Why a compiled part (csrc/training.cpp): a small network's training step is mostly per-call
overhead. At batch 32 a NumPy call on a (32, 64) array costs 3-5 us on the project's machines,
a BLAS call on a (32, 64) x (64, 1) product about as much. For NumPy arrays the compiled module
merges the element-wise operations around each product into one call (bias and ReLU forward;
ReLU derivative and bias gradient backward), runs layers of at most four outputs as plain
loops and wider ones through its AVX-512 product kernel (csrc/dense.cpp; NumPy's BLAS on CPUs
without AVX-512): one SGD step of a 30-64-64-1 MLP takes 115 us, against 271 us written in NumPy
(bench/train_step.py, bench/NOTES.md). Other array libraries (CuPy) take the same steps as array
expressions. ``Dense`` calls only these functions, so it has one code path for both.
"""

from __future__ import annotations

import numpy as np

from .. import _cpu
from .._arrays import Array, array_module


def matmul_module(weight: Array):
    """The array library whose matmul (BLAS, cuBLAS) runs the layer's products."""
    return np if type(weight) is np.ndarray else array_module(weight)


def dense_forward(input: Array, weight: Array, bias: Array | None, output: Array,
                  relu: bool) -> bool:
    """output = relu?(input @ weight.T + bias) in one compiled call for a NumPy layer (plain
    loops up to four outputs, the AVX-512 product kernel beyond); False, with
    nothing done, for other arrays or where this CPU has no product kernel."""
    if type(weight) is not np.ndarray:
        return False
    return _cpu.dense_forward(input, weight, bias, output, relu)


def bias_relu(output: Array, bias: Array | None, relu: bool) -> None:
    """In place: output += bias (if not None), then max(output, 0) if relu."""
    if type(output) is np.ndarray:
        _cpu.dense_bias_relu(output, bias, relu)
        return
    xp = array_module(output)
    if bias is not None:
        xp.add(output, bias, out=output)
    if relu:
        xp.maximum(output, 0, out=output)


def pre_activation_grad(grad_output: Array, relu_output: Array | None, buffer: Array | None,
                        bias_grad: Array | None) -> Array:
    """The gradient at the pre-activation: grad_output * relu'(relu_output) written to
    ``buffer`` when the layer is followed by a ReLU (relu_output not None), else grad_output
    itself; the bias gradient (its column sums) written to ``bias_grad`` if not None."""
    if type(grad_output) is np.ndarray:
        return _cpu.dense_bias_relu_backward(grad_output, relu_output, buffer, bias_grad)
    xp = array_module(grad_output)
    if relu_output is not None:
        grad_output = xp.multiply(grad_output, xp.sign(relu_output), out=buffer)
    if bias_grad is not None:
        xp.sum(grad_output, axis=0, out=bias_grad)
    return grad_output


def dense_backward(grad: Array, input: Array, weight: Array, weight_grad: Array,
                   grad_input: Array | None) -> bool:
    """weight_grad = grad.T @ input and grad_input = grad @ weight (if not None) in one
    compiled call for a NumPy layer; False as dense_forward."""
    if type(weight) is not np.ndarray:
        return False
    return _cpu.dense_backward(grad, input, weight, weight_grad, grad_input)
