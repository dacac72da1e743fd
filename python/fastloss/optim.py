"""Stochastic gradient descent, updating parameters in place: ``SGD``."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _cpu
from ._arrays import Array, array_module as _array_module

__all__ = ["SGD"]


class SGD:
    """SGD with momentum, weight decay and Nesterov momentum, as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        buffer = g                                   (first step)
        buffer = momentum * buffer + (1 - dampening) * g   (later steps)
        g = g + momentum * buffer if nesterov else buffer  (when momentum != 0)
        p = p - lr * g

    Args:
        params: ``fastloss.nn.Parameter`` objects (``model.parameters()``).
        lr, momentum, dampening, weight_decay: non-negative numbers.
        nesterov: needs momentum > 0 and dampening == 0 (as in PyTorch).

    NumPy parameters are updated by one C++ call for all of them; CuPy ones with CuPy
    expressions. ``lr`` may be changed between steps (``optimizer.lr = ...``).
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("dampening", dampening),
                            ("weight_decay", weight_decay)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) \
                    or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening == 0")
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        for parameter in self.params:
            if not (hasattr(parameter, "data") and hasattr(parameter, "grad")):
                raise TypeError(f"SGD takes fastloss.nn.Parameter objects, got {parameter!r}")
        self.lr, self.momentum, self.dampening = float(lr), float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self._momentum_buffers: list[Array] | None = None

    def zero_grad(self) -> None:
        """Sets every gradient to zero (not needed: ``backward`` overwrites gradients)."""
        for parameter in self.params:
            parameter.grad[...] = 0

    def step(self) -> None:
        """One update of every parameter from its ``.grad``."""
        params = self.params
        first_step = False
        if self.momentum != 0 and self._momentum_buffers is None:
            self._momentum_buffers = [_array_module(p.data).empty_like(p.data) for p in params]
            first_step = True
        buffers = self._momentum_buffers
        if type(params[0].data) is np.ndarray:
            # One C++ call for all parameters; it rejects any that is not a NumPy array.
            _cpu.sgd_step(params, buffers, self.lr, self.momentum, self.dampening,
                          self.weight_decay, self.nesterov, first_step)
            return
        for index, parameter in enumerate(params):
            _sgd_update(parameter.data, parameter.grad,
                       None if buffers is None else buffers[index], self.lr, self.momentum,
                       self.dampening, self.weight_decay, self.nesterov, first_step)


def _sgd_update(param: Array, grad: Array, momentum_buffer: Array | None, lr: float,
               momentum: float, dampening: float, weight_decay: float, nesterov: bool,
               first_step: bool) -> None:
    """One parameter's SGD update with array expressions (any array library); the same
    arithmetic as the C++ kernel, in the parameter's dtype."""
    xp = _array_module(param)
    if weight_decay != 0:
        grad = grad + param.dtype.type(weight_decay) * param
    if momentum != 0:
        assert momentum_buffer is not None, "momentum needs a buffer"
        if first_step:
            momentum_buffer[...] = grad
        else:
            momentum_buffer *= param.dtype.type(momentum)
            momentum_buffer += param.dtype.type(1 - dampening) * grad
        grad = (grad + param.dtype.type(momentum) * momentum_buffer if nesterov
                else momentum_buffer)
    xp.subtract(param, param.dtype.type(lr) * grad, out=param)
