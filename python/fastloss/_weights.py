"""Weights and upstream gradients, checked and shaped for the kernels; shared by both backends.

The kernels (C++ and CUDA) read a weight as a 1-D buffer ``w``, element ``i`` of the input
using ``w[i % len(w)]``. That covers, without copying, a weight that broadcasts like a trailing
block of the input: a scalar, ``(C,)`` against ``(B, C)``, ``(1, C, L)`` against ``(B, C, L)``,
or the full shape. Any other broadcast (``(B, 1)`` against ``(B, C)``) is materialised once.
Everything here is generic over the array module ``xp`` (numpy or cupy); ``same_device`` is
the backend's check that two arrays share a device (None on the CPU).
"""

from __future__ import annotations

import numbers

import numpy as np

# Periods shorter than this are tiled up to it, so the kernels' contiguous runs stay long.
MIN_PERIOD = 4096


def is_real_scalar(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def type_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def as_float(value, name):
    """A real scalar as a Python float; float(10**400) would raise an OverflowError that names
    nothing."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float64; expected a real number of "
                         "magnitude below 1.8e308") from None


def not_an_array_error(xp, value, name, alternative):
    """The TypeError for a ``value`` that is not an xp array (nor ``alternative``)."""
    if xp is np:
        on_other_device = hasattr(value, "__cuda_array_interface__")
    else:
        on_other_device = isinstance(value, np.ndarray)
    return TypeError(f"{name} must be a {xp.__name__}.ndarray or {alternative}, got "
                     f"{type_name(value)}"
                     + (" (all arrays of one call must be on the same device)"
                        if on_other_device else ""))


def reject_masked(array, name):
    """numpy.ma arrays are ndarrays: the kernels would read their data and ignore the mask."""
    if type(array) is not np.ndarray and isinstance(array, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray, whose mask fastloss would ignore; "
                        f"pass a plain numpy.ndarray ({name}.filled(value) or {name}.data)")


def check_weight(xp, weight, input, name, same_device=None):
    """Validates ``weight`` against ``input``: returns a float (scalar) or an xp array."""
    if is_real_scalar(weight):
        return as_float(weight, name)
    if not isinstance(weight, xp.ndarray):
        raise not_an_array_error(xp, weight, name, "a real number")
    reject_masked(weight, name)
    if weight.dtype != input.dtype:
        raise TypeError(f"{name} has dtype {weight.dtype} but input has dtype {input.dtype}; "
                        "convert one of them explicitly (fastloss never upcasts silently)")
    if same_device is not None:
        same_device(weight, name, input, "input")
    shape = input.shape
    if weight.ndim > len(shape) or any(a != 1 and a != b
                                       for a, b in zip(weight.shape[::-1], shape[::-1])):
        raise ValueError(f"{name} has shape {weight.shape}, which does not broadcast to the "
                         f"input shape {shape}")
    return weight


def periodic_weight(xp, weight, input, name, same_device=None):
    """``weight`` broadcast against ``input`` as a 1-D contiguous buffer read periodically;
    None for an empty input."""
    w = check_weight(xp, weight, input, name, same_device)
    n = input.size
    if n == 0:
        return None
    wanted = min(MIN_PERIOD, n)
    if isinstance(w, float):
        return xp.full((wanted,), w, dtype=input.dtype)  # on the input's device
    shape = input.shape
    dims = list(w.shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    if tuple(dims) == shape[len(shape) - len(dims):]:
        flat = xp.ascontiguousarray(w).reshape(-1)  # a trailing block: no copy if contiguous
    else:
        flat = xp.ascontiguousarray(xp.broadcast_to(w, shape)).reshape(-1)
    period = flat.size
    if period < wanted:
        flat = xp.tile(flat, -(-wanted // period))
    return flat


def split_grad_output(xp, grad_output, input, reduction, same_device=None):
    """grad_output as (float scale, None) or, for an array with reduction='none',
    (1.0, array of the input's dtype broadcastable to the input)."""
    if isinstance(grad_output, float):
        return grad_output, None
    if is_real_scalar(grad_output):
        return as_float(grad_output, "grad_output"), None
    if isinstance(grad_output, (np.ndarray, xp.ndarray)) and grad_output.ndim == 0:
        reject_masked(grad_output, "grad_output")
        if grad_output.dtype.kind not in "fiu":  # float() of a complex one drops its imaginary part
            raise TypeError(f"grad_output has dtype {grad_output.dtype}; expected a real number")
        return float(grad_output), None  # on a GPU: reads one value back (a synchronisation)
    if not isinstance(grad_output, xp.ndarray):
        raise not_an_array_error(xp, grad_output, "grad_output", "a real number")
    reject_masked(grad_output, "grad_output")
    if reduction != "none":
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r} "
                         f"(the loss is a scalar); got shape {grad_output.shape}")
    if grad_output.dtype != input.dtype:
        raise TypeError(f"grad_output has dtype {grad_output.dtype} but input has dtype "
                        f"{input.dtype}; convert one of them explicitly")
    if same_device is not None:
        same_device(grad_output, "grad_output", input, "input")
    try:
        shape = np.broadcast_shapes(grad_output.shape, input.shape)
    except ValueError:
        shape = None
    if shape != input.shape:
        raise ValueError(f"grad_output has shape {grad_output.shape}, which does not broadcast "
                         f"to the input shape {input.shape}")
    return 1.0, grad_output


def grad_weight(xp, weight, grad_array, input, same_device=None):
    """The weight of the gradient when grad_output is an array: weight * grad_output."""
    if weight is None:
        return grad_array
    w = check_weight(xp, weight, input, "weight", same_device)
    return xp.multiply(w, grad_array, dtype=input.dtype)
