"""``Parameter`` and ``Module``: the parameter and buffer bookkeeping every layer shares."""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from .._arrays import Array, array_module, as_module_array, module_for_device

__all__ = ["Parameter", "Module"]


class Parameter:
    """A trainable array ``data`` and the gradient ``grad`` that ``backward`` writes."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Array) -> None:
        self.data = data
        self.grad = array_module(data).zeros_like(data)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _reusable_buffer(buffers: dict, slot: str, shape: tuple[int, ...], like: Array) -> Array:
    """``buffers[(slot, shape)]``, made anew when missing or of another dtype or library.

    Keyed by shape too, so a ragged last batch does not evict the full-batch buffers."""
    key = (slot, shape)
    buffer = buffers.get(key)
    if buffer is None or buffer.dtype != like.dtype or type(buffer) is not type(like):
        buffer = buffers[key] = array_module(like).empty(shape, like.dtype)
    return buffer


class Module:
    """Base class: ``forward(x)``, ``backward(grad_output)`` and the parameter bookkeeping."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...]], Array] = {}

    def forward(self, input: Array) -> Array:
        """The module's output for ``input``; a buffer of the module's, overwritten by its next
        call with the same batch shape (copy it to keep it)."""
        raise NotImplementedError

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        """Writes parameter gradients; returns d loss / d input (None if not needed)."""
        raise NotImplementedError

    def __call__(self, input: Array) -> Array:
        return self.forward(input)

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """(name, Parameter) pairs, named as ``torch.nn`` does ('weight', '0.bias', ...)."""
        return []

    def parameters(self) -> list[Parameter]:
        """The Parameters, in the order of ``named_parameters`` (what SGD takes)."""
        return [parameter for _, parameter in self.named_parameters()]

    def zero_grad(self) -> None:
        """Sets every parameter's ``.grad`` to zero. Training needs no call of it (``backward``
        overwrites the gradients); it is there for loops written the PyTorch way, or to clear
        gradients that were read and changed."""
        for parameter in self.parameters():
            parameter.grad[...] = 0

    def _buffer(self, slot: str, shape: tuple[int, ...], like: Array) -> Array:
        return _reusable_buffer(self._buffers, slot, shape, like)

    def to(self, device: str) -> Module:
        """Moves the parameters to 'cpu' (NumPy) or 'cuda' (CuPy); returns self."""
        xp = module_for_device(device)
        for parameter in self.parameters():
            parameter.data = as_module_array(parameter.data, xp)
            parameter.grad = as_module_array(parameter.grad, xp)
        for module in self._modules():
            module._buffers = {}
        return self

    def _modules(self) -> list[Module]:
        return [self]

    def state_dict(self) -> dict[str, Array]:
        """Parameter arrays by name ('weight', '0.bias', ...), as in ``torch.nn``."""
        return {name: parameter.data for name, parameter in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copies arrays into the parameters; names, shapes and dtypes must match."""
        own = dict(self.named_parameters())
        if set(state) != set(own):
            raise ValueError(f"state has parameters {sorted(state)}, the model has "
                             f"{sorted(own)}")
        for name, parameter in own.items():
            value = np.asarray(state[name]) if isinstance(state[name], (list, tuple)) \
                else state[name]
            if value.shape != parameter.data.shape or value.dtype != parameter.data.dtype:
                raise ValueError(f"{name} has shape {value.shape} and dtype {value.dtype}, "
                                 f"expected {parameter.data.shape} and "
                                 f"{parameter.data.dtype}")
            parameter.data[...] = as_module_array(value, array_module(parameter.data))

    def save(self, path: str | PathLike[str]) -> None:
        """Writes the parameters to ``path`` with ``numpy.savez`` (host copies)."""
        np.savez(path, **{name: as_module_array(value, np)
                          for name, value in self.state_dict().items()})

    def load(self, path: str | PathLike[str]) -> Module:
        """Reads parameters written by ``save``; returns self."""
        with np.load(path) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files})
        return self
