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
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "cross_entropy", "cross_entropy_grad", "cross_entropy_and_grad",
    "tanh", "tanh_backward", "relu", "relu_backward",
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


# ---- multi-class ---------------------------------------------------------------------------------
_ROWS = """
    Arrays: NumPy (or CuPy), float32 or float64, any shape; the rows are taken along ``dim``
    (negative counts from the end). One read of each row gives its max and its sum of exps
    (an online softmax, in double: float32 results are correctly rounded but for rare ties);
    NaN in a row makes the row NaN. ``out`` may be the input itself; other arguments as for
    ``sigmoid``.

    Raises:
        TypeError: not an array of the family, dtype not float32/float64, ``dim`` not an int.
        ValueError: ``dim`` out of range, shapes differ, bad ``out``.
"""


def _rows_doc(summary):
    def attach(function):
        function.__doc__ = summary + _ROWS
        return function
    return attach


@_rows_doc("""softmax(input)_c = exp(x_c - max) / sum(exp(x - max)) along ``dim``, like
    ``torch.softmax``.
""")
def softmax(input: Array, dim: int = -1, *, out: Array | None = None) -> Array:
    return _dispatch.softmax_forward(_codes.SOFTMAX, input, dim, out)


@_rows_doc("""log_softmax(input)_c = (x_c - max) - log(sum(exp(x - max))) along ``dim``, like
    ``torch.log_softmax``: within 1 ulp (float32: 0.5 ulp but for rare ties).
""")
def log_softmax(input: Array, dim: int = -1, *, out: Array | None = None) -> Array:
    return _dispatch.softmax_forward(_codes.LOG_SOFTMAX, input, dim, out)


@_rows_doc("""Gradient of ``softmax`` from its output y: y * (grad_output - sum(grad_output * y))
    along ``dim`` (PyTorch's ``_softmax_backward_data``).
""")
def softmax_backward(grad_output: Array, output: Array, dim: int = -1, *,
                     out: Array | None = None) -> Array:
    return _dispatch.softmax_backward(_codes.SOFTMAX_BACKWARD, grad_output, output, dim, out)


@_rows_doc("""Gradient of ``log_softmax`` from its output y: grad_output - exp(y) *
    sum(grad_output) along ``dim`` (PyTorch's ``_log_softmax_backward_data``).
""")
def log_softmax_backward(grad_output: Array, output: Array, dim: int = -1, *,
                         out: Array | None = None) -> Array:
    return _dispatch.softmax_backward(_codes.LOG_SOFTMAX_BACKWARD, grad_output, output, dim,
                                      out)


_CE_LOSS = _dispatch.cross_entropy_kind(True, False)
_CE_GRAD = _dispatch.cross_entropy_kind(False, True)
_CE_AND_GRAD = _dispatch.cross_entropy_kind(True, True)

_CROSS_ENTROPY = """
    ``input`` holds logits: shape (C,), (N, C) or (N, C, d1, ...), classes along dimension 1
    (0 for (C,)), float32 or float64. ``target`` is either class indices (int64 or int32, the
    input's shape without the class dimension: (), (N,), (N, d1, ...)) or class probabilities
    (the input's shape and dtype). Per row, with eps = ``label_smoothing`` in [0, 1]:
      class index y: loss = -(1 - eps) w_y log p_y - (eps / C) sum_c w_c log p_c, 0 where
          y == ignore_index;
      probabilities q: loss = -sum_c w_c ((1 - eps) q_c + eps / C) log p_c;
    p = softmax(input), w = ``weight`` (C,) or 1. 'mean' divides the sum by the summed weights
    w_y of the non-ignored targets (class indices; NaN when all are ignored) or by the row
    count (probabilities), exactly as ``torch.nn.functional.cross_entropy``; 'sum' sums;
    'none' returns one loss per row (the target's shape for class indices).

    One read of each row of logits gives its max, its sum of exps and its loss (online
    softmax, in double); the gradient is written in one more pass over the row, from cache. No
    (N, C) temporary. The sum over rows is exact to about one ulp and the same bits for any
    thread count (fixed chunks of rows, Kahan-compensated lanes, a fixed tree). NaN logits
    propagate; a class of coefficient 0 contributes 0 even where its logit is -inf.

    Raises:
        TypeError: not arrays of one family, wrong dtypes (input not float32/float64, class
            indices not int64/int32, probabilities not of the input's dtype), ``ignore_index``
            not an int, ``weight`` not an array.
        ValueError: a class index outside [0, C) that is not ``ignore_index`` (the message
            names it and C; nothing is written), a target of the wrong shape (class indices of
            the input's shape, probabilities of another), C = 0, ``weight`` not of shape (C,),
            ``label_smoothing`` outside [0, 1], unknown reduction, bad ``out``.
"""

_CE_GRAD_DOC = """
    The gradient is d loss / d input: (sum_c a_c) softmax - a per row (a_c the coefficients
    of -log p_c above), times ``grad_output`` (a scalar; for reduction='none' also an array of
    the loss's shape, one upstream gradient per row) [/ the mean's divisor]; 0 on ignored rows.
    ``out`` (input's shape and dtype, C-contiguous) may be the input itself.
"""


def _ce_doc(summary, extra=""):
    def attach(function):
        function.__doc__ = summary + _CROSS_ENTROPY + extra
        return function
    return attach


@_ce_doc("""Cross-entropy of logits and a target, like ``torch.nn.functional.cross_entropy``.
""")
def cross_entropy(input: Array, target: Array, *, weight: Array | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Any:
    return _dispatch.cross_entropy(_CE_LOSS, input, target, weight, ignore_index, reduction,
                                   label_smoothing)


@_ce_doc("""Gradient of ``cross_entropy`` with respect to the logits.
""", _CE_GRAD_DOC)
def cross_entropy_grad(input: Array, target: Array, *, weight: Array | None = None,
                       ignore_index: int = -100, reduction: str = "mean",
                       label_smoothing: float = 0.0, grad_output: Weight = 1.0,
                       out: Array | None = None) -> Array:
    return _dispatch.cross_entropy(_CE_GRAD, input, target, weight, ignore_index, reduction,
                                   label_smoothing, grad_output, out)


@_ce_doc("""``(cross_entropy(...), cross_entropy_grad(...))`` in one pass over the logits.
""", _CE_GRAD_DOC)
def cross_entropy_and_grad(input: Array, target: Array, *, weight: Array | None = None,
                           ignore_index: int = -100, reduction: str = "mean",
                           label_smoothing: float = 0.0, grad_output: Weight = 1.0,
                           out: Array | None = None) -> tuple[Any, Array]:
    return _dispatch.cross_entropy(_CE_AND_GRAD, input, target, weight, ignore_index,
                                   reduction, label_smoothing, grad_output, out)


# ---- tanh and relu ---------------------------------------------------------------------------------
_ACTIVATION = """
    Arrays: NumPy (or CuPy), float32 or float64, any shape; ``out`` may be the input itself
    (as for ``sigmoid``). The backward passes take the forward *output*, like PyTorch's.
"""


def tanh(input: Array, *, out: Array | None = None) -> Array:
    return _dispatch.activation(_codes.TANH, input, out)


def tanh_backward(grad_output: Array, output: Array, *, out: Array | None = None) -> Array:
    return _dispatch.activation_backward(_codes.TANH_BACKWARD, grad_output, output, out)


def relu(input: Array, *, out: Array | None = None) -> Array:
    return _dispatch.activation(_codes.RELU, input, out)


def relu_backward(grad_output: Array, output: Array, *, out: Array | None = None) -> Array:
    return _dispatch.activation_backward(_codes.RELU_BACKWARD, grad_output, output, out)


tanh.__doc__ = """tanh(input), like ``torch.tanh``: in double, float32 results correctly rounded
    but for rare ties, +-1 exactly at saturation.
""" + _ACTIVATION
tanh_backward.__doc__ = """Gradient of tanh from its output y: grad_output * (1 - y**2)
    (PyTorch's ``tanh_backward``).
""" + _ACTIVATION
relu.__doc__ = """relu(input) = 0 where input < 0, else input (NaN and -0.0 pass through, as in
    ``torch.relu``).
""" + _ACTIVATION
relu_backward.__doc__ = """Gradient of relu from its output y: grad_output where y > 0 (or NaN), else 0
    (PyTorch's ``threshold_backward``; 0 at the kink).
""" + _ACTIVATION
