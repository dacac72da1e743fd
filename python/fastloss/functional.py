"""The public functions, named and ordered like ``torch.nn.functional``.

Each function dispatches on the type of its first array: NumPy arrays go to the C++/OpenMP
kernels (``fastloss._cpu``), CuPy arrays to the CUDA kernels (``fastloss._cuda``, compiled at
run time from the same per-element header). Every array of one call must be of the same kind,
device and dtype. On the GPU, reduced losses are 0-d CuPy arrays (no host synchronisation) and
non-contiguous arrays are a ValueError instead of being copied.

The annotations say what a type checker can know: NumPy arrays in, NumPy scalars and arrays
out (of the input's float type); any other array (CuPy, or one taken through DLPack or an
array interface) gives an untyped result; anything that is no array (a list) is an error.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeVar, Union, overload

import numpy as np
import numpy.typing as npt

from . import _codes, _dispatch

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


class _ArrayLike(Protocol):
    """What the functions take: a NumPy or CuPy array, or an array of another library that
    speaks DLPack, ``__array_interface__`` or ``__cuda_array_interface__`` (a torch.Tensor, a
    JAX or Numba array), taken without a copy (see fastloss._interop)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...


_F = TypeVar("_F", bound=np.floating[Any])  # the float type of a NumPy input
_Weight = Union[_ArrayLike, float, None]
_Reduced = Literal["mean", "sum"]

_loss = _dispatch.loss
# The C++ module's common call, or None (csrc/module.cpp, loss_entry). The MSE and logits
# functions call it first themselves: one Python frame less on a small call (~50 ns of ~200).
# binary_cross_entropy's may raise the module's out-of-range error, which _loss words.
_loss_or_none = _dispatch.cpu_loss_or_none
# (op, returns the loss, returns the gradient) of each public function
_MSE_LOSS = _dispatch.loss_kind(_codes.SQUARED_ERROR, True, False)
_MSE_GRAD = _dispatch.loss_kind(_codes.SQUARED_ERROR, False, True)
_MSE_AND_GRAD = _dispatch.loss_kind(_codes.SQUARED_ERROR, True, True)
_BCE_LOSS = _dispatch.loss_kind(_codes.BINARY_CROSS_ENTROPY, True, False)
_BCE_GRAD = _dispatch.loss_kind(_codes.BINARY_CROSS_ENTROPY, False, True)
_BCE_AND_GRAD = _dispatch.loss_kind(_codes.BINARY_CROSS_ENTROPY, True, True)
_LOGITS_LOSS = _dispatch.loss_kind(_codes.BINARY_CROSS_ENTROPY_WITH_LOGITS, True, False)
_LOGITS_GRAD = _dispatch.loss_kind(_codes.BINARY_CROSS_ENTROPY_WITH_LOGITS, False, True)
_LOGITS_AND_GRAD = _dispatch.loss_kind(_codes.BINARY_CROSS_ENTROPY_WITH_LOGITS, True, True)


# ---- mean squared error ------------------------------------------------------------------------
@overload
def mse_loss(input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
             reduction: _Reduced = ...) -> _F: ...
@overload
def mse_loss(input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
             reduction: Literal["none"]) -> npt.NDArray[_F]: ...
@overload
def mse_loss(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = ...,
             reduction: str = ...) -> Any: ...


def mse_loss(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = None,
             reduction: str = "mean") -> Any:
    """Mean squared error, like ``torch.nn.functional.mse_loss``:
    ``reduce(weight * (input - target)**2)``.

    Args:
        input: float32 or float64 array, any shape (NumPy, CuPy, or another library's array
            taken without a copy; a NumPy input that is not C-contiguous is copied once); a
            NumPy array may also be float16 or ``ml_dtypes.bfloat16`` (read and written as
            16-bit values, computed in double), a CuPy array float16.
        target: an array of the input's shape and dtype.
        weight: optional, rescales each element's term (PyTorch's mse_loss has none): a real
            number or an array of the input's dtype that broadcasts to the input's shape
            (``(C,)`` against ``(B, C)``, a trailing block, or the full shape).
        reduction: 'mean' (the sum over the element count; NaN for an empty input), 'sum'
            (0 for an empty input) or 'none'.
    Returns:
        'mean'/'sum': a NumPy scalar of the input's dtype (a 0-d CuPy array for CuPy input,
        a lazy 0-d Dask array for Dask input): on the CPU the exact sum (mean) of the terms
        correctly rounded (but within ~1e-26 of a rounding boundary: csrc/kernels.h), so the
        same bits for any thread count and any chunking of Dask arrays (float16/bfloat16: the
        double-double result rounded once to the dtype).
        'none': an array of the input's shape and dtype (16-bit: each term rounded once).
    Raises:
        TypeError: an argument that is no array (the message says how to convert it), a dtype
            other than float32/float64/float16/bfloat16, or arrays of different dtypes (never
            upcast silently, a float16 input with a float32 target included).
        ValueError: target's shape differs from input's, weight does not broadcast, or an
            unknown reduction.
    """
    result = _loss_or_none(_MSE_LOSS.plan_code, input, target, weight, None, reduction, 1.0, None)
    if result is None:
        result = _loss(_MSE_LOSS, input, target, weight, None, reduction)
    return result


@overload
def mse_loss_grad(input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
                  reduction: str = ..., grad_output: _Weight = ...,
                  out: _ArrayLike | None = ...) -> npt.NDArray[_F]: ...
@overload
def mse_loss_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = ...,
                  reduction: str = ..., grad_output: _Weight = ...,
                  out: _ArrayLike | None = ...) -> Any: ...


def mse_loss_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = None,
                  reduction: str = "mean", grad_output: _Weight = 1.0,
                  out: _ArrayLike | None = None) -> Any:
    """Gradient of ``mse_loss`` with respect to input:
    ``2 * (input - target) * weight * grad_output``, divided by N for reduction='mean'.

    Args:
        input, target, weight, reduction: as in ``mse_loss``.
        grad_output: the upstream gradient: a real number, or for reduction='none' also an
            array of the input's dtype that broadcasts to the input's shape (one per element).
        out: optional C-contiguous, writeable array of the input's shape and dtype to write
            the gradient into; it may be input or target itself (each element is read before
            it is written) but must not overlap any argument in part.
    Returns:
        The gradient, an array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: as in ``mse_loss``; also for a grad_output that is no number or array.
        ValueError: as in ``mse_loss``; also for a bad ``out`` (read-only, not C-contiguous,
            partly overlapping an argument) or an array grad_output with a reducing reduction.
    """
    result = _loss_or_none(_MSE_GRAD.plan_code, input, target, weight, None, reduction, grad_output, out)
    if result is None:
        result = _loss(_MSE_GRAD, input, target, weight, None, reduction, grad_output, out)
    return result


@overload
def mse_loss_and_grad(input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
                      reduction: _Reduced = ..., grad_output: _Weight = ...,
                      out: _ArrayLike | None = ...) -> tuple[_F, npt.NDArray[_F]]: ...
@overload
def mse_loss_and_grad(input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
                      reduction: Literal["none"], grad_output: _Weight = ...,
                      out: _ArrayLike | None = ...
                      ) -> tuple[npt.NDArray[_F], npt.NDArray[_F]]: ...
@overload
def mse_loss_and_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = ...,
                      reduction: str = ..., grad_output: _Weight = ...,
                      out: _ArrayLike | None = ...) -> tuple[Any, Any]: ...


def mse_loss_and_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = None,
                      reduction: str = "mean", grad_output: _Weight = 1.0,
                      out: _ArrayLike | None = None) -> tuple[Any, Any]:
    """``(mse_loss(...), mse_loss_grad(...))`` in one pass over the inputs: input and target
    are read once and the gradient written once (12 bytes per float32 element, against about
    28 for a forward, a reduction and a backward).

    Args:
        input, target, weight, reduction: as in ``mse_loss``.
        grad_output, out: as in ``mse_loss_grad`` (grad_output scales the gradient only).
    Returns:
        ``(loss, grad)``: the loss as ``mse_loss`` returns it, the gradient as
        ``mse_loss_grad`` does.
    Raises:
        TypeError, ValueError: as ``mse_loss_grad``.
    """
    result = _loss_or_none(_MSE_AND_GRAD.plan_code, input, target, weight, None, reduction, grad_output, out)
    if result is None:
        result = _loss(_MSE_AND_GRAD, input, target, weight, None, reduction, grad_output, out)
    return result


# ---- binary cross-entropy on probabilities -----------------------------------------------------
@overload
def binary_cross_entropy(input: npt.NDArray[_F], target: _ArrayLike, *,
                         weight: _Weight = ..., reduction: _Reduced = ...) -> _F: ...
@overload
def binary_cross_entropy(input: npt.NDArray[_F], target: _ArrayLike, *,
                         weight: _Weight = ..., reduction: Literal["none"]
                         ) -> npt.NDArray[_F]: ...
@overload
def binary_cross_entropy(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = ...,
                         reduction: str = ...) -> Any: ...


def binary_cross_entropy(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = None,
                         reduction: str = "mean") -> Any:
    """Binary cross-entropy on probabilities, like ``torch.nn.functional.binary_cross_entropy``:
    ``reduce(-weight * (target * log(input) + (1 - target) * log(1 - input)))``, each log
    clamped at -100 as PyTorch does, so an input of exactly 0 or 1 gives a finite loss.

    Args:
        input: probabilities in [0, 1], float32 or float64 (a NumPy array also float16 or
            ``ml_dtypes.bfloat16``, a CuPy array float16, computed as float32 is), any shape (NumPy, CuPy, or another
            library's array). NaN propagates. For logits use
            ``binary_cross_entropy_with_logits``, which cannot saturate.
        target: an array of the input's shape and dtype (usually 0 or 1; not range-checked).
        weight: optional, rescales each element's loss: a real number or an array of the
            input's dtype that broadcasts to the input's shape (``(C,)`` against ``(B, C)``).
        reduction: 'mean' (NaN for an empty input), 'sum' (0 for an empty input) or 'none'.
    Returns:
        'mean'/'sum': a NumPy scalar of the input's dtype (a 0-d CuPy array for CuPy input),
        the same bits for any thread count; float32: each term is computed in double (within
        ~1e-9 of exact), so the result is within 1 float32 ulp of the exact value at any N, even
        for equal terms, whose errors cannot average out; float64: 1e-13 relative;
        float16/bfloat16: the double sum rounded once to the dtype (within 0.5 ulp of the
        exact value plus the terms' ~1e-9).
        'none': an array of the input's shape and dtype (float32 within 0.53 ulp; 16-bit
        results within 0.5 ulp plus ~1e-9 relative).
    Raises:
        ValueError: an input outside [0, 1] (found inside the kernel's pass), target's shape
            differs from input's, weight does not broadcast, or an unknown reduction.
        TypeError: an argument that is no array (the message says how to convert it), a dtype
            other than float32/float64/float16/bfloat16, or arrays of different dtypes.
    """
    return _loss(_BCE_LOSS, input, target, weight, None, reduction)


@overload
def binary_cross_entropy_grad(input: npt.NDArray[_F], target: _ArrayLike, *,
                              weight: _Weight = ..., reduction: str = ...,
                              grad_output: _Weight = ..., out: _ArrayLike | None = ...
                              ) -> npt.NDArray[_F]: ...
@overload
def binary_cross_entropy_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = ...,
                              reduction: str = ..., grad_output: _Weight = ...,
                              out: _ArrayLike | None = ...) -> Any: ...


def binary_cross_entropy_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = None,
                              reduction: str = "mean", grad_output: _Weight = 1.0,
                              out: _ArrayLike | None = None) -> Any:
    """Gradient of ``binary_cross_entropy`` with respect to input:
    ``(input - target) / max(input * (1 - input), 1e-12) * weight * grad_output``, divided by
    N for reduction='mean' (the denominator clamped at 1e-12 as PyTorch does).

    Args:
        input, target, weight, reduction: as in ``binary_cross_entropy``.
        grad_output: the upstream gradient: a real number, or for reduction='none' also an
            array of the input's dtype that broadcasts to the input's shape.
        out: optional C-contiguous, writeable array of the input's shape and dtype for the
            gradient; it may be input or target itself but must not overlap any argument in
            part.
    Returns:
        The gradient, an array of the input's shape and dtype (``out`` when given).
    Raises:
        ValueError: as in ``binary_cross_entropy`` (an input outside [0, 1] included); also a
            bad ``out`` or an array grad_output with a reducing reduction.
        TypeError: as in ``binary_cross_entropy``; also a grad_output that is no number or
            array.
    """
    return _loss(_BCE_GRAD, input, target, weight, None, reduction, grad_output, out)


@overload
def binary_cross_entropy_and_grad(input: npt.NDArray[_F], target: _ArrayLike, *,
                                  weight: _Weight = ..., reduction: _Reduced = ...,
                                  grad_output: _Weight = ..., out: _ArrayLike | None = ...
                                  ) -> tuple[_F, npt.NDArray[_F]]: ...
@overload
def binary_cross_entropy_and_grad(input: npt.NDArray[_F], target: _ArrayLike, *,
                                  weight: _Weight = ..., reduction: Literal["none"],
                                  grad_output: _Weight = ..., out: _ArrayLike | None = ...
                                  ) -> tuple[npt.NDArray[_F], npt.NDArray[_F]]: ...
@overload
def binary_cross_entropy_and_grad(input: _ArrayLike, target: _ArrayLike, *,
                                  weight: _Weight = ..., reduction: str = ...,
                                  grad_output: _Weight = ..., out: _ArrayLike | None = ...
                                  ) -> tuple[Any, Any]: ...


def binary_cross_entropy_and_grad(input: _ArrayLike, target: _ArrayLike, *,
                                  weight: _Weight = None, reduction: str = "mean",
                                  grad_output: _Weight = 1.0,
                                  out: _ArrayLike | None = None) -> tuple[Any, Any]:
    """``(binary_cross_entropy(...), binary_cross_entropy_grad(...))`` in one pass over the
    inputs (each read once, the gradient written once).

    Args:
        input, target, weight, reduction: as in ``binary_cross_entropy``.
        grad_output, out: as in ``binary_cross_entropy_grad`` (grad_output scales the gradient
            only).
    Returns:
        ``(loss, grad)``: the loss as ``binary_cross_entropy`` returns it, the gradient as
        ``binary_cross_entropy_grad`` does.
    Raises:
        ValueError, TypeError: as ``binary_cross_entropy_grad``.
    """
    return _loss(_BCE_AND_GRAD, input, target, weight, None, reduction, grad_output, out)


# ---- binary cross-entropy on logits ------------------------------------------------------------
@overload
def binary_cross_entropy_with_logits(input: npt.NDArray[_F], target: _ArrayLike, *,
                                     weight: _Weight = ..., pos_weight: _Weight = ...,
                                     reduction: _Reduced = ...) -> _F: ...
@overload
def binary_cross_entropy_with_logits(input: npt.NDArray[_F], target: _ArrayLike, *,
                                     weight: _Weight = ..., pos_weight: _Weight = ...,
                                     reduction: Literal["none"]) -> npt.NDArray[_F]: ...
@overload
def binary_cross_entropy_with_logits(input: _ArrayLike, target: _ArrayLike, *,
                                     weight: _Weight = ..., pos_weight: _Weight = ...,
                                     reduction: str = ...) -> Any: ...


def binary_cross_entropy_with_logits(input: _ArrayLike, target: _ArrayLike, *,
                                     weight: _Weight = None, pos_weight: _Weight = None,
                                     reduction: str = "mean") -> Any:
    """Binary cross-entropy on logits (the sigmoid applied inside, stably), the value of
    ``torch.nn.functional.binary_cross_entropy_with_logits``:
    ``reduce(weight * (pos_weight * target * softplus(-z) + (1 - target) * softplus(z)))``
    with z = input, computed without overflow for every finite z. At z = +inf the loss is 0
    where target == 1 and +inf elsewhere; at z = -inf, 0 where target == 0 and +inf elsewhere
    (the mathematical limits; PyTorch returns NaN).

    Args:
        input: logits, float32 or float64 (a NumPy array also float16 or
            ``ml_dtypes.bfloat16``, a CuPy array float16, computed as float32 is), any shape (NumPy, CuPy, or another
            library's array).
        target: an array of the input's shape and dtype (usually 0 or 1).
        weight: optional, rescales each element's loss: a real number or an array of the
            input's dtype that broadcasts to the input's shape.
        pos_weight: optional, rescales the positive term (target * softplus(-z)); broadcasts
            like weight, typically shape ``(C,)`` for an input ``(B, C)``. An infinite
            pos_weight gives NaN or inf wherever it meets a non-zero target.
        reduction: 'mean' (NaN for an empty input), 'sum' (0 for an empty input) or 'none'.
    Returns:
        'mean'/'sum': a NumPy scalar of the input's dtype (a 0-d CuPy array for CuPy input),
        the same bits for any thread count; float32: each term is computed in double (within
        ~1e-9 of exact), so the result is within 1 float32 ulp of the exact value at any N, even
        for equal terms, whose errors cannot average out; float64: 1e-13 relative;
        float16/bfloat16: the double sum rounded once to the dtype (within 0.5 ulp of the
        exact value plus the terms' ~1e-9).
        'none': an array of the input's shape and dtype (float32 within 0.53 ulp; 16-bit
        results within 0.5 ulp plus ~1e-9 relative).
    Raises:
        TypeError: an argument that is no array (the message says how to convert it), a dtype
            other than float32/float64/float16/bfloat16, or arrays of different dtypes.
        ValueError: target's shape differs from input's, a weight does not broadcast, or an
            unknown reduction.
    """
    result = _loss_or_none(_LOGITS_LOSS.plan_code, input, target, weight, pos_weight, reduction, 1.0, None)
    if result is None:
        result = _loss(_LOGITS_LOSS, input, target, weight, pos_weight, reduction)
    return result


@overload
def binary_cross_entropy_with_logits_grad(input: npt.NDArray[_F], target: _ArrayLike, *,
                                          weight: _Weight = ..., pos_weight: _Weight = ...,
                                          reduction: str = ..., grad_output: _Weight = ...,
                                          out: _ArrayLike | None = ...) -> npt.NDArray[_F]: ...
@overload
def binary_cross_entropy_with_logits_grad(input: _ArrayLike, target: _ArrayLike, *,
                                          weight: _Weight = ..., pos_weight: _Weight = ...,
                                          reduction: str = ..., grad_output: _Weight = ...,
                                          out: _ArrayLike | None = ...) -> Any: ...


def binary_cross_entropy_with_logits_grad(input: _ArrayLike, target: _ArrayLike, *,
                                          weight: _Weight = None, pos_weight: _Weight = None,
                                          reduction: str = "mean", grad_output: _Weight = 1.0,
                                          out: _ArrayLike | None = None) -> Any:
    """Gradient of ``binary_cross_entropy_with_logits`` with respect to the logits:
    ``((pos_weight * target + 1 - target) * sigmoid(z) - pos_weight * target) * weight *
    grad_output``, divided by N for reduction='mean'; at z = +inf it is (1 - target), at
    z = -inf -pos_weight * target (times the same factors).

    Args:
        input, target, weight, pos_weight, reduction: as in
            ``binary_cross_entropy_with_logits``.
        grad_output: the upstream gradient: a real number, or for reduction='none' also an
            array of the input's dtype that broadcasts to the input's shape.
        out: optional C-contiguous, writeable array of the input's shape and dtype for the
            gradient; it may be input or target itself but must not overlap any argument in
            part.
    Returns:
        The gradient, an array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: as in ``binary_cross_entropy_with_logits``; also a grad_output that is no
            number or array.
        ValueError: as in ``binary_cross_entropy_with_logits``; also a bad ``out`` or an array
            grad_output with a reducing reduction.
    """
    result = _loss_or_none(_LOGITS_GRAD.plan_code, input, target, weight, pos_weight, reduction, grad_output, out)
    if result is None:
        result = _loss(_LOGITS_GRAD, input, target, weight, pos_weight, reduction, grad_output, out)
    return result


@overload
def binary_cross_entropy_with_logits_and_grad(
        input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
        pos_weight: _Weight = ..., reduction: _Reduced = ..., grad_output: _Weight = ...,
        out: _ArrayLike | None = ...) -> tuple[_F, npt.NDArray[_F]]: ...
@overload
def binary_cross_entropy_with_logits_and_grad(
        input: npt.NDArray[_F], target: _ArrayLike, *, weight: _Weight = ...,
        pos_weight: _Weight = ..., reduction: Literal["none"], grad_output: _Weight = ...,
        out: _ArrayLike | None = ...) -> tuple[npt.NDArray[_F], npt.NDArray[_F]]: ...
@overload
def binary_cross_entropy_with_logits_and_grad(
        input: _ArrayLike, target: _ArrayLike, *, weight: _Weight = ...,
        pos_weight: _Weight = ..., reduction: str = ..., grad_output: _Weight = ...,
        out: _ArrayLike | None = ...) -> tuple[Any, Any]: ...


def binary_cross_entropy_with_logits_and_grad(input: _ArrayLike, target: _ArrayLike, *,
                                              weight: _Weight = None,
                                              pos_weight: _Weight = None,
                                              reduction: str = "mean",
                                              grad_output: _Weight = 1.0,
                                              out: _ArrayLike | None = None
                                              ) -> tuple[Any, Any]:
    """Loss and gradient of ``binary_cross_entropy_with_logits`` in one pass over the inputs,
    with one exp per element for both.

    Args:
        input, target, weight, pos_weight, reduction: as in
            ``binary_cross_entropy_with_logits``.
        grad_output, out: as in ``binary_cross_entropy_with_logits_grad`` (grad_output scales
            the gradient only).
    Returns:
        ``(loss, grad)``: the loss as ``binary_cross_entropy_with_logits`` returns it, the
        gradient as ``binary_cross_entropy_with_logits_grad`` does.
    Raises:
        TypeError, ValueError: as ``binary_cross_entropy_with_logits_grad``.
    """
    result = _loss_or_none(_LOGITS_AND_GRAD.plan_code, input, target, weight, pos_weight, reduction,
                           grad_output, out)
    if result is None:
        result = _loss(_LOGITS_AND_GRAD, input, target, weight, pos_weight, reduction, grad_output, out)
    return result


# ---- sigmoid -----------------------------------------------------------------------------------
@overload
def sigmoid(input: npt.NDArray[_F], *, out: _ArrayLike | None = ...) -> npt.NDArray[_F]: ...
@overload
def sigmoid(input: _ArrayLike, *, out: _ArrayLike | None = ...) -> Any: ...


def sigmoid(input: _ArrayLike, *, out: _ArrayLike | None = None) -> Any:
    """Logistic sigmoid ``1 / (1 + exp(-input))``, elementwise, like ``torch.sigmoid``.

    Evaluated in double: float32 results are within 0.53 ulp on every input (correctly
    rounded but for 0.06 % of them), exactly 0 and 1 at saturation, the subnormal tail kept,
    never NaN unless the input is NaN.

    Args:
        input: float32 or float64 array, any shape (NumPy, CuPy, or another library's array;
            a NumPy input that is not C-contiguous is copied once); a NumPy array may also be
            float16 or ``ml_dtypes.bfloat16``, a CuPy array float16 (computed as float32 is, rounded once to the
            dtype: within 0.5 ulp plus ~1e-9 relative).
        out: optional C-contiguous, writeable array of the input's shape and dtype; it may be
            input itself (in place) but must not overlap it in part.
    Returns:
        An array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: input is no array (the message says how to convert it), a masked array, or
            of a dtype other than float32/float64/float16/bfloat16; ``out`` of another
            dtype.
        ValueError: a bad ``out`` (shape, read-only, not C-contiguous, partly overlapping).
    """
    return _dispatch.sigmoid(input, out)


@overload
def sigmoid_backward(grad_output: npt.NDArray[_F], output: _ArrayLike, *,
                     out: _ArrayLike | None = ...) -> npt.NDArray[_F]: ...
@overload
def sigmoid_backward(grad_output: _ArrayLike, output: _ArrayLike, *,
                     out: _ArrayLike | None = ...) -> Any: ...


def sigmoid_backward(grad_output: _ArrayLike, output: _ArrayLike, *,
                     out: _ArrayLike | None = None) -> Any:
    """Gradient of ``sigmoid`` from its output: ``grad_output * output * (1 - output)``.

    Like PyTorch's ``sigmoid_backward``, it takes the forward's *output* (``sigmoid(x)``), not
    its input ``x``; an output outside [0, 1], which no sigmoid gives, is refused.

    Args:
        grad_output: the upstream gradient, float32 or float64 (a NumPy array also float16
            or ``ml_dtypes.bfloat16``, a CuPy array float16), any shape.
        output: ``sigmoid``'s result, of grad_output's shape and dtype; values in [0, 1]
            (NaN propagates).
        out: optional C-contiguous, writeable array of that shape and dtype; it may be
            grad_output or output itself but must not overlap either in part.
    Returns:
        An array of grad_output's shape and dtype (``out`` when given).
    Raises:
        ValueError: an output outside [0, 1] (found inside the kernel's pass: ``out``, if
            given, may have been written), shapes that differ, or a bad ``out``.
        TypeError: an argument that is no array, a dtype other than
            float32/float64/float16/bfloat16, or dtypes that differ.
    """
    return _dispatch.sigmoid_backward(grad_output, output, out)


# ---- multi-class ---------------------------------------------------------------------------------
def softmax(input: _ArrayLike, dim: int = -1, *, out: _ArrayLike | None = None) -> Any:
    """``exp(x_c - max) / sum(exp(x - max))`` along ``dim``, like ``torch.softmax``.

    One read of each row gives its max and its sum of exps (an online softmax, in double):
    float32 results are correctly rounded but for rare ties; NaN in a row makes the row NaN.

    Args:
        input: float32 or float64 array, any shape (NumPy, CuPy, or another library's array)
            (a NumPy array also float16 or ``ml_dtypes.bfloat16``, a CuPy array float16,
            read and written as 16-bit values, computed as float32 is, rounded once).
        dim: the axis of the classes (negative counts from the end).
        out: optional C-contiguous, writeable array of the input's shape and dtype; it may be
            input itself (in place) but must not overlap it in part.
    Returns:
        An array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: input is no array, or of a dtype it cannot take (above); ``dim`` not an
            int; ``out`` of another dtype.
        ValueError: ``dim`` out of range; a bad ``out`` (shape, read-only, not C-contiguous,
            partly overlapping).
    """
    return _dispatch.softmax_forward(_codes.SOFTMAX, input, dim, out)


def log_softmax(input: _ArrayLike, dim: int = -1, *, out: _ArrayLike | None = None) -> Any:
    """``(x_c - max) - log(sum(exp(x - max)))`` along ``dim``, like ``torch.log_softmax``.

    One read of each row (online max and sum of exps, in double); within 1 ulp (float32: 0.5
    ulp but for rare ties). NaN in a row makes the row NaN.

    Args:
        input: float32 or float64 array, any shape (NumPy, CuPy, or another library's array)
            (a NumPy array also float16 or ``ml_dtypes.bfloat16``, a CuPy array float16,
            read and written as 16-bit values, computed as float32 is, rounded once).
        dim: the axis of the classes (negative counts from the end).
        out: optional C-contiguous, writeable array of the input's shape and dtype; it may be
            input itself (in place) but must not overlap it in part.
    Returns:
        An array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: input is no array, or of a dtype it cannot take (above); ``dim`` not an
            int; ``out`` of another dtype.
        ValueError: ``dim`` out of range; a bad ``out``.
    """
    return _dispatch.softmax_forward(_codes.LOG_SOFTMAX, input, dim, out)


def softmax_backward(grad_output: _ArrayLike, output: _ArrayLike, dim: int = -1, *,
                     out: _ArrayLike | None = None) -> Any:
    """Gradient of ``softmax`` from its output y: ``y * (grad_output - sum(grad_output * y))``
    along ``dim`` (PyTorch's ``_softmax_backward_data``).

    Args:
        grad_output: the upstream gradient, float32 or float64 (NumPy: also float16 or
            bfloat16), of the output's shape.
        output: what ``softmax`` returned (of the same dtype).
        dim: the axis ``softmax`` ran along.
        out: optional C-contiguous, writeable array of that shape and dtype; it may be
            grad_output or output itself but must not overlap them in part.
    Returns:
        An array of the output's shape and dtype (``out`` when given).
    Raises:
        TypeError: an argument that is no array, a dtype not taken, or dtypes that differ.
        ValueError: shapes differ, ``dim`` out of range, a bad ``out``.
    """
    return _dispatch.softmax_backward(_codes.SOFTMAX_BACKWARD, grad_output, output, dim, out)


def log_softmax_backward(grad_output: _ArrayLike, output: _ArrayLike, dim: int = -1, *,
                         out: _ArrayLike | None = None) -> Any:
    """Gradient of ``log_softmax`` from its output y: ``grad_output - exp(y) *
    sum(grad_output)`` along ``dim`` (PyTorch's ``_log_softmax_backward_data``).

    Args:
        grad_output: the upstream gradient, float32 or float64 (NumPy: also float16 or
            bfloat16), of the output's shape.
        output: what ``log_softmax`` returned (of the same dtype).
        dim: the axis ``log_softmax`` ran along.
        out: optional C-contiguous, writeable array of that shape and dtype; it may be
            grad_output or output itself but must not overlap them in part.
    Returns:
        An array of the output's shape and dtype (``out`` when given).
    Raises:
        TypeError: an argument that is no array, a dtype not taken, or dtypes that differ.
        ValueError: shapes differ, ``dim`` out of range, a bad ``out``.
    """
    return _dispatch.softmax_backward(_codes.LOG_SOFTMAX_BACKWARD, grad_output, output, dim,
                                      out)


_CE_LOSS = _dispatch.cross_entropy_kind(True, False)
_CE_GRAD = _dispatch.cross_entropy_kind(False, True)
_CE_AND_GRAD = _dispatch.cross_entropy_kind(True, True)


def cross_entropy(input: _ArrayLike, target: _ArrayLike, *, weight: _ArrayLike | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Any:
    """Cross-entropy of logits and a target, like ``torch.nn.functional.cross_entropy``.

    Per row, with p = softmax(input) along the classes, w = ``weight`` (or 1) and eps =
    ``label_smoothing``: for a class index y, ``-(1 - eps) w_y log p_y - (eps / C) sum_c w_c
    log p_c`` (0 where y == ignore_index); for probabilities q, ``-sum_c w_c ((1 - eps) q_c +
    eps / C) log p_c``. One read of each row gives its max, its sum of exps and its loss
    (online softmax, in double); no (N, C) temporary.

    Args:
        input: logits, float32 or float64 (a NumPy array also float16 or
            ``ml_dtypes.bfloat16``, a CuPy array float16: read as 16-bit values, computed as
            float32 is, every result rounded once to it), of shape (C,), (N, C) or
            (N, C, d1, ...): the classes along dimension 1 (0 for (C,)).
        target: class indices (int64 or int32, the input's shape without the class dimension)
            or class probabilities (the input's shape and dtype).
        weight: optional (C,) array of the input's dtype, one weight per class.
        ignore_index: a class index whose rows count for nothing (class-index targets).
        reduction: 'mean' (the sum over the summed weights w_y of the non-ignored rows for
            class indices, NaN when all are ignored; over the row count for probabilities),
            'sum' or 'none' (one loss per row: the target's shape for class indices).
        label_smoothing: eps in [0, 1].
    Returns:
        'mean'/'sum': a NumPy scalar of the input's dtype (a 0-d CuPy array for CuPy input),
        within about 1 ulp of the exact value (float32: also for equal rows) and the same bits
        for any thread count. 'none': an array of the row losses.
    Raises:
        TypeError: arguments not arrays of one family; input of a dtype not taken, class
            indices not int64/int32, probabilities or weight not of the input's dtype;
            ``ignore_index`` not an int.
        ValueError: a class index outside [0, C) that is not ``ignore_index`` (the message
            names it; nothing is written), a target of the wrong shape, C = 0, ``weight`` not
            of shape (C,), ``label_smoothing`` outside [0, 1], an unknown reduction.
    """
    return _dispatch.cross_entropy(_CE_LOSS, input, target, weight, ignore_index, reduction,
                                   label_smoothing)


def cross_entropy_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _ArrayLike | None = None,
                       ignore_index: int = -100, reduction: str = "mean",
                       label_smoothing: float = 0.0, grad_output: _Weight = 1.0,
                       out: _ArrayLike | None = None) -> Any:
    """Gradient of ``cross_entropy`` with respect to the logits.

    Per row, ``(sum_c a_c) softmax - a`` with a_c the coefficients of ``-log p_c`` in the
    loss, times ``grad_output``, divided by the mean's divisor for 'mean'; 0 on ignored rows.

    Args:
        input: logits, float32 or float64 (NumPy: also float16 or bfloat16), of shape (C,),
            (N, C) or (N, C, d1, ...).
        target: class indices (int64 or int32, the input's shape without the class dimension)
            or class probabilities (the input's shape and dtype).
        weight: optional (C,) array of the input's dtype, one weight per class.
        ignore_index: a class index whose rows get a zero gradient.
        reduction: 'mean', 'sum' or 'none', as for ``cross_entropy``.
        label_smoothing: eps in [0, 1].
        grad_output: the upstream gradient: a scalar; for 'none' also an array of the row
            losses' shape, one value per row.
        out: optional C-contiguous, writeable array of the input's shape and dtype; it may be
            input itself.
    Returns:
        An array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: as for ``cross_entropy``; ``out`` or an array ``grad_output`` of another
            dtype.
        ValueError: as for ``cross_entropy``; a bad ``out`` or ``grad_output`` shape.
    """
    return _dispatch.cross_entropy(_CE_GRAD, input, target, weight, ignore_index, reduction,
                                   label_smoothing, grad_output, out)


def cross_entropy_and_grad(input: _ArrayLike, target: _ArrayLike, *, weight: _ArrayLike | None = None,
                           ignore_index: int = -100, reduction: str = "mean",
                           label_smoothing: float = 0.0, grad_output: _Weight = 1.0,
                           out: _ArrayLike | None = None) -> tuple[Any, Any]:
    """``(cross_entropy(...), cross_entropy_grad(...))`` in one pass over the logits (the
    gradient is written from cache, right after its row's loss).

    Args:
        input: logits, float32 or float64 (NumPy: also float16 or bfloat16), of shape (C,),
            (N, C) or (N, C, d1, ...).
        target: class indices (int64 or int32, the input's shape without the class dimension)
            or class probabilities (the input's shape and dtype).
        weight: optional (C,) array of the input's dtype, one weight per class.
        ignore_index: a class index whose rows count for nothing.
        reduction: 'mean', 'sum' or 'none', as for ``cross_entropy``.
        label_smoothing: eps in [0, 1].
        grad_output: the gradient's upstream factor (the loss is not scaled by it): a scalar;
            for 'none' also an array of the row losses' shape.
        out: optional C-contiguous, writeable array for the gradient; it may be input itself.
    Returns:
        ``(loss, grad)``: the loss as ``cross_entropy`` returns it and the gradient as
        ``cross_entropy_grad`` returns it.
    Raises:
        TypeError: as for ``cross_entropy_grad``.
        ValueError: as for ``cross_entropy_grad``.
    """
    return _dispatch.cross_entropy(_CE_AND_GRAD, input, target, weight, ignore_index,
                                   reduction, label_smoothing, grad_output, out)


# ---- tanh and relu ---------------------------------------------------------------------------------
def tanh(input: _ArrayLike, *, out: _ArrayLike | None = None) -> Any:
    """``tanh(input)``, elementwise, like ``torch.tanh``: in double, float32 results correctly
    rounded but for rare ties, +-1 exactly at saturation.

    Args:
        input: float32 or float64 array, any shape (a NumPy array also float16 or
            ``ml_dtypes.bfloat16``, a CuPy array float16, read and written as 16-bit values,
            computed in double, rounded once).
        out: optional C-contiguous, writeable array of the input's shape and dtype; it may be
            input itself.
    Returns:
        An array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: input is no array or of a dtype it cannot take (above); ``out`` of
            another dtype.
        ValueError: a bad ``out``.
    """
    return _dispatch.activation(_codes.TANH, input, out)


def tanh_backward(grad_output: _ArrayLike, output: _ArrayLike, *, out: _ArrayLike | None = None) -> Any:
    """Gradient of tanh from its output y: ``grad_output * (1 - y**2)`` (PyTorch's
    ``tanh_backward``).

    Args:
        grad_output: the upstream gradient, float32 or float64 (NumPy: also float16 or
            bfloat16).
        output: what ``tanh`` returned, of grad_output's shape and dtype.
        out: optional C-contiguous, writeable array of that shape and dtype; it may be one of
            the inputs.
    Returns:
        An array of that shape and dtype (``out`` when given).
    Raises:
        TypeError: an argument that is no array, a dtype not taken, or dtypes that differ.
        ValueError: shapes differ, a bad ``out``.
    """
    return _dispatch.activation_backward(_codes.TANH_BACKWARD, grad_output, output, out)


def relu(input: _ArrayLike, *, out: _ArrayLike | None = None) -> Any:
    """``max(input, 0)``, elementwise, like ``torch.relu``: NaN and -0.0 pass through.

    Args:
        input: float32 or float64 array, any shape (a NumPy array also float16 or
            ``ml_dtypes.bfloat16``, a CuPy array float16, read and written as 16-bit values,
            computed in double, rounded once).
        out: optional C-contiguous, writeable array of the input's shape and dtype; it may be
            input itself.
    Returns:
        An array of the input's shape and dtype (``out`` when given).
    Raises:
        TypeError: input is no array or of a dtype it cannot take (above); ``out`` of
            another dtype.
        ValueError: a bad ``out``.
    """
    return _dispatch.activation(_codes.RELU, input, out)


def relu_backward(grad_output: _ArrayLike, output: _ArrayLike, *, out: _ArrayLike | None = None) -> Any:
    """Gradient of relu from its output y: ``grad_output`` where y > 0 (or NaN), else 0
    (PyTorch's ``threshold_backward``: 0 at the kink).

    Args:
        grad_output: the upstream gradient, float32 or float64 (NumPy: also float16 or
            bfloat16).
        output: what ``relu`` returned, of grad_output's shape and dtype.
        out: optional C-contiguous, writeable array of that shape and dtype; it may be one of
            the inputs.
    Returns:
        An array of that shape and dtype (``out`` when given).
    Raises:
        TypeError: an argument that is no array, a dtype not taken, or dtypes that differ.
        ValueError: shapes differ, a bad ``out``.
    """
    return _dispatch.activation_backward(_codes.RELU_BACKWARD, grad_output, output, out)
