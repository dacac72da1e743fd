"""The one place for what does not depend on the backend.

Every public function comes here. For its arguments the dispatch
- adopts arrays of other libraries (DLPack, the array interfaces: ``fastloss._interop``),
- picks the backend from the array family of the first array (NumPy: ``_numpy_backend``,
  CuPy: ``_cuda``, imported only for a CuPy array); Dask arrays go to ``_dask`` (imported only
  for a Dask argument), which builds the graph and sends each block back through here (the
  calls it hands over, ``_IN_MEMORY``: ``_dask`` imports nothing of this module),
- validates reduction, array types, dtypes, devices, shapes, weights and ``grad_output``, each
  error worded once, here or in ``_checks`` (the checks the Dask family shares),
- plans the passes: which outputs, the divisor of a mean, the gradient's scale, the weight
  buffers the kernels read periodically, and the second pass an array ``grad_output`` needs,
and hands the plan to the backend, which checks only what needs the memory itself (contiguity,
alignment), allocates the outputs on the right device and launches.

The common NumPy call (NumPy arrays, no weights, a float ``grad_output``) skips the Python
checks: the C++ module takes it first, as it came (``_cpu.loss`` with the kind's ``plan_code``:
the plans below, packed), and answers None to anything it would not run, which then comes back
here to be checked and, where it can be, prepared (copies, weight buffers).

A backend module provides: ``ARRAY`` (its array type's name), ``WHERE`` (where its arrays
live), ``MOVE_HINT`` (how to bring an array there), ``array_module()``, ``is_array(obj)``,
``elsewhere(obj)`` (a description of obj if it is an array of another device, else None),
``on_device_of(a)`` (a context for allocations), ``same_device(a, b)``, ``device_name(a)``,
``address(a)``, ``writeable(a)``, ``HALF_DTYPES`` (the names of the 16-bit dtypes its
elementwise losses and sigmoid take: "float16", "bfloat16"), ``ROW_HALF_DTYPES`` (those its
softmax family, cross_entropy, tanh and relu take), ``readable(a, name)`` (an error if the array library itself
cannot read ``a``: CuPy faults on a misaligned array), ``contiguous(a, name)`` (the array as
the kernels read it, a copy or an error),
``loss_pass(op, outputs, mean, input, target, weight, pos_weight, grad_output, out)``,
``sigmoid(x, out)``, ``sigmoid_backward(grad_output, output, out)`` and
``loss_partial(op, outputs, input, target, weight, pos_weight, grad_scale)`` (optional: one
block of a Dask array, its sum as an unrounded double-double (hi, lo), with the gradient for
SUM_AND_GRAD; both backends have it) and
``ProbabilityOutOfRange`` (what ``loss_pass`` raises for a probability outside [0, 1], and
``sigmoid_backward`` for an output there: both found inside the kernel's pass).

The multi-class functions see an array as ``(outer, classes, inner)`` along its class axis
(``shape``, a tuple of three ints: element (o, c, i) at (o * classes + c) * inner + i; a row is
one (o, i), rows numbered o * inner + i). For them a backend also provides
``row_pass(op, first, second, shape, out)`` (softmax, log_softmax of ``first``; their backward
passes of grad_output ``first`` and the forward output ``second``),
``cross_entropy_pass(outputs, target_kind, mean, input, target, weight, ignore_index,
label_smoothing, grad_output, out, shape, loss_shape)`` (``target`` one class index per row or
probabilities of the input's shape; ``weight`` None or ``classes`` weights; ``grad_output`` a
float or one value per row; 'mean' divides by the summed weights of the non-ignored targets,
which the pass computes), ``cross_entropy_partial(want_grad, target_kind, input, target,
weight, ignore_index, label_smoothing, grad_scale, shape)`` (optional; both backends have it: one
Dask block's unrounded (sum, sum_lo, divisor, divisor_lo), with the gradient of its 'sum' times
``grad_scale`` for ``want_grad``), ``activation(op, x, y, out)`` (tanh, relu and their backward passes
from grad_output ``x`` and the forward output ``y``) and ``ClassIndexOutOfRange`` (what
``cross_entropy_pass`` raises, with args (row, class index), before it writes anything).
"""

from __future__ import annotations

import math
import numbers
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from . import _codes, _numpy_backend
from ._checks import REDUCTIONS, check_reduction
from ._checks import as_float as _as_float
from ._checks import check_float_dtype, checked_dim, cross_entropy_rows, storage_name
from ._checks import spelling as _spelling
from ._checks import check_same_dtype as _check_same_dtype
from ._checks import check_same_shape as _check_same_shape
from ._checks import float_dtype_name as _float_dtype_name
from ._checks import is_real_scalar as _is_real_scalar
from ._checks import type_name as _type_name
from ._arrays import is_dask as _is_dask
from ._interop import adopt

OUT_OF_RANGE = ("input must hold probabilities in [0, 1] (binary_cross_entropy); found values "
                "outside; use binary_cross_entropy_with_logits for logits")
SIGMOID_OUTPUT_OUT_OF_RANGE = ("output must hold sigmoid outputs in [0, 1] (sigmoid_backward); "
                               "found values outside: pass the forward's output, sigmoid(x), "
                               "not its input x")
# Weight buffers shorter than this are tiled up to it, so the kernels' contiguous runs stay long.
MIN_PERIOD = 4096

_ndarray = np.ndarray
_cpu_loss = cpu_loss_or_none = _numpy_backend.loss_or_none
_cpu_sigmoid = _numpy_backend.sigmoid_or_none
_cpu_sigmoid_backward = _numpy_backend.sigmoid_backward_or_none
_CpuOutOfRange = _numpy_backend.ProbabilityOutOfRange
_cpu_row_pass = _numpy_backend.row_pass_or_none
_cpu_cross_entropy_pass = _numpy_backend.cross_entropy_pass_or_none
_cpu_activation = _numpy_backend.activation_or_none
_CpuClassIndexOutOfRange = _numpy_backend.ClassIndexOutOfRange


# ---- what each public loss function computes ---------------------------------------------------
class Pass(NamedTuple):
    outputs: int
    mean: bool  # the sum and the gradient's scale are divided by N


class LossKind(NamedTuple):
    """A public loss function: its op, and whether it returns the loss, the gradient or both."""
    op: int
    want_loss: bool
    want_grad: bool
    passes: dict  # reduction -> Pass, when grad_output is a scalar
    plan_code: int  # op and passes packed for the C++ module's common call (``_cpu.loss``)


def _packed(op, passes):
    """bits 0-3 the op, then 4 bits per reduction in REDUCTIONS' order: the outputs code, and 8
    where the pass divides by N (csrc/module.cpp, loss_entry)."""
    code = op
    for index, reduction in enumerate(REDUCTIONS):
        plan = passes[reduction]
        code |= (plan.outputs | (8 if plan.mean else 0)) << (4 + 4 * index)
    return code


def loss_kind(op, want_loss, want_grad):
    def outputs(reduce):
        if want_loss and want_grad:
            return _codes.SUM_AND_GRAD if reduce else _codes.ELEMENTWISE_AND_GRAD
        if want_loss:
            return _codes.SUM if reduce else _codes.ELEMENTWISE
        return _codes.GRAD
    passes = {"mean": Pass(outputs(True), True), "sum": Pass(outputs(True), False),
              "none": Pass(outputs(False), False)}
    return LossKind(op, want_loss, want_grad, passes, _packed(op, passes))


# ---- the entry points --------------------------------------------------------------------------
def loss(kind: LossKind, input, target, weight=None, pos_weight=None, reduction="mean",
         grad_output=1.0, out=None):
    try:
        result = _cpu_loss(kind.plan_code, input, target, weight, pos_weight, reduction,
                           grad_output, out)
    except _CpuOutOfRange:
        raise ValueError(OUT_OF_RANGE) from None
    if result is not None:
        return result
    return _checked_loss(kind, input, target, weight, pos_weight, reduction, grad_output, out)


def sigmoid(input, out=None):
    if type(input) is _ndarray and (out is None or type(out) is _ndarray):
        result = _cpu_sigmoid(input, out)
        if result is not None:
            return result
    if _is_dask(input):
        from . import _dask
        return _dask.sigmoid(_IN_MEMORY, input, out)
    input, out = adopt(input, "input"), adopt(out, "out")
    backend = _backend_of(input, "input")
    with backend.on_device_of(input):
        x = _prepared_input(backend, input, "input", backend.HALF_DTYPES)
        out = _checked_out(backend, out, x, "input", [(x, "input")], backend.HALF_DTYPES)
        return backend.sigmoid(x, out)


def sigmoid_backward(grad_output, output, out=None):
    if type(grad_output) is _ndarray and type(output) is _ndarray and (
            out is None or type(out) is _ndarray):
        try:
            result = _cpu_sigmoid_backward(grad_output, output, out)
        except _CpuOutOfRange:
            raise ValueError(SIGMOID_OUTPUT_OUT_OF_RANGE) from None
        if result is not None:
            return result
    if _is_dask(grad_output) or _is_dask(output):
        from . import _dask
        return _dask.sigmoid_backward(_IN_MEMORY, grad_output, output, out)
    grad_output, output = adopt(grad_output, "grad_output"), adopt(output, "output")
    out = adopt(out, "out")
    backend = _backend_of(grad_output, "grad_output")
    _check_array(backend, output, "output", grad_output, "grad_output")
    with backend.on_device_of(grad_output):
        g, y = _prepared_pair(backend, grad_output, "grad_output", output, "output",
                              backend.HALF_DTYPES)
        out = _checked_out(backend, out, g, "grad_output", [(g, "grad_output"), (y, "output")],
                           backend.HALF_DTYPES)
        try:
            return backend.sigmoid_backward(g, y, out)
        except backend.ProbabilityOutOfRange:
            raise ValueError(SIGMOID_OUTPUT_OUT_OF_RANGE) from None


# ---- the checked path ---------------------------------------------------------------------------
def _checked_loss(kind, input, target, weight, pos_weight, reduction, grad_output, out):
    if _is_dask(input) or _is_dask(target):
        # Imported here, only for Dask arrays: `import fastloss` never imports dask.
        from . import _dask
        return _dask.loss(_IN_MEMORY, kind, input, target, weight, pos_weight, reduction,
                          grad_output, out)
    input, target, weight, pos_weight, grad_output, out = (
        adopt(value, name) for value, name in
        ((input, "input"), (target, "target"), (weight, "weight"), (pos_weight, "pos_weight"),
         (grad_output, "grad_output"), (out, "out")))
    backend = _backend_of(input, "input")
    _check_array(backend, target, "target", input, "input")
    check_reduction(reduction)
    with backend.on_device_of(input):
        return _loss_on_device(backend, kind, input, target, weight, pos_weight, reduction,
                               grad_output, out)


def _loss_on_device(backend, kind, input, target, weight, pos_weight, reduction, grad_output,
                    out):
    input, target = _prepared_pair(backend, input, "input", target, "target",
                                   backend.HALF_DTYPES)
    weights = _weight_buffer(backend, weight, input, "weight")
    pos_weights = _weight_buffer(backend, pos_weight, input, "pos_weight")
    scale, grad_array = 1.0, None
    if kind.want_grad:
        scale, grad_array = _split_grad_output(backend, grad_output, input, reduction)
    reads = [(input, "input"), (target, "target"), (weights, "weight"),
             (pos_weights, "pos_weight")]
    grad_weights = None
    if grad_array is not None:
        # reduction='none' with an upstream gradient per element: the gradient pass is weighted
        # by weight * grad_output (grad_output itself when there is no weight: out must not
        # overlap it in part), the loss (if wanted) by weight alone, in a pass of its own
        grad_weights = _weight_buffer(backend, _times_weight(backend, weight, grad_array, input),
                                      input, "grad_output")
        reads.append((grad_weights, "grad_output"))
    if kind.want_grad:
        out = _checked_out(backend, out, input, "input",
                           [(a, name) for a, name in reads if a is not None], backend.HALF_DTYPES)
    try:
        if grad_weights is None:
            plan = kind.passes[reduction]
            return backend.loss_pass(kind.op, plan.outputs, plan.mean, input, target, weights,
                                     pos_weights, scale, out)
        # the loss first: out may be the input, the target or a weight
        loss_value = (backend.loss_pass(kind.op, _codes.ELEMENTWISE, False, input, target,
                                        weights, pos_weights, 1.0, None)
                      if kind.want_loss else None)
        grad = backend.loss_pass(kind.op, _codes.GRAD, False, input, target, grad_weights,
                                 pos_weights, 1.0, out)
    except backend.ProbabilityOutOfRange:
        raise ValueError(OUT_OF_RANGE) from None
    return (loss_value, grad) if kind.want_loss else grad


def loss_partial(op, want_grad, input, target, weight, pos_weight, grad_scale):
    """One block of a larger array (fastloss._dask): its unrounded sum as (hi, lo), a
    double-double, or (hi, lo, gradient) with the gradient times ``grad_scale``."""
    backend = _backend_of(input, "input")
    if not hasattr(backend, "loss_partial"):
        raise NotImplementedError(f"reduced losses of Dask arrays of {backend.ARRAY} blocks are "
                                  "not implemented yet (their partial sums are CPU only); use "
                                  "reduction='none' or NumPy blocks")
    _check_array(backend, target, "target", input, "input")
    with backend.on_device_of(input):
        input, target = _prepared_pair(backend, input, "input", target, "target")
        weights = _weight_buffer(backend, weight, input, "weight")
        pos_weights = _weight_buffer(backend, pos_weight, input, "pos_weight")
        outputs = _codes.SUM_AND_GRAD if want_grad else _codes.SUM
        try:
            return backend.loss_partial(op, outputs, input, target, weights, pos_weights,
                                        grad_scale)
        except backend.ProbabilityOutOfRange:
            raise ValueError(OUT_OF_RANGE) from None


# ---- array families ------------------------------------------------------------------------------
def _conversion_hint(value, name, like=None, like_name=None):
    """How to turn ``value`` (not an array fastloss takes) into one ('; ...'), or '' where no
    conversion makes sense (None, strings, bytes)."""
    if name == "out":  # a converted copy would not be written: a new buffer is the fix
        return f"; pass a buffer such as np.empty_like({like_name or 'input'})"
    if value is None or isinstance(value, (str, bytes)):
        return ""
    of_like = f" (the dtype of {like_name})" if like is not None and like_name else ""
    return (f"; convert it with np.asarray({name}, dtype={_spelling(_float_dtype_name(like))})"
            f"{of_like}")


def _must_be_an_array(value, name, family, examples, like=None, like_name=None):
    """The TypeError for a value that is no array of the call's family (lists, scalars, ...);
    arrays of other libraries never get here: _interop.adopt has taken them."""
    return TypeError(f"{name} must be a {family}, or an array of another library that speaks "
                     f"DLPack or an array interface ({examples})"
                     f"{_conversion_hint(value, name, like, like_name)}; got "
                     f"{_type_name(value)}")


def _backend_of(array, name) -> ModuleType:
    """The backend for the family of a call's first array; TypeError if it is not an array."""
    if type(array).__module__.startswith("cupy"):
        # Imported here, only for CuPy arrays: `import fastloss` never imports CuPy.
        from . import _cuda
        _check_array(_cuda, array, name)
        return _cuda
    if isinstance(array, np.ndarray):
        _check_array(_numpy_backend, array, name)
        return _numpy_backend
    raise _must_be_an_array(array, name, "numpy.ndarray or a cupy.ndarray",
                            "a torch.Tensor, a JAX array")


def _check_array(backend, value, name, like=None, like_name=None):
    """``value`` is an array of ``backend``'s family; ``like`` (the call's first array) names
    the dtype a conversion should take."""
    if not backend.is_array(value):
        elsewhere = backend.elsewhere(value)
        if elsewhere is not None:
            raise TypeError(f"{name} is {elsewhere} but the call's first array is a "
                            f"{backend.ARRAY}; all arrays of one call must be on the same "
                            f"device ({backend.MOVE_HINT})")
        examples = ("a CPU torch.Tensor, a JAX array" if backend is _numpy_backend
                    else "a CUDA torch.Tensor, a Numba device array")
        raise _must_be_an_array(value, name, f"{backend.ARRAY} like the call's first array "
                                             f"(all on {backend.WHERE})", examples, like,
                                like_name)
    _reject_masked(value, name)


def _reject_masked(value, name):
    """numpy.ma arrays are ndarrays: the kernels would read their data and ignore the mask."""
    if type(value) is not np.ndarray and isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray, whose mask fastloss would ignore; "
                        f"pass a plain numpy.ndarray ({name}.filled(value) or {name}.data)")


def _check_float_dtype(a, name, like=None, like_name=None, halves=()):
    """``_checks.check_float_dtype``; a bfloat16 array the call takes also gets its NumPy
    type number registered with the C++ module (ml_dtypes defines it at run time)."""
    check_float_dtype(a, name, like, like_name, halves)
    if storage_name(a.dtype) == "bfloat16":
        _numpy_backend.register_bfloat16(a.dtype)


def _check_same_device(backend, a, name, like, like_name):
    if not backend.same_device(a, like):
        raise ValueError(f"{name} is on {backend.device_name(a)} but {like_name} is on "
                         f"{backend.device_name(like)}; all arrays of one call must be on the "
                         "same device")


def _prepared_input(backend, a, name, halves=()):
    """An array as the kernels read it; ``halves``: the 16-bit dtypes the call takes too (the
    backend's ``HALF_DTYPES`` for the elementwise losses and sigmoid, ``ROW_HALF_DTYPES`` for
    the softmax family, cross_entropy, tanh and relu)."""
    _check_float_dtype(a, name, halves=halves)
    return backend.contiguous(a, name)


def _prepared_pair(backend, a, a_name, b, b_name, halves=()):
    """Two arrays of one shape, dtype and device, as the kernels read them."""
    _check_float_dtype(a, a_name, halves=halves)
    _check_float_dtype(b, b_name, a, a_name, halves=halves)
    _check_same_dtype(b, b_name, a, a_name)
    _check_same_device(backend, b, b_name, a, a_name)
    _check_same_shape(b, b_name, a, a_name)
    return backend.contiguous(a, a_name), backend.contiguous(b, b_name)


def _checked_out(backend, out, like, like_name, reads, halves=()):
    """A caller's out= for an array of ``like``'s shape (None: the backend allocates one). It
    may be exactly one of the arrays the kernels read, ``reads`` [(array, name)], each element
    being read before it is written, but must not overlap any other."""
    if out is None:
        return None
    _check_array(backend, out, "out", like, like_name)
    _check_float_dtype(out, "out", like, like_name, halves)
    _check_same_dtype(out, "out", like, like_name)
    _check_same_device(backend, out, "out", like, like_name)
    _check_same_shape(out, "out", like, like_name)
    if not out.flags.c_contiguous or backend.address(out) % out.itemsize:
        raise ValueError("out must be C-contiguous and aligned")
    if not backend.writeable(out):
        raise ValueError("out is read-only; expected a writeable array")
    start = backend.address(out)
    end = start + out.nbytes
    for array, name in reads:
        begin = backend.address(array)
        if (out.nbytes and array.nbytes and start < begin + array.nbytes and begin < end
                and (start, end) != (begin, begin + array.nbytes)):
            raise ValueError(f"out overlaps {name} without being the same array; pass a "
                             f"separate buffer or {name} itself")
    return out


# ---- weights and the upstream gradient ------------------------------------------------------------
def _not_an_array_or_number(backend, value, name):
    elsewhere = " (all arrays of one call must be on the same device)" if (
        backend.elsewhere(value) is not None) else ""
    return TypeError(f"{name} must be a {backend.ARRAY} or a real number, got "
                     f"{_type_name(value)}{elsewhere}")


def _checked_weight(backend, weight, input, name):
    """``weight`` checked against ``input``: a float (a scalar) or an array of the family."""
    if _is_real_scalar(weight):
        return _as_float(weight, name)
    if not backend.is_array(weight):
        raise _not_an_array_or_number(backend, weight, name)
    _check_array(backend, weight, name)
    _check_same_dtype(weight, name, input, "input")
    _check_same_device(backend, weight, name, input, "input")
    backend.readable(weight, name)
    shape = input.shape
    if weight.ndim > len(shape) or any(a != 1 and a != b
                                       for a, b in zip(weight.shape[::-1], shape[::-1])):
        raise ValueError(f"{name} has shape {weight.shape}, which does not broadcast to the "
                         f"input shape {shape}")
    return weight


def _weight_buffer(backend, weight, input, name):
    """``weight`` broadcast against ``input`` as the kernels read it: a 1-D buffer ``w``, element
    ``i`` of the input using ``w[i % len(w)]``. That covers without a copy a weight that
    broadcasts like a trailing block of the input (a scalar, ``(C,)`` against ``(B, C)``,
    ``(1, C, L)`` against ``(B, C, L)``, or the full shape); any other broadcast (``(B, 1)``
    against ``(B, C)``) is materialised once. None for no weight or an empty input."""
    if weight is None:
        return None
    w = _checked_weight(backend, weight, input, name)
    n = input.size
    if n == 0:
        return None
    xp = backend.array_module()
    wanted = min(MIN_PERIOD, n)
    if isinstance(w, float):
        return xp.full((wanted,), w, dtype=input.dtype)
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
    return backend.contiguous(flat, name)


def _split_grad_output(backend, grad_output, input, reduction, against=None,
                       against_name="the input shape"):
    """grad_output as (float scale, None) or, for an array with reduction='none',
    (1.0, array of the input's dtype broadcastable to ``against``: the input's shape unless
    given, as for cross_entropy's rows)."""
    if isinstance(grad_output, float):
        return grad_output, None
    if _is_real_scalar(grad_output):
        return _as_float(grad_output, "grad_output"), None
    if (isinstance(grad_output, np.ndarray) or backend.is_array(grad_output)) and (
            grad_output.ndim == 0):
        _reject_masked(grad_output, "grad_output")
        if grad_output.dtype.kind not in "fiu":  # float() of a complex drops its imaginary part
            raise TypeError(f"grad_output has dtype {grad_output.dtype}; expected a real number")
        return float(grad_output), None  # on a GPU: reads one value back (a synchronisation)
    if not backend.is_array(grad_output):
        raise _not_an_array_or_number(backend, grad_output, "grad_output")
    _check_array(backend, grad_output, "grad_output")
    if reduction != "none":
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r} "
                         f"(the loss is a scalar); got shape {grad_output.shape}")
    _check_same_dtype(grad_output, "grad_output", input, "input")
    _check_same_device(backend, grad_output, "grad_output", input, "input")
    wanted = tuple(input.shape if against is None else against)
    try:
        shape = np.broadcast_shapes(grad_output.shape, wanted)
    except ValueError:
        shape = None
    if shape != wanted:
        raise ValueError(f"grad_output has shape {grad_output.shape}, which does not broadcast "
                         f"to {against_name} {wanted}")
    backend.readable(grad_output, "grad_output")
    return 1.0, grad_output


def _times_weight(backend, weight, grad_array, input) -> Any:
    """The gradient pass's weight when grad_output is an array: weight * grad_output."""
    if weight is None:
        return grad_array
    w = _checked_weight(backend, weight, input, "weight")
    return backend.array_module().multiply(w, grad_array, dtype=input.dtype)


# ---- multi-class: softmax family, cross-entropy, activations ------------------------------------
def cross_entropy_kind(want_loss, want_grad):
    """The passes of a public cross-entropy function (op -1: its pass is the row scan of the
    multi-class kernels, not a LossOp)."""
    return loss_kind(-1, want_loss, want_grad)


def _row_shape(shape, axis):
    """(outer, classes, inner) of an array of ``shape`` along ``axis``."""
    return (math.prod(shape[:axis]), shape[axis] if shape else 1, math.prod(shape[axis + 1:]))


def softmax_forward(op, input, dim, out=None):
    """softmax (op SOFTMAX) or log_softmax (LOG_SOFTMAX) of ``input`` along ``dim``."""
    if type(input) is _ndarray and type(dim) is int and (out is None or type(out) is _ndarray):
        ndim = input.ndim
        if -ndim <= dim < ndim and input.shape[dim]:
            axis = dim % ndim
            shape = input.shape
            result = _cpu_row_pass(op, input, None, math.prod(shape[:axis]), shape[axis],
                                   math.prod(shape[axis + 1:]), out)
            if result is not None:
                return result
    if _is_dask(input):
        from . import _dask
        return _dask.softmax_forward(_IN_MEMORY, op, input, dim, out)
    input, out = adopt(input, "input"), adopt(out, "out")
    backend = _backend_of(input, "input")
    axis = checked_dim(dim, input.ndim)
    with backend.on_device_of(input):
        x = _prepared_input(backend, input, "input", backend.ROW_HALF_DTYPES)
        out = _checked_out(backend, out, x, "input", [(x, "input")], backend.ROW_HALF_DTYPES)
        shape = _row_shape(x.shape, axis)
        if shape[1] == 0:  # no classes: nothing to compute
            return backend.array_module().empty_like(x) if out is None else out
        return backend.row_pass(op, x, None, shape, out)


def softmax_backward(op, grad_output, output, dim, out=None):
    """The backward pass of softmax (op SOFTMAX_BACKWARD) or log_softmax
    (LOG_SOFTMAX_BACKWARD) from grad_output and the forward output, along ``dim``."""
    if (type(grad_output) is _ndarray and type(output) is _ndarray and type(dim) is int
            and (out is None or type(out) is _ndarray) and grad_output.shape == output.shape):
        ndim = output.ndim
        if -ndim <= dim < ndim and output.shape[dim]:
            axis = dim % ndim
            shape = output.shape
            result = _cpu_row_pass(op, grad_output, output, math.prod(shape[:axis]),
                                   shape[axis], math.prod(shape[axis + 1:]), out)
            if result is not None:
                return result
    if _is_dask(grad_output) or _is_dask(output):
        from . import _dask
        return _dask.softmax_backward(_IN_MEMORY, op, grad_output, output, dim, out)
    grad_output, output = adopt(grad_output, "grad_output"), adopt(output, "output")
    out = adopt(out, "out")
    backend = _backend_of(grad_output, "grad_output")
    _check_array(backend, output, "output")
    axis = checked_dim(dim, grad_output.ndim)
    with backend.on_device_of(grad_output):
        g, y = _prepared_pair(backend, grad_output, "grad_output", output, "output",
                              backend.ROW_HALF_DTYPES)
        out = _checked_out(backend, out, g, "grad_output", [(g, "grad_output"), (y, "output")],
                           backend.ROW_HALF_DTYPES)
        shape = _row_shape(g.shape, axis)
        if shape[1] == 0:
            return backend.array_module().empty_like(g) if out is None else out
        return backend.row_pass(op, g, y, shape, out)


def activation(op, input, out=None):
    """tanh (op TANH) or relu (RELU) of ``input``, element by element."""
    if type(input) is _ndarray and (out is None or type(out) is _ndarray):
        result = _cpu_activation(op, input, None, out)
        if result is not None:
            return result
    if _is_dask(input):
        from . import _dask
        return _dask.activation(_IN_MEMORY, op, input, out)
    input, out = adopt(input, "input"), adopt(out, "out")
    backend = _backend_of(input, "input")
    with backend.on_device_of(input):
        x = _prepared_input(backend, input, "input", backend.ROW_HALF_DTYPES)
        out = _checked_out(backend, out, x, "input", [(x, "input")], backend.ROW_HALF_DTYPES)
        return backend.activation(op, x, None, out)


def activation_backward(op, grad_output, output, out=None):
    """The backward pass of tanh (TANH_BACKWARD) or relu (RELU_BACKWARD) from grad_output and
    the forward output."""
    if type(grad_output) is _ndarray and type(output) is _ndarray and (
            out is None or type(out) is _ndarray):
        result = _cpu_activation(op, grad_output, output, out)
        if result is not None:
            return result
    if _is_dask(grad_output) or _is_dask(output):
        from . import _dask
        return _dask.activation_backward(_IN_MEMORY, op, grad_output, output, out)
    grad_output, output = adopt(grad_output, "grad_output"), adopt(output, "output")
    out = adopt(out, "out")
    backend = _backend_of(grad_output, "grad_output")
    _check_array(backend, output, "output")
    with backend.on_device_of(grad_output):
        g, y = _prepared_pair(backend, grad_output, "grad_output", output, "output",
                              backend.ROW_HALF_DTYPES)
        out = _checked_out(backend, out, g, "grad_output", [(g, "grad_output"), (y, "output")],
                           backend.ROW_HALF_DTYPES)
        return backend.activation(op, g, y, out)


_INDEX_KINDS = {np.dtype(np.int64): _codes.CLASS_INDEX_64, np.dtype(np.int32): _codes.CLASS_INDEX_32}


def cross_entropy(kind, input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, grad_output=1.0, out=None):
    if (type(input) is _ndarray and type(target) is _ndarray and weight is None
            and type(grad_output) is float and type(reduction) is str
            and type(ignore_index) is int and type(label_smoothing) is float
            and (out is None or type(out) is _ndarray) and input.ndim >= 2):
        plan = kind.passes.get(reduction)
        shape = input.shape
        loss_shape = shape[:1] + shape[2:]
        target_kind = _INDEX_KINDS.get(target.dtype)
        if target_kind is None and target.dtype == input.dtype:
            target_kind, wanted = _codes.PROBABILITIES, shape
        else:
            wanted = loss_shape
        if (plan is not None and target_kind is not None and target.shape == wanted
                and -2**63 <= ignore_index < 2**63 and shape[1]):
            try:
                result = _cpu_cross_entropy_pass(
                    plan.outputs, target_kind, plan.mean, input, target, None, ignore_index,
                    label_smoothing, grad_output, out, shape[0], shape[1],
                    math.prod(shape[2:]), loss_shape)
            except _CpuClassIndexOutOfRange as error:
                raise _class_index_error(error, loss_shape, shape[1], ignore_index) from None
            if result is not None:
                return result
    return _checked_cross_entropy(kind, input, target, weight, ignore_index, reduction,
                                  label_smoothing, grad_output, out)


def _class_index_error(error, loss_shape, classes, ignore_index):
    row, value = error.args
    where = tuple(int(i) for i in np.unravel_index(row, loss_shape)) if loss_shape else ()
    return ValueError(f"target holds the class index {value} at {where}, outside [0, {classes}) "
                      f"for an input of C = {classes} classes (and not ignore_index="
                      f"{ignore_index})")


def _checked_cross_entropy(kind, input, target, weight, ignore_index, reduction,
                           label_smoothing, grad_output, out, partial=False):
    """The checked cross-entropy call; ``partial``: one Dask block's unrounded partial
    (``cross_entropy_partial``), from the reduction 'sum' pass of ``kind``."""
    if _is_dask(input) or _is_dask(target):
        ignore_index, smoothing = _checked_cross_entropy_numbers(reduction, ignore_index,
                                                                 label_smoothing)
        from . import _dask
        return _dask.cross_entropy(_IN_MEMORY, kind, input, target, weight, ignore_index,
                                   reduction, smoothing, grad_output, out)
    input, target, weight, grad_output, out = (
        adopt(value, name) for value, name in
        ((input, "input"), (target, "target"), (weight, "weight"), (grad_output, "grad_output"),
         (out, "out")))
    backend = _backend_of(input, "input")
    _check_array(backend, target, "target")
    ignore_index, smoothing = _checked_cross_entropy_numbers(reduction, ignore_index,
                                                             label_smoothing)
    with backend.on_device_of(input):
        return _cross_entropy_on_device(backend, kind, input, target, weight, ignore_index,
                                        reduction, smoothing, grad_output, out, partial)


def _checked_cross_entropy_numbers(reduction, ignore_index, label_smoothing):
    """reduction checked; (ignore_index as an int, label_smoothing as a float), checked."""
    check_reduction(reduction)
    if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index,
                                                                    (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an int, got {_type_name(ignore_index)}")
    if not -2**63 <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in an int64, got {ignore_index}")
    if not _is_real_scalar(label_smoothing):
        raise TypeError(f"label_smoothing must be a real number, got {_type_name(label_smoothing)}")
    smoothing = _as_float(label_smoothing, "label_smoothing")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return int(ignore_index), smoothing


def _cross_entropy_on_device(backend, kind, input, target, weight, ignore_index, reduction,
                             label_smoothing, grad_output, out, partial=False):
    _check_float_dtype(input, "input", halves=backend.ROW_HALF_DTYPES)
    class_axis, classes, loss_shape = cross_entropy_rows(input.shape)
    target_kind = _cross_entropy_target_kind(backend, target, input, loss_shape)
    x = backend.contiguous(input, "input")
    t = backend.contiguous(target, "target")
    weights = None
    if weight is not None:
        if not backend.is_array(weight):
            raise _not_an_array_or_none(backend, weight, "weight")
        _check_array(backend, weight, "weight")
        _check_same_dtype(weight, "weight", input, "input")
        _check_same_device(backend, weight, "weight", input, "input")
        if weight.shape != (classes,):
            raise ValueError(f"weight has shape {weight.shape}, expected ({classes},) (one "
                             f"weight per class, C = {classes})")
        weights = backend.contiguous(weight, "weight")
    scale, grad_array = 1.0, None
    if kind.want_grad:
        scale, grad_array = _split_row_grad_output(backend, grad_output, input, loss_shape,
                                                   reduction)
    reads = [(x, "input"), (t, "target"), (weights, "weight"), (grad_array, "grad_output")]
    if kind.want_grad:
        out = _checked_out(backend, out, x, "input",
                           [(a, name) for a, name in reads if a is not None],
                           backend.ROW_HALF_DTYPES)
    plan = kind.passes[reduction]
    shape = _row_shape(x.shape, class_axis)
    try:
        if partial:
            if not hasattr(backend, "cross_entropy_partial"):
                raise NotImplementedError(
                    f"reduced cross-entropy losses of Dask arrays of {backend.ARRAY} blocks are "
                    "not implemented yet (their partial sums are CPU only); use "
                    "reduction='none' or NumPy blocks")
            return backend.cross_entropy_partial(kind.want_grad, target_kind, x, t, weights,
                                                 ignore_index, label_smoothing, scale, shape)
        return backend.cross_entropy_pass(plan.outputs, target_kind, plan.mean, x, t, weights,
                                          ignore_index, label_smoothing,
                                          scale if grad_array is None else grad_array, out,
                                          shape, loss_shape)
    except backend.ClassIndexOutOfRange as error:
        raise _class_index_error(error, loss_shape, classes, ignore_index) from None


def _not_an_array_or_none(backend, value, name):
    return TypeError(f"{name} must be None or a {backend.ARRAY} of one weight per class, got "
                     f"{_type_name(value)}")


def _cross_entropy_target_kind(backend, target, input, loss_shape):
    """CLASS_INDEX_64/32 for integer targets of ``loss_shape``, PROBABILITIES for float targets
    of the input's shape; the errors name what was expected."""
    _check_same_device(backend, target, "target", input, "input")
    dtype = target.dtype
    if dtype.kind in "iu":
        if target.shape == input.shape and input.shape != loss_shape:
            raise ValueError(f"target holds class indices (dtype {dtype}) but has the input's "
                             f"shape {input.shape}; class indices have shape {loss_shape} (the "
                             "input's without the class dimension); for class probabilities "
                             f"pass a target of dtype {input.dtype}")
        if dtype not in _INDEX_KINDS or not dtype.isnative:
            raise TypeError(f"target has dtype {dtype.str if not dtype.isnative else dtype}; "
                            "class indices must be int64 or int32 (native byte order)")
        if target.shape != loss_shape:
            raise ValueError(f"target has shape {target.shape}, expected {loss_shape} (one "
                             f"class index per row of the input {input.shape}, which has its "
                             "classes along dimension 1)")
        return _INDEX_KINDS[dtype]
    if dtype.kind != "f" and storage_name(dtype) is None:
        raise TypeError(f"target has dtype {dtype}; expected int64 or int32 class indices or "
                        f"class probabilities of dtype {input.dtype}")
    _check_float_dtype(target, "target", halves=backend.ROW_HALF_DTYPES)
    _check_same_dtype(target, "target", input, "input")
    if target.shape != input.shape:
        raise ValueError(f"target holds class probabilities (dtype {dtype}) and must have the "
                         f"input's shape {input.shape}, got {target.shape}; class indices "
                         "must be int64 or int32")
    return _codes.PROBABILITIES


def _split_row_grad_output(backend, grad_output, input, loss_shape, reduction):
    """grad_output of cross_entropy as (float scale, None) or, for an array with
    reduction='none', (1.0, one value per row in the input's dtype)."""
    scale, array = _split_grad_output(backend, grad_output, input, reduction, loss_shape,
                                      "the loss shape")
    if array is None:
        return scale, None
    xp = backend.array_module()
    rows = xp.ascontiguousarray(xp.broadcast_to(array, loss_shape)).reshape(-1)
    return 1.0, backend.contiguous(rows, "grad_output")


def cross_entropy_partial(want_grad, input, target, weight, ignore_index, label_smoothing,
                          grad_scale):
    """One block of a larger cross-entropy (fastloss._dask), checked as the in-memory call:
    its unrounded partial (sum, sum_lo, divisor, divisor_lo), two double-doubles, or
    (partial, gradient) with ``want_grad``: the gradient of the block's 'sum' times
    ``grad_scale``."""
    return _checked_cross_entropy(cross_entropy_kind(True, want_grad), input, target, weight,
                                  ignore_index, "sum", label_smoothing, grad_scale, None,
                                  partial=True)


class _InMemory(NamedTuple):
    """The calls a Dask block runs, handed to ``_dask`` with each call (it imports nothing of
    this module: the dispatch depends on it, not it on the dispatch)."""
    loss: Any
    loss_partial: Any
    sigmoid: Any
    sigmoid_backward: Any
    cross_entropy: Any
    cross_entropy_partial: Any
    softmax_forward: Any
    softmax_backward: Any
    activation: Any
    activation_backward: Any


_IN_MEMORY = _InMemory(loss, loss_partial, sigmoid, sigmoid_backward, cross_entropy,
                       cross_entropy_partial, softmax_forward, softmax_backward, activation,
                       activation_backward)
