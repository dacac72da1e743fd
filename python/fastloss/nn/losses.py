"""The loss modules: ``MSELoss``, ``BCELoss``, ``BCEWithLogitsLoss``, ``CrossEntropyLoss``,
each computing the loss and its gradient in one fused kernel call."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import functional as F
from .._arrays import Array
from ._module import _reusable_buffer

__all__ = ["MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"]


class _Loss:
    """A loss module: ``forward(input, target)`` returns the loss and computes d loss / d input
    in the same pass (the fused ``*_and_grad`` kernel); ``backward()`` returns it."""

    _and_grad: ClassVar[Any]  # the fused *_and_grad function of fastloss.functional
    _loss: ClassVar[Any]  # the loss alone (evaluation on Dask arrays, which take no out=)

    def __init__(self, *, weight: Array | float | None = None, reduction: str = "mean") -> None:
        self.weight = weight
        self.reduction = reduction
        self._grad: Array | None = None
        self._grad_buffers: dict[tuple[str, tuple[int, ...]], Array] = {}

    def _extra(self) -> dict[str, Any]:
        return {}

    def check_target(self, target: Array, output_shape: tuple[int, ...] | None, dtype: Any,
                     name: str = "target") -> None:
        """Raises, saying how to fix it, unless ``target`` is what this loss needs for a model
        output of ``output_shape`` (None: not known) and ``dtype``: here an array of that
        shape and dtype, one value per output. ``fit`` calls it before the first step; a loss
        whose targets look otherwise (class indices) overrides it."""
        dtype = np.dtype(dtype)
        if output_shape is not None and tuple(target.shape) != tuple(output_shape):
            hint = ""
            if target.shape == output_shape[:1] and output_shape[1:] == (1,):
                hint = f": one target per sample needs a column, {name}.reshape(-1, 1)"
            raise ValueError(f"{name} has shape {target.shape}, but {type(self).__name__} "
                             f"needs the shape of the model's output, {output_shape}{hint}")
        if target.dtype != dtype:
            raise TypeError(f"{name} has dtype {target.dtype}, but {type(self).__name__} "
                            f"needs the model's dtype, {dtype}: convert it with "
                            f"{name}.astype(np.{dtype.name})")
    def value(self, input: Array, target: Array) -> Any:
        """The loss alone, without a gradient or buffers: also of Dask arrays (lazy)."""
        return type(self)._loss(input, target, weight=self.weight, reduction=self.reduction,
                                **self._extra())

    def fresh(self) -> _Loss:
        """A loss module of the same kind and settings, with buffers of its own."""
        return type(self)(weight=self.weight, reduction=self.reduction, **self._extra())

    def forward(self, input: Array, target: Array) -> Any:
        """The loss of ``input`` against ``target`` (a NumPy scalar, 0-d CuPy array, or an
        array for reduction='none'); the gradient, from the same pass, is ``backward()``'s."""
        out = _reusable_buffer(self._grad_buffers, "grad", input.shape, input)
        loss, self._grad = type(self)._and_grad(input, target, weight=self.weight,
                                                reduction=self.reduction, out=out,
                                                **self._extra())
        return loss

    __call__ = forward

    def backward(self) -> Array:
        """d loss / d input of the last ``forward`` (for reduction='none': of the summed loss)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class MSELoss(_Loss):
    """Mean squared error (``torch.nn.MSELoss``; ``weight`` is an extra, per element)."""
    _and_grad = staticmethod(F.mse_loss_and_grad)
    _loss = staticmethod(F.mse_loss)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (``torch.nn.BCELoss``)."""
    _and_grad = staticmethod(F.binary_cross_entropy_and_grad)
    _loss = staticmethod(F.binary_cross_entropy)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (``torch.nn.BCEWithLogitsLoss``)."""
    _and_grad = staticmethod(F.binary_cross_entropy_with_logits_and_grad)
    _loss = staticmethod(F.binary_cross_entropy_with_logits)

    def __init__(self, *, weight: Array | float | None = None, reduction: str = "mean",
                 pos_weight: Array | float | None = None) -> None:
        super().__init__(weight=weight, reduction=reduction)
        self.pos_weight = pos_weight

    def _extra(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight}


class CrossEntropyLoss(_Loss):
    """Cross-entropy of logits (``torch.nn.CrossEntropyLoss``): targets are class indices
    (int64 or int32, shape (batch,)) or class probabilities (the input's shape); ``weight``
    per class, ``ignore_index``, ``label_smoothing``. After a final ``Softmax`` in a
    ``Sequential``, training applies it to the Softmax's input (see ``fit``)."""
    _and_grad = staticmethod(F.cross_entropy_and_grad)
    _loss = staticmethod(F.cross_entropy)

    def __init__(self, *, weight: Array | None = None, reduction: str = "mean",
                 ignore_index: int = -100, label_smoothing: float = 0.0) -> None:
        super().__init__(weight=weight, reduction=reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def _extra(self) -> dict[str, Any]:
        return {"ignore_index": self.ignore_index, "label_smoothing": self.label_smoothing}

    def check_target(self, target: Array, output_shape: tuple[int, ...] | None, dtype: Any,
                     name: str = "target") -> None:
        """Class indices: int64 or int32 of shape (samples,); otherwise probabilities, checked
        as every loss checks its target (the output's shape and dtype)."""
        if target.dtype.kind not in "iu":
            super().check_target(target, output_shape, dtype, name)
            return
        if target.dtype not in (np.int64, np.int32):
            raise TypeError(f"{name} has dtype {target.dtype}, but CrossEntropyLoss needs class "
                            f"indices as int64 or int32: convert it with {name}.astype(np.int64)")
        if output_shape is not None and tuple(target.shape) != tuple(output_shape[:1]):
            raise ValueError(f"{name} has shape {target.shape}, but CrossEntropyLoss needs one "
                             f"class index per sample, shape {tuple(output_shape[:1])}, or "
                             f"probabilities of the model's output shape {output_shape}")
