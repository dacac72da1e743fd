"""PyTorch, its own thread count on the CPU or on a CUDA device (bench/gpu.py): tensors share
the arrays' memory. Losses are ``torch.nn.functional``'s; gradients come from aten's own
backward kernels writing into out= where PyTorch has one, and from autograd (forward +
backward, as in training) for the *_and_grad ops. Output buffers are made by the inputs' own
module, as every other implementation's are (a fresh NumPy buffer and a fresh torch one fault
their pages in at different speeds), and wrapped."""

from __future__ import annotations

import functools

import numpy as np

from fastloss.bench.inputs import array_module
from fastloss.bench.peers import Unavailable


def to_tensor(array):
    """A tensor sharing the array's memory: torch.from_numpy for NumPy, DLPack for a device
    array (its __cuda_array_interface__ where DLPack fails)."""
    import torch
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    try:
        return torch.from_dlpack(array)
    except Exception:
        return torch.as_tensor(array, device=f"cuda:{array.device.id}")


def _empty_tensor_like(array):
    return to_tensor(array_module(array).empty_like(array))


def autograd_builder(loss):
    """build(input, target) -> run(), which returns (loss, d loss / d input) by a PyTorch
    forward + backward through autograd, as in training."""
    import torch

    def build(input, target):
        leaf, target = to_tensor(input).detach().requires_grad_(), to_tensor(target)

        def run():
            value = loss(leaf, target)
            (grad,) = torch.autograd.grad(value, leaf)  # returns it, accumulates nothing
            return value.detach(), grad
        return run
    return build


@functools.cache
def _builders():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    mean = 1  # at::Reduction::Mean, the reduction argument of aten's *_backward kernels

    def loss_only(loss):
        def build(input, target):
            input, target = to_tensor(input), to_tensor(target)
            return lambda: loss(input, target)
        return build

    def mse_loss_grad(x, y):
        out, x, y = _empty_tensor_like(x), to_tensor(x), to_tensor(y)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return lambda: torch.ops.aten.mse_loss_backward.grad_input(one, x, y, mean,
                                                                   grad_input=out)

    def bce_grad(p, t):
        out, p, t = _empty_tensor_like(p), to_tensor(p), to_tensor(t)
        one = torch.ones((), dtype=p.dtype, device=p.device)
        return lambda: torch.ops.aten.binary_cross_entropy_backward.grad_input(
            one, p, t, None, mean, grad_input=out)

    def bce_logits_grad(z, t):
        # aten has no backward kernel of its own for the logits form (autograd composes it):
        # the gradient alone as a PyTorch user writes it.
        out, z, t = _empty_tensor_like(z), to_tensor(z), to_tensor(t)
        return lambda: torch.sigmoid(z, out=out).sub_(t).div_(z.numel())

    def sigmoid(z):
        out, z = _empty_tensor_like(z), to_tensor(z)
        return lambda: torch.sigmoid(z, out=out)

    def sigmoid_backward(g, s):
        out, g, s = _empty_tensor_like(g), to_tensor(g), to_tensor(s)
        return lambda: torch.ops.aten.sigmoid_backward.grad_input(g, s, grad_input=out)

    return {
        "mse_loss": loss_only(F.mse_loss),
        "mse_loss_grad": mse_loss_grad,
        "mse_loss_and_grad": autograd_builder(F.mse_loss),
        "binary_cross_entropy": loss_only(F.binary_cross_entropy),
        "binary_cross_entropy_grad": bce_grad,
        "binary_cross_entropy_and_grad": autograd_builder(F.binary_cross_entropy),
        "binary_cross_entropy_with_logits": loss_only(F.binary_cross_entropy_with_logits),
        "binary_cross_entropy_with_logits_grad": bce_logits_grad,
        "binary_cross_entropy_with_logits_and_grad":
            autograd_builder(F.binary_cross_entropy_with_logits),
        "sigmoid": sigmoid,
        "sigmoid_backward": sigmoid_backward,
    }


def builders() -> dict:
    """op name -> build(*arrays) -> run(); Unavailable when PyTorch is not installed."""
    table = _builders()
    if table is None:
        raise Unavailable('PyTorch is not installed (pip install ".[torch]" in the fastloss '
                          'source tree)')
    return table


def multiclass_builders() -> dict:
    """op name -> build(logits, labels) -> run() of the multi-class track (fastloss.bench
    .multiclass): ``F.cross_entropy`` forward, and forward + backward through autograd as in
    training. Unavailable when PyTorch is not installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise Unavailable("PyTorch is not installed (pip install 'fastloss[torch]')") from None

    def loss_only(x, y):
        x, y = to_tensor(x), to_tensor(y)

        def run():
            with torch.no_grad():
                return F.cross_entropy(x, y)
        return run

    return {"cross_entropy": loss_only, "cross_entropy_and_grad": autograd_builder(F.cross_entropy)}
