"""The compared operations: which arrays each reads, whether it writes one, the bytes an ideal
pass moves and the bandwidth ceiling it is held against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastloss import reference


@dataclass(frozen=True)
class Op:
    name: str
    arrays: tuple  # names in Inputs, in argument order
    writes_array: bool  # an array out (out=), besides or instead of a loss
    reference: Callable | None = None  # exact float64 loss, for the ops that reduce

    @property
    def reduces(self) -> bool:
        return self.reference is not None

    def bytes_moved(self, n: int, itemsize: int) -> int:
        """Each input read once and the output array written once: the least any pass moves."""
        return (len(self.arrays) + self.writes_array) * n * itemsize

    @property
    def ceiling(self) -> str:
        """The probe it is held against: a loss only reads; an op writing an array also writes."""
        return "copy_gbs" if self.writes_array else "read_gbs"


_MSE, _BCE, _LOGITS = ("values", "targets"), ("probs", "labels"), ("values", "labels")
OPS = {op.name: op for op in (
    Op("mse_loss", _MSE, False, reference.mse_loss),
    Op("mse_loss_grad", _MSE, True),
    Op("mse_loss_and_grad", _MSE, True, reference.mse_loss),
    Op("binary_cross_entropy", _BCE, False, reference.binary_cross_entropy),
    Op("binary_cross_entropy_grad", _BCE, True),
    Op("binary_cross_entropy_and_grad", _BCE, True, reference.binary_cross_entropy),
    Op("binary_cross_entropy_with_logits", _LOGITS, False,
       reference.binary_cross_entropy_with_logits),
    Op("binary_cross_entropy_with_logits_grad", _LOGITS, True),
    Op("binary_cross_entropy_with_logits_and_grad", _LOGITS, True,
       reference.binary_cross_entropy_with_logits),
    Op("sigmoid", ("values",), True),
    Op("sigmoid_backward", ("values", "probs"), True),  # grad_output, output
)}
# What `python -m fastloss bench` shows: the three losses, two fused loss+grad passes, sigmoid.
CLI_OPS = ("mse_loss", "mse_loss_and_grad", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_and_grad",
           "sigmoid")
