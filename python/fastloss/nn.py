"""Dense networks on the fastloss kernels: each layer is a class with ``forward`` and
``backward``; there is no autograd engine.

Arrays are ``(batch, features)``, float32 or float64, NumPy or CuPy: a layer works in the
array library of its parameters (``Module.to('cuda')`` moves them) and its input must live
there too. Names, shapes and initialisers follow ``torch.nn``: ``Dense`` holds ``weight`` of
shape ``(out_features, in_features)`` and ``bias`` of shape ``(out_features,)``.

Buffers: a layer writes its output and its input gradient into buffers it owns, one per batch
shape, and reuses them on the next call, so a training step allocates nothing. An array a
layer returns is therefore overwritten by that layer's next call with the same batch shape:
copy it to keep it. ``predict`` returns fresh arrays. ``backward`` overwrites each
parameter's ``.grad`` (it does not accumulate), so no ``zero_grad`` is needed.
"""

from __future__ import annotations

import math
from os import PathLike
from typing import Any, ClassVar

import numpy as np

from . import _cpu
from . import functional as F
from ._arrays import Array, array_module, as_module_array, module_for_device

__all__ = ["Parameter", "Module", "Dense", "Sigmoid", "Tanh", "ReLU", "Sequential",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "fit", "predict"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Layers this narrow run their products as C++ loops: BLAS call overhead dominates there.
_NARROW_MAX_OUTPUTS = _cpu.dense_narrow_max_outputs


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
        raise NotImplementedError

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        """Writes parameter gradients; returns d loss / d input (None if not needed)."""
        raise NotImplementedError

    def __call__(self, input: Array) -> Array:
        return self.forward(input)

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return []

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

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


def _check_input(input, like, layer, expected_features):
    if type(input) is not type(like):
        raise TypeError(f"{layer}: input is a {type(input).__module__}."
                        f"{type(input).__qualname__} but the parameters are "
                        f"{type(like).__module__}.{type(like).__qualname__} arrays "
                        "(move the model with .to('cpu') or .to('cuda'))")
    if input.ndim != 2 or input.shape[1] != expected_features:
        raise ValueError(f"{layer}: input has shape {input.shape}, expected "
                         f"(batch, {expected_features})")
    if input.dtype != like.dtype:
        raise TypeError(f"{layer}: input has dtype {input.dtype} but the parameters are "
                        f"{like.dtype}; convert one explicitly")


def _initial_weight(init, rng, out_features, in_features):
    fan_in, fan_out = in_features, out_features
    if init == "uniform":  # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-bound, bound, (out_features, in_features))
    if init == "xavier_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, (out_features, in_features))
    if init == "xavier_normal":
        return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), (out_features, in_features))
    if init == "he_uniform":
        bound = math.sqrt(6.0 / fan_in)
        return rng.uniform(-bound, bound, (out_features, in_features))
    if init == "he_normal":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), (out_features, in_features))
    raise ValueError(f"init must be one of 'uniform', 'xavier_uniform', 'xavier_normal', "
                     f"'he_uniform', 'he_normal', got {init!r}")


class Dense(Module):
    """Fully connected layer: ``output = input @ weight.T + bias``.

    Args:
        in_features, out_features: sizes; ``weight`` is ``(out_features, in_features)``.
        bias: whether to learn a bias (``(out_features,)``).
        init: 'uniform' (PyTorch's default: weight and bias ~ U(+-1/sqrt(in_features))),
            'xavier_uniform', 'xavier_normal', 'he_uniform' or 'he_normal' (bias zero).
        dtype: float32 (default) or float64.
        rng: a seed or ``numpy.random.Generator``; weights are drawn on the host in float64,
            then cast, so a seed gives the same weights on the CPU and the GPU.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: str = "uniform", dtype: Any = np.float32,
                 rng: int | np.random.Generator | None = None) -> None:
        super().__init__()
        dtype = np.dtype(dtype)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        rng = np.random.default_rng(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(
            _initial_weight(init, rng, self.out_features, self.in_features).astype(dtype))
        self.bias: Parameter | None = None
        if bias:
            bound = 1.0 / math.sqrt(self.in_features)
            initial = (rng.uniform(-bound, bound, self.out_features) if init == "uniform"
                       else np.zeros(self.out_features))
            self.bias = Parameter(initial.astype(dtype))
        self._input: Array | None = None
        self._output: Array | None = None

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        named = [("weight", self.weight)]
        return named + [("bias", self.bias)] if self.bias is not None else named

    def forward(self, input: Array) -> Array:
        return self._forward(input, False)

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        return self._backward(grad_output, False, need_input_grad)

    # relu=True: this layer followed by ReLU, as Sequential runs the pair. On NumPy the bias
    # and the ReLU (and backward, the ReLU derivative and the bias gradient) are one C++ call
    # beside the matrix products: a step at batch 32 is mostly per-call overhead.
    def _forward(self, input: Array, relu: bool) -> Array:
        weight, bias = self.weight.data, self.bias
        _check_input(input, weight, "Dense", self.in_features)
        output = self._buffer("output", (input.shape[0], self.out_features), weight)
        if type(weight) is np.ndarray:
            bias_data = None if bias is None else bias.data
            if self.out_features <= _NARROW_MAX_OUTPUTS:
                _cpu.dense_narrow_forward(input, weight, bias_data, output, relu)
            else:
                np.matmul(input, weight.T, out=output)
                _cpu.dense_bias_relu(output, bias_data, relu)
        else:
            xp = array_module(weight)
            xp.matmul(input, weight.T, out=output)
            if bias is not None:
                xp.add(output, bias.data, out=output)
            if relu:
                xp.maximum(output, 0, out=output)
        self._input, self._output = input, output
        return output

    def _backward(self, grad_output: Array, relu: bool, need_input_grad: bool) -> Array | None:
        input, weight, bias = self._input, self.weight.data, self.bias
        if input is None:
            raise RuntimeError("Dense.backward called before forward")
        xp: Any = np
        if type(weight) is np.ndarray:
            grad_output = _cpu.dense_bias_relu_backward(
                grad_output, self._output if relu else None,
                self._buffer("grad_pre_activation", grad_output.shape, weight) if relu else None,
                None if bias is None else bias.grad)
            if self.out_features <= _NARROW_MAX_OUTPUTS:
                grad_input = (self._buffer("grad_input", input.shape, weight) if need_input_grad
                              else None)
                _cpu.dense_narrow_backward(grad_output, input, weight, self.weight.grad,
                                           grad_input)
                return grad_input
        else:
            xp = array_module(weight)
            if relu:
                grad_output = xp.multiply(grad_output, xp.sign(self._output),
                                          out=self._buffer("grad_pre_activation",
                                                           grad_output.shape, weight))
            if bias is not None:
                xp.sum(grad_output, axis=0, out=bias.grad)
        xp.matmul(grad_output.T, input, out=self.weight.grad)
        if not need_input_grad:
            return None
        grad_input = self._buffer("grad_input", input.shape, weight)
        return xp.matmul(grad_output, weight, out=grad_input)

    def __repr__(self):
        return (f"Dense({self.in_features}, {self.out_features}, "
                f"bias={self.bias is not None}, dtype={self.weight.data.dtype})")


class _Activation(Module):
    """Elementwise activation: keeps its output for the backward pass."""

    def __init__(self) -> None:
        super().__init__()
        self._output: Array | None = None

    def _apply(self, input: Array, output: Array) -> Array:
        raise NotImplementedError

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        raise NotImplementedError

    def forward(self, input: Array) -> Array:
        output = self._buffer("output", input.shape, input)
        self._output = self._apply(input, output)
        return self._output

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        if self._output is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        grad_input = self._buffer("grad_input", grad_output.shape, grad_output)
        return self._derivative(grad_output, self._output, grad_input)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Sigmoid(_Activation):
    """Logistic sigmoid through the fastloss kernels. Before ``BCELoss`` in a ``Sequential``,
    training skips it and uses ``BCEWithLogitsLoss`` on its input (see ``fit``)."""

    def _apply(self, input: Array, output: Array) -> Array:
        return F.sigmoid(input, out=output)

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        return F.sigmoid_backward(grad_output, output, out=grad_input)


class Tanh(_Activation):
    def _apply(self, input: Array, output: Array) -> Array:
        return array_module(input).tanh(input, out=output)

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        xp = array_module(output)
        xp.multiply(output, output, out=grad_input)
        xp.subtract(1, grad_input, out=grad_input)
        return xp.multiply(grad_output, grad_input, out=grad_input)


class ReLU(_Activation):
    def _apply(self, input: Array, output: Array) -> Array:
        return array_module(input).maximum(input, 0, out=output)

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        # Zero where the output is zero (input <= 0), as torch.nn.ReLU: 0 at the kink.
        xp = array_module(output)
        xp.sign(output, out=grad_input)
        return xp.multiply(grad_output, grad_input, out=grad_input)


def fused_stages(layers: list[Module]) -> list[tuple[Any, bool]]:
    """(layer, fused_relu) pairs: a Dense followed by a ReLU runs as one fused stage (the
    ReLU instance is then not called; the results are the same). Training computes them once
    per TrainStep; Sequential, whose layer list may change, on every call."""
    stages, index = [], 0
    while index < len(layers):
        fused = (type(layers[index]) is Dense and index + 1 < len(layers)
                 and type(layers[index + 1]) is ReLU)
        stages.append((layers[index], fused))
        index += 2 if fused else 1
    return stages


def run_forward(stages: list[tuple[Any, bool]], input: Array) -> Array:
    """The stages of ``fused_stages`` applied in order."""
    for layer, fused in stages:
        input = layer._forward(input, True) if fused else layer.forward(input)
    return input


def run_backward(stages: list[tuple[Any, bool]], grad_output: Array, *,
                 need_input_grad: bool = True) -> Array | None:
    """Backward through the stages after ``run_forward``; the first one's input gradient
    only if need_input_grad."""
    for index in range(len(stages) - 1, -1, -1):
        layer, fused = stages[index]
        wanted = need_input_grad or index > 0
        grad_output = (layer._backward(grad_output, True, wanted) if fused
                       else layer.backward(grad_output, need_input_grad=wanted))
    return grad_output


class Sequential(Module):
    """Layers applied in order; ``layers[i]`` parameters are named ``'{i}.weight'`` etc."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for layer in layers:
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes fastloss.nn modules, got {layer!r}")
        self.layers = list(layers)

    def forward(self, input: Array) -> Array:
        return run_forward(fused_stages(self.layers), input)

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        return run_backward(fused_stages(self.layers), grad_output,
                            need_input_grad=need_input_grad)

    def named_parameters(self):
        return [(f"{index}.{name}", parameter)
                for index, layer in enumerate(self.layers)
                for name, parameter in layer.named_parameters()]

    def _modules(self) -> list[Module]:
        return [self] + [module for layer in self.layers for module in layer._modules()]

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({index}): {layer!r}" for index, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


class _Loss:
    """A loss module: ``forward(input, target)`` returns the loss and computes d loss / d input
    in the same pass (the fused ``*_and_grad`` kernel); ``backward()`` returns it."""

    _and_grad: ClassVar[Any]  # the fused *_and_grad function of fastloss.functional

    def __init__(self, *, weight: Array | float | None = None, reduction: str = "mean") -> None:
        self.weight = weight
        self.reduction = reduction
        self._grad: Array | None = None
        self._grad_buffers: dict[tuple[str, tuple[int, ...]], Array] = {}

    def _extra(self) -> dict[str, Any]:
        return {}

    def forward(self, input: Array, target: Array) -> Any:
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


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (``torch.nn.BCELoss``)."""
    _and_grad = staticmethod(F.binary_cross_entropy_and_grad)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (``torch.nn.BCEWithLogitsLoss``)."""
    _and_grad = staticmethod(F.binary_cross_entropy_with_logits_and_grad)

    def __init__(self, *, weight: Array | float | None = None, reduction: str = "mean",
                 pos_weight: Array | float | None = None) -> None:
        super().__init__(weight=weight, reduction=reduction)
        self.pos_weight = pos_weight

    def _extra(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight}


# The training loop lives in fastloss.training; imported last because it uses the classes above.
from .training import fit, predict  # noqa: E402
