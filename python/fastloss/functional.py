"""The public functions, named and ordered like ``torch.nn.functional``.

Each function dispatches on the type of its first array: NumPy arrays go to the C++/OpenMP
kernels (``fastloss._cpu``), CuPy arrays to the CUDA kernels (``fastloss._cuda``, compiled at
run time from the same per-element header). Every array of one call must be of the same kind,
device and dtype. On the GPU, reduced losses are 0-d CuPy arrays (no host synchronisation) and
non-contiguous arrays are a ValueError instead of being copied.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from . import _numpy_backend
from ._interop import adopt

# A numpy.ndarray or a cupy.ndarray, or any object these take without a copy (DLPack,
# __array_interface__, __cuda_array_interface__; see fastloss._interop).
Array = Any
Weight = Union[Array, float, None]

__all__ = [
    "mse_loss", "mse_loss_grad", "mse_loss_and_grad",
    "binary_cross_entropy", "binary_cross_entropy_grad", "binary_cross_entropy_and_grad",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_grad",
    "binary_cross_entropy_with_logits_and_grad",
    "sigmoid", "sigmoid_backward",
]

_MSE = _numpy_backend.SQUARED_ERROR
_BCE = _numpy_backend.BINARY_CROSS_ENTROPY
_BCE_LOGITS = _numpy_backend.BINARY_CROSS_ENTROPY_WITH_LOGITS


def _backend(array, name="input"):
    if isinstance(array, np.ndarray):
        return _numpy_backend
    module = type(array).__module__
    if module.startswith("cupy"):
        # Imported here, only for CuPy arrays: `import fastloss` never imports CuPy.
        from . import _cuda
        return _cuda
    kind = f"{module}.{type(array).__qualname__}"
    hint = "; fastloss.torch takes torch tensors" if module.startswith("torch") else ""
    raise TypeError(f"{name} must be a numpy.ndarray or a cupy.ndarray, got {kind}{hint}")


_REDUCTION_CODES = _numpy_backend.REDUCTION_CODES
_cpu_loss_pass = _numpy_backend._cpu.loss_pass


def _loss(op, want_loss, want_grad, input, target, weight=None, pos_weight=None,
          reduction="mean", grad_output=1.0, out=None):
    # The common call (NumPy, no weights, scalar grad_output) goes straight to C++, which
    # checks everything else: a call on 16 elements must stay around a microsecond.
    if (type(input) is np.ndarray and type(target) is np.ndarray and weight is None
            and pos_weight is None and type(grad_output) is float and type(reduction) is str
            and (out is None or type(out) is np.ndarray)):
        code = _REDUCTION_CODES.get(reduction)
        if code is not None:
            return _cpu_loss_pass(op, code, want_loss, want_grad, input, target, None, None,
                                  grad_output, out)
    input, target, weight, pos_weight, grad_output, out = (
        adopt(value, name) for value, name in
        ((input, "input"), (target, "target"), (weight, "weight"), (pos_weight, "pos_weight"),
         (grad_output, "grad_output"), (out, "out")))
    return _backend(input).loss_pass(op, want_loss, want_grad, input, target, weight,
                                     pos_weight, reduction, grad_output, out)


_COMMON = """
    Arrays: NumPy (or CuPy, on the GPU), float32 or float64, any shape; ``target`` has the
    input's shape and dtype. Arrays of other libraries that speak DLPack,
    ``__array_interface__`` or ``__cuda_array_interface__`` are taken without a copy (results
    are NumPy or CuPy arrays; an ``out`` of theirs is written in place).
    Inputs that are not C-contiguous are copied once; ``out`` must be C-contiguous, writeable,
    of the input's shape and dtype, and may be the input itself (in-place).
    ``weight`` rescales each element's loss and broadcasts against ``input`` like PyTorch's
    (a scalar, a trailing block such as ``(C,)`` for ``(B, C)``, or the full shape; other
    broadcasts are materialised once).

    Reductions: 'mean' (sum / element count; NaN for an empty input), 'sum' (0 for an empty
    input), 'none' (per-element array). Sums are accurate to about one ulp of the result and give
    the same bits for any number of threads: every term is a double, chunks of fixed size are
    summed with double accumulators and combined in a fixed tree. (The BCE losses evaluate
    exp/log in float32 for float32 input, a few ulp per element like PyTorch; those errors
    average out, so a float32 sum over many elements stays within about one ulp.)
    A reduced loss is a NumPy scalar of the input's dtype (a 0-d CuPy array for CuPy input);
    gradients are arrays of the input's kind.

    NaN and inf are values, not errors: they propagate as in the reference (an infinite
    ``pos_weight`` gives NaN or inf wherever it meets a non-zero target).

    Raises:
        TypeError: an argument is not an array (lists, buffers, ``__array__``-only objects,
            a tensor that requires grad, GPU arrays in a call on NumPy arrays, ``numpy.ma``
            masked arrays, whose mask would be ignored), has another dtype than
            float32/float64, or the dtypes of the arrays differ (never upcast silently).
        ValueError: shapes differ or do not broadcast, unknown reduction, bad ``out`` (read-only,
            not C-contiguous, partly overlapping an input), a scalar beyond the float64 range.
"""

_GRAD = """
    The gradient is d loss / d input times ``grad_output`` (a scalar; for reduction='none'
    also an array broadcastable to the input, the upstream gradient of each element).
"""


def _doc(summary, extra=""):
    def attach(function):
        function.__doc__ = summary + extra + _COMMON
        return function
    return attach


# ---- mean squared error ------------------------------------------------------------------------
@_doc("""Mean squared error: reduce(weight * (input - target)**2).

    Like ``torch.nn.functional.mse_loss`` (which has no weight).
""")
def mse_loss(input: Array, target: Array, *, weight: Weight = None,
             reduction: str = "mean") -> Any:
    return _loss(_MSE, True, False, input, target, weight, None, reduction)


@_doc("""Gradient of ``mse_loss`` with respect to input: 2 * (input - target) * weight [/ N].
""", _GRAD)
def mse_loss_grad(input: Array, target: Array, *, weight: Weight = None,
                  reduction: str = "mean", grad_output: Weight = 1.0,
                  out: Array | None = None) -> Array:
    return _loss(_MSE, False, True, input, target, weight, None, reduction, grad_output, out)


@_doc("""``(mse_loss(...), mse_loss_grad(...))`` computed in one pass over the inputs.

    Reads input and target once and writes the gradient once (12 bytes per float32 element),
    instead of the ~28 bytes of a separate forward, reduction and backward.
""", _GRAD)
def mse_loss_and_grad(input: Array, target: Array, *, weight: Weight = None,
                      reduction: str = "mean", grad_output: Weight = 1.0,
                      out: Array | None = None) -> tuple[Any, Array]:
    return _loss(_MSE, True, True, input, target, weight, None, reduction, grad_output, out)


# ---- binary cross-entropy on probabilities ---------------------------------------------------------
@_doc("""Binary cross-entropy on probabilities, like ``torch.nn.functional.binary_cross_entropy``.

    loss = -weight * (target * log(input) + (1 - target) * log(1 - input)), each log clamped
    at -100, so input exactly 0 or 1 gives a finite loss (PyTorch's values), never inf/NaN.
    An input outside [0, 1] raises ValueError (as in PyTorch); NaN propagates. For logits use
    ``binary_cross_entropy_with_logits``, which cannot saturate.
""")
def binary_cross_entropy(input: Array, target: Array, *, weight: Weight = None,
                         reduction: str = "mean") -> Any:
    return _loss(_BCE, True, False, input, target, weight, None, reduction)


@_doc("""Gradient of ``binary_cross_entropy``: (input - target) / max(input*(1-input), 1e-12).

    The denominator is clamped at 1e-12 like PyTorch's. Input outside [0, 1]: ValueError.
""", _GRAD)
def binary_cross_entropy_grad(input: Array, target: Array, *, weight: Weight = None,
                              reduction: str = "mean", grad_output: Weight = 1.0,
                              out: Array | None = None) -> Array:
    return _loss(_BCE, False, True, input, target, weight, None, reduction, grad_output, out)


@_doc("""``(binary_cross_entropy(...), binary_cross_entropy_grad(...))`` in one pass.
""", _GRAD)
def binary_cross_entropy_and_grad(input: Array, target: Array, *, weight: Weight = None,
                                  reduction: str = "mean", grad_output: Weight = 1.0,
                                  out: Array | None = None) -> tuple[Any, Array]:
    return _loss(_BCE, True, True, input, target, weight, None, reduction, grad_output, out)


# ---- binary cross-entropy on logits ----------------------------------------------------------------
_LOGITS = """
    loss = pos_weight * target * softplus(-z) + (1 - target) * softplus(z), z = input, the
    same value as ``torch.nn.functional.binary_cross_entropy_with_logits``, computed without
    overflow for every finite z (z = +-FLT_MAX included). ``pos_weight`` broadcasts like
    ``weight`` (typically shape ``(C,)`` for input ``(B, C)``).
    At z = +inf the loss is 0 where target == 1 and +inf otherwise; at z = -inf it is 0 where
    target == 0 and +inf otherwise (the mathematical limits; PyTorch returns NaN). The gradient
    is (pos_weight*target + 1 - target) * sigmoid(z) - pos_weight*target: 1 - target at +inf,
    -pos_weight*target at -inf, times weight.
"""


@_doc("""Binary cross-entropy on logits (the sigmoid is applied inside, stably).
""", _LOGITS)
def binary_cross_entropy_with_logits(input: Array, target: Array, *, weight: Weight = None,
                                     pos_weight: Weight = None, reduction: str = "mean") -> Any:
    return _loss(_BCE_LOGITS, True, False, input, target, weight, pos_weight, reduction)


@_doc("""Gradient of ``binary_cross_entropy_with_logits`` with respect to the logits.
""", _LOGITS + _GRAD)
def binary_cross_entropy_with_logits_grad(input: Array, target: Array, *, weight: Weight = None,
                                          pos_weight: Weight = None, reduction: str = "mean",
                                          grad_output: Weight = 1.0, out: Array | None = None
                                          ) -> Array:
    return _loss(_BCE_LOGITS, False, True, input, target, weight, pos_weight, reduction,
                 grad_output, out)


@_doc("""Loss and gradient of ``binary_cross_entropy_with_logits`` in one pass (one exp).
""", _LOGITS + _GRAD)
def binary_cross_entropy_with_logits_and_grad(input: Array, target: Array, *,
                                              weight: Weight = None, pos_weight: Weight = None,
                                              reduction: str = "mean",
                                              grad_output: Weight = 1.0,
                                              out: Array | None = None) -> tuple[Any, Array]:
    return _loss(_BCE_LOGITS, True, True, input, target, weight, pos_weight, reduction,
                 grad_output, out)


# ---- sigmoid ---------------------------------------------------------------------------------------
def sigmoid(input: Array, *, out: Array | None = None) -> Array:
    """Logistic sigmoid 1 / (1 + exp(-input)), elementwise, like ``torch.sigmoid``.

    Evaluated in double: float32 results are correctly rounded but for rare ties (within 1
    ulp everywhere), exactly 0 and 1 at saturation, never NaN unless the input is NaN.

    Args:
        input: NumPy array, float32 or float64, any shape (copied once if not C-contiguous).
        out: optional C-contiguous writeable array of the same shape and dtype; may be input.
    Returns:
        An array of input's shape and dtype (``out`` if given).
    Raises:
        TypeError: not a NumPy float32/float64 array (masked arrays included).
        ValueError: bad ``out``.
    """
    input, out = adopt(input, "input"), adopt(out, "out")
    return _backend(input).sigmoid(input, out)


def sigmoid_backward(grad_output: Array, output: Array, *, out: Array | None = None) -> Array:
    """Gradient of sigmoid from its output: grad_output * output * (1 - output).

    Like PyTorch's ``sigmoid_backward``: takes the forward *output*, not its input.

    Args:
        grad_output, output: NumPy arrays of one shape and dtype (float32 or float64).
        out: optional C-contiguous writeable array of that shape and dtype; may alias an input.
    Returns:
        An array of that shape and dtype (``out`` if given).
    Raises:
        TypeError: bad array kind or dtype, or dtypes differ. ValueError: shapes differ, bad out.
    """
    grad_output, output = adopt(grad_output, "grad_output"), adopt(output, "output")
    out = adopt(out, "out")
    return _backend(grad_output, "grad_output").sigmoid_backward(grad_output, output, out)
