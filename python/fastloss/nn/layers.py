"""The layers: ``Dense``, the activations ``Sigmoid``, ``Tanh``, ``ReLU``, ``Softmax`` (each on
the fastloss kernels), and ``Sequential`` (which runs a Dense followed by a ReLU as one fused
stage)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from .._arrays import Array
from . import _fused
from ._module import Module, Parameter

__all__ = ["Dense", "Sigmoid", "Tanh", "ReLU", "Softmax", "Sequential"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


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
        """``input @ weight.T + bias``.

        Args:
            input: ``(batch, in_features)``, the dtype and array library (NumPy, CuPy) of
                the parameters.
        Returns:
            ``(batch, out_features)``: a buffer of the layer's, overwritten by its next
            ``forward`` with the same batch size (copy it to keep it).
        Raises:
            TypeError: input of another array library or dtype than the parameters.
            ValueError: input not of shape ``(batch, in_features)``.
        """
        return self._forward(input, False)

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        """From d loss / d output, writes ``weight.grad`` (``(out_features, in_features)``:
        ``grad_output.T @ input``) and ``bias.grad`` (``(out_features,)``: column sums) over
        their previous values, and returns d loss / d input.

        Args:
            grad_output: ``(batch, out_features)``, for the input of the last ``forward``.
            need_input_grad: False skips the input gradient (the first layer of a network).
        Returns:
            ``(batch, in_features)`` (``grad_output @ weight``), a buffer of the layer's like
            ``forward``'s output; None when ``need_input_grad`` is False.
        Raises:
            RuntimeError: called before ``forward``.
        """
        return self._backward(grad_output, False, need_input_grad)

    # relu=True: this layer followed by ReLU, as Sequential runs the pair (fused, see _fused).
    def _forward(self, input: Array, relu: bool) -> Array:
        weight, bias = self.weight.data, self.bias
        _check_input(input, weight, "Dense", self.in_features)
        output = self._buffer("output", (input.shape[0], self.out_features), weight)
        bias_data = None if bias is None else bias.data
        if not _fused.dense_forward(input, weight, bias_data, output, relu):
            _fused.matmul_module(weight).matmul(input, weight.T, out=output)
            _fused.bias_relu(output, bias_data, relu)
        self._input, self._output = input, output
        return output

    def _backward(self, grad_output: Array, relu: bool, need_input_grad: bool) -> Array | None:
        input, weight, bias = self._input, self.weight.data, self.bias
        if input is None:
            raise RuntimeError("Dense.backward called before forward")
        grad_output = _fused.pre_activation_grad(
            grad_output, self._output if relu else None,
            self._buffer("grad_pre_activation", grad_output.shape, weight) if relu else None,
            None if bias is None else bias.grad)
        grad_input = self._buffer("grad_input", input.shape, weight) if need_input_grad else None
        if not _fused.dense_backward(grad_output, input, weight, self.weight.grad, grad_input):
            xp = _fused.matmul_module(weight)
            xp.matmul(grad_output.T, input, out=self.weight.grad)
            if grad_input is not None:
                xp.matmul(grad_output, weight, out=grad_input)
        return grad_input

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
    """tanh through the fastloss kernels (in double; backward from the output)."""

    def _apply(self, input: Array, output: Array) -> Array:
        return F.tanh(input, out=output)

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        return F.tanh_backward(grad_output, output, out=grad_input)


class ReLU(_Activation):
    """max(input, 0) through the fastloss kernels. After a Dense in a ``Sequential`` the two
    run as one fused stage instead."""

    def _apply(self, input: Array, output: Array) -> Array:
        return F.relu(input, out=output)

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        # Zero where the output is zero (input <= 0), as torch.nn.ReLU: 0 at the kink.
        return F.relu_backward(grad_output, output, out=grad_input)


class Softmax(_Activation):
    """softmax along ``dim`` (default the last: the classes of a (batch, classes) array)
    through the fastloss kernels. Last in a ``Sequential`` trained with ``CrossEntropyLoss``,
    training skips it and applies the loss to its input, the logits (see ``fit``); ``predict``
    still returns probabilities."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def _apply(self, input: Array, output: Array) -> Array:
        return F.softmax(input, self.dim, out=output)

    def _derivative(self, grad_output: Array, output: Array, grad_input: Array) -> Array:
        return F.softmax_backward(grad_output, output, self.dim, out=grad_input)

    def __repr__(self):
        return f"Softmax(dim={self.dim})"


def _fused_stages(layers: list[Module]) -> list[tuple[Any, bool]]:
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


def _run_forward(stages: list[tuple[Any, bool]], input: Array) -> Array:
    """The stages of ``_fused_stages`` applied in order."""
    for layer, fused in stages:
        input = layer._forward(input, True) if fused else layer.forward(input)
    return input


def _run_backward(stages: list[tuple[Any, bool]], grad_output: Array, *,
                 need_input_grad: bool = True) -> Array | None:
    """Backward through the stages after ``_run_forward``; the first one's input gradient
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
        return _run_forward(_fused_stages(self.layers), input)

    def backward(self, grad_output: Array, *, need_input_grad: bool = True) -> Array | None:
        return _run_backward(_fused_stages(self.layers), grad_output,
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
