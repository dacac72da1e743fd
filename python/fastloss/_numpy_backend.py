"""NumPy arrays -> fastloss._cpu: turns weights into the buffers the kernels read.

The kernels read a weight as a 1-D buffer ``w`` with element ``i`` of the input using
``w[i % len(w)]``. That covers, without copying, a weight that broadcasts like a trailing block
of the input: a scalar, ``(C,)`` against ``(B, C)``, ``(1, C, L)`` against ``(B, C, L)``, or a
full-shape array. Any other broadcast (``(B, 1)`` against ``(B, C)``) is materialised once.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _cpu

# Periods shorter than this are tiled up to it, so the kernel's contiguous runs stay long.
_MIN_PERIOD = 4096

REDUCTION_CODES = {"mean": 0, "sum": 1, "none": 2}

SQUARED_ERROR, BINARY_CROSS_ENTROPY, BINARY_CROSS_ENTROPY_WITH_LOGITS = 0, 1, 2


def reduction_code(reduction):
    code = REDUCTION_CODES.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return code


def _as_weight_array(weight, input, name):
    if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
        return np.asarray(weight, dtype=input.dtype)
    if not isinstance(weight, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or a real number, got "
                        f"{type(weight).__module__}.{type(weight).__qualname__}")
    if weight.dtype != input.dtype:
        raise TypeError(f"{name} has dtype {weight.dtype} but input has dtype {input.dtype}; "
                        "convert one of them explicitly (fastloss never upcasts silently)")
    return weight


def periodic_weight(weight, input, name):
    """``weight`` broadcast against ``input``, as a 1-D contiguous buffer read periodically."""
    w = _as_weight_array(weight, input, name)
    shape = input.shape
    if w.ndim > len(shape) or any(a != 1 and a != b for a, b in zip(w.shape[::-1], shape[::-1])):
        raise ValueError(f"{name} has shape {w.shape}, which does not broadcast to the input "
                         f"shape {shape}")
    if input.size == 0:
        return None
    dims = list(w.shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    if tuple(dims) == shape[len(shape) - len(dims):]:
        flat = np.ascontiguousarray(w).reshape(-1)  # a trailing block: no copy if contiguous
    else:
        flat = np.ascontiguousarray(np.broadcast_to(w, shape)).reshape(-1)
    period = flat.size
    wanted = min(_MIN_PERIOD, input.size)
    if period < wanted:
        flat = np.tile(flat, -(-wanted // period))
    return flat


def fold_grad_output(grad_output, weight, input, reduction):
    """Splits grad_output into a float scale and, for an array with reduction='none', a weight."""
    if isinstance(grad_output, float):
        return grad_output, weight
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
        return float(grad_output), weight
    if isinstance(grad_output, np.ndarray) and grad_output.size == 1 and grad_output.ndim == 0:
        return float(grad_output), weight
    if not isinstance(grad_output, np.ndarray):
        raise TypeError("grad_output must be a real number or a numpy.ndarray, got "
                        f"{type(grad_output).__module__}.{type(grad_output).__qualname__}")
    if reduction != "none":
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r} "
                         f"(the loss is a scalar); got shape {grad_output.shape}")
    if grad_output.dtype != input.dtype:
        raise TypeError(f"grad_output has dtype {grad_output.dtype} but input has dtype "
                        f"{input.dtype}; convert one of them explicitly")
    try:
        shape = np.broadcast_shapes(grad_output.shape, input.shape)
    except ValueError:
        shape = None
    if shape != input.shape:
        raise ValueError(f"grad_output has shape {grad_output.shape}, which does not broadcast "
                         f"to the input shape {input.shape}")
    combined = grad_output if weight is None else np.multiply(
        _as_weight_array(weight, input, "weight"), grad_output, dtype=input.dtype)
    return 1.0, combined


def loss_pass(op, want_loss, want_grad, input, target, weight, pos_weight, reduction,
              grad_output, out):
    code = reduction_code(reduction)
    if want_grad:
        grad_scale, grad_weight = fold_grad_output(grad_output, weight, input, reduction)
        if want_loss and grad_weight is not weight:
            # An upstream gradient per element scales the gradient, not the loss: two passes.
            loss = loss_pass(op, True, False, input, target, weight, pos_weight, reduction,
                             1.0, None)
            return loss, loss_pass(op, False, True, input, target, grad_weight, pos_weight,
                                   reduction, grad_scale, out)
        grad_output, weight = grad_scale, grad_weight
    if weight is not None:
        weight = periodic_weight(weight, input, "weight")
    if pos_weight is not None:
        pos_weight = periodic_weight(pos_weight, input, "pos_weight")
    return _cpu.loss_pass(op, code, want_loss, want_grad, input, target, weight, pos_weight,
                          grad_output, out)


def sigmoid(input, out):
    return _cpu.sigmoid(input, out)


def sigmoid_backward(grad_output, output, out):
    return _cpu.sigmoid_backward(grad_output, output, out)
