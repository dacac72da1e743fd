"""The NumPy backend: the C++/OpenMP kernels of ``fastloss._cpu``, behind the interface the
dispatch (``fastloss._dispatch``) expects of a backend. Arrays that are not C-contiguous and
aligned are copied once (NumPy's own arrays are cheap to copy; documented in the functions).
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import _cpu

ARRAY = "numpy.ndarray"
WHERE = "the CPU"
MOVE_HINT = "copy it with cupy.asnumpy, or pass CuPy arrays only"
# The 16-bit dtypes of the elementwise losses and sigmoid (bfloat16: ml_dtypes.bfloat16, which
# the dispatch registers with the kernels the first time it sees one), and of the softmax
# family, cross_entropy, tanh and relu (the same).
HALF_DTYPES = ("float16", "bfloat16")
ROW_HALF_DTYPES = HALF_DTYPES
register_bfloat16 = _cpu.register_bfloat16

ProbabilityOutOfRange = _cpu.ProbabilityOutOfRange

# The C++ entries, for the dispatch's fast path: each answers None to arguments it will not
# run (csrc/module.cpp), which the dispatch then checks and words.
loss_or_none = _cpu.loss
sigmoid_or_none = _cpu.sigmoid
sigmoid_backward_or_none = _cpu.sigmoid_backward
row_pass_or_none = _cpu.row_pass
cross_entropy_pass_or_none = _cpu.cross_entropy_pass
activation_or_none = _cpu.activation
ClassIndexOutOfRange = _cpu.ClassIndexOutOfRange

_NO_DEVICE = contextlib.nullcontext()


def array_module():
    return np


def is_array(obj):
    return isinstance(obj, np.ndarray)


def elsewhere(obj):
    if hasattr(obj, "__cuda_array_interface__"):
        return f"a GPU array ({type(obj).__module__}.{type(obj).__qualname__})"
    return None


def on_device_of(array):
    return _NO_DEVICE


def same_device(a, b):
    return True


def device_name(a):
    return "the CPU"


def address(a):
    return a.__array_interface__["data"][0]


def writeable(a):
    return bool(a.flags.writeable)


def readable(a, name):
    """NumPy reads any array, aligned or not."""


def contiguous(a, name):
    # numpy.require, not ascontiguousarray: that one returns a contiguous but unaligned array
    # as it is (UBSan caught the misaligned loads)
    return np.require(a, None, "CA")


def _checked(result):
    if result is None:
        raise RuntimeError("fastloss._cpu refused arguments that fastloss._dispatch had "
                           "checked: a bug in fastloss, please report it")
    return result


def loss_pass(op, outputs, mean, input, target, weight, pos_weight, grad_output, out):
    return _checked(_cpu.loss_pass(op, outputs, mean, input, target, weight, pos_weight,
                                   grad_output, out))


def sigmoid(input, out):
    return _checked(_cpu.sigmoid(input, out))


def sigmoid_backward(grad_output, output, out):
    return _checked(_cpu.sigmoid_backward(grad_output, output, out))


def row_pass(op, first, second, shape, out):
    return _checked(_cpu.row_pass(op, first, second, *shape, out))


def cross_entropy_pass(outputs, target_kind, mean, input, target, weight, ignore_index,
                       label_smoothing, grad_output, out, shape, loss_shape):
    return _checked(_cpu.cross_entropy_pass(outputs, target_kind, mean, input, target, weight,
                                            ignore_index, label_smoothing, grad_output, out,
                                            *shape, tuple(loss_shape)))


def cross_entropy_partial(want_grad, target_kind, input, target, weight, ignore_index,
                          label_smoothing, grad_scale, shape):
    return _checked(_cpu.cross_entropy_partial(want_grad, target_kind, input, target, weight,
                                               ignore_index, label_smoothing, grad_scale,
                                               *shape))


def activation(op, x, y, out):
    return _checked(_cpu.activation(op, x, y, out))


def loss_partial(op, outputs, input, target, weight, pos_weight, grad_scale):
    return _checked(_cpu.loss_partial(op, outputs, input, target, weight, pos_weight,
                                      grad_scale, None))
