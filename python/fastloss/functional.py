"""The public functions, named and ordered like ``torch.nn.functional``.

Each function dispatches on the type of its first array: NumPy arrays go to the C++/OpenMP
kernels (``fastloss._cpu``), CuPy arrays to the CUDA kernels (``fastloss._cuda``, compiled at
run time from the same per-element header). Every array of one call must be of the same kind,
device and dtype. On the GPU, reduced losses are 0-d CuPy arrays (no host synchronisation) and
non-contiguous arrays are a ValueError instead of being copied.
"""

from __future__ import annotations

from typing import Any, Union

from . import _codes, _dispatch
from ._dispatch import loss_kind

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

_loss = _dispatch.loss
# (op, returns the loss, returns the gradient) of each public function
_MSE_LOSS = loss_kind(_codes.SQUARED_ERROR, True, False)
_MSE_GRAD = loss_kind(_codes.SQUARED_ERROR, False, True)
_MSE_AND_GRAD = loss_kind(_codes.SQUARED_ERROR, True, True)
_BCE_LOSS = loss_kind(_codes.BINARY_CROSS_ENTROPY, True, False)
_BCE_GRAD = loss_kind(_codes.BINARY_CROSS_ENTROPY, False, True)
_BCE_AND_GRAD = loss_kind(_codes.BINARY_CROSS_ENTROPY, True, True)
_LOGITS_LOSS = loss_kind(_codes.BINARY_CROSS_ENTROPY_WITH_LOGITS, True, False)
_LOGITS_GRAD = loss_kind(_codes.BINARY_CROSS_ENTROPY_WITH_LOGITS, False, True)
_LOGITS_AND_GRAD = loss_kind(_codes.BINARY_CROSS_ENTROPY_WITH_LOGITS, True, True)


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
    summed with double accumulators and combined in a fixed tree. (Every float32 term is
    computed in double, within ~1e-9 of exact, so even a mean of equal terms, where
    per-element errors cannot average out, is within one ulp; 'none' outputs within 0.53 ulp.)
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
    return _loss(_MSE_LOSS, input, target, weight, None, reduction)


@_doc("""Gradient of ``mse_loss`` with respect to input: 2 * (input - target) * weight [/ N].
""", _GRAD)
def mse_loss_grad(input: Array, target: Array, *, weight: Weight = None,
                  reduction: str = "mean", grad_output: Weight = 1.0,
                  out: Array | None = None) -> Array:
    return _loss(_MSE_GRAD, input, target, weight, None, reduction, grad_output, out)


@_doc("""``(mse_loss(...), mse_loss_grad(...))`` computed in one pass over the inputs.

    Reads input and target once and writes the gradient once (12 bytes per float32 element),
    instead of the ~28 bytes of a separate forward, reduction and backward.
""", _GRAD)
def mse_loss_and_grad(input: Array, target: Array, *, weight: Weight = None,
                      reduction: str = "mean", grad_output: Weight = 1.0,
                      out: Array | None = None) -> tuple[Any, Array]:
    return _loss(_MSE_AND_GRAD, input, target, weight, None, reduction, grad_output, out)


# ---- binary cross-entropy on probabilities ---------------------------------------------------------
@_doc("""Binary cross-entropy on probabilities, like ``torch.nn.functional.binary_cross_entropy``.

    loss = -weight * (target * log(input) + (1 - target) * log(1 - input)), each log clamped
    at -100, so input exactly 0 or 1 gives a finite loss (PyTorch's values), never inf/NaN.
    An input outside [0, 1] raises ValueError (as in PyTorch); NaN propagates. For logits use
    ``binary_cross_entropy_with_logits``, which cannot saturate.
""")
def binary_cross_entropy(input: Array, target: Array, *, weight: Weight = None,
                         reduction: str = "mean") -> Any:
    return _loss(_BCE_LOSS, input, target, weight, None, reduction)


@_doc("""Gradient of ``binary_cross_entropy``: (input - target) / max(input*(1-input), 1e-12).

    The denominator is clamped at 1e-12 like PyTorch's. Input outside [0, 1]: ValueError.
""", _GRAD)
def binary_cross_entropy_grad(input: Array, target: Array, *, weight: Weight = None,
                              reduction: str = "mean", grad_output: Weight = 1.0,
                              out: Array | None = None) -> Array:
    return _loss(_BCE_GRAD, input, target, weight, None, reduction, grad_output, out)


@_doc("""``(binary_cross_entropy(...), binary_cross_entropy_grad(...))`` in one pass.
""", _GRAD)
def binary_cross_entropy_and_grad(input: Array, target: Array, *, weight: Weight = None,
                                  reduction: str = "mean", grad_output: Weight = 1.0,
                                  out: Array | None = None) -> tuple[Any, Array]:
    return _loss(_BCE_AND_GRAD, input, target, weight, None, reduction, grad_output, out)


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
    return _loss(_LOGITS_LOSS, input, target, weight, pos_weight, reduction)


@_doc("""Gradient of ``binary_cross_entropy_with_logits`` with respect to the logits.
""", _LOGITS + _GRAD)
def binary_cross_entropy_with_logits_grad(input: Array, target: Array, *, weight: Weight = None,
                                          pos_weight: Weight = None, reduction: str = "mean",
                                          grad_output: Weight = 1.0, out: Array | None = None
                                          ) -> Array:
    return _loss(_LOGITS_GRAD, input, target, weight, pos_weight, reduction, grad_output, out)


@_doc("""Loss and gradient of ``binary_cross_entropy_with_logits`` in one pass (one exp).
""", _LOGITS + _GRAD)
def binary_cross_entropy_with_logits_and_grad(input: Array, target: Array, *,
                                              weight: Weight = None, pos_weight: Weight = None,
                                              reduction: str = "mean",
                                              grad_output: Weight = 1.0,
                                              out: Array | None = None) -> tuple[Any, Array]:
    return _loss(_LOGITS_AND_GRAD, input, target, weight, pos_weight, reduction, grad_output,
                 out)


# ---- sigmoid ---------------------------------------------------------------------------------------
def sigmoid(input: Array, *, out: Array | None = None) -> Array:
    """Logistic sigmoid 1 / (1 + exp(-input)), elementwise, like ``torch.sigmoid``.

    Evaluated in double: float32 results are within 0.53 ulp on every input (correctly
    rounded but for 0.06 % of them), exactly 0 and 1 at saturation, the subnormal tail kept,
    never NaN unless the input is NaN.

    Args:
        input: NumPy array, float32 or float64, any shape (copied once if not C-contiguous).
        out: optional C-contiguous writeable array of the same shape and dtype; may be input.
    Returns:
        An array of input's shape and dtype (``out`` if given).
    Raises:
        TypeError: not a NumPy float32/float64 array (masked arrays included).
        ValueError: bad ``out``.
    """
    return _dispatch.sigmoid(input, out)


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
    return _dispatch.sigmoid_backward(grad_output, output, out)
