"""fastloss inside PyTorch training code: autograd functions and ``nn.Module`` losses with
``torch.nn.functional``'s signatures.

    from fastloss.torch import mse_loss, binary_cross_entropy_with_logits, BCEWithLogitsLoss

The forward computes the loss and its gradient in one pass (the ``*_and_grad`` kernels) and
saves the gradient, so ``backward`` only scales it by ``grad_output`` (not even that when the
upstream gradient is the usual 1). CPU tensors reach the C++ kernels without a copy
(``Tensor.numpy()`` on contiguous tensors; others are made contiguous once); CUDA tensors reach
the CUDA kernels through DLPack (``cupy.from_dlpack``), on the tensor's current stream.

Gradients flow to ``input`` only: a ``target``, ``weight`` or ``pos_weight`` that requires grad
is a ValueError (detach it). Double backward is not supported. This module imports torch;
``import fastloss`` never imports it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import functional as F

__all__ = ["mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid",
           "cross_entropy", "softmax", "log_softmax",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"]


# ---- tensors <-> arrays without copies ------------------------------------------------------------
def _as_array(tensor, name):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__qualname__}")
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.contiguous().numpy()
    if tensor.device.type == "cuda":
        import cupy
        return cupy.from_dlpack(tensor.contiguous())
    raise ValueError(f"{name} is on device {tensor.device}; fastloss runs on CPU and CUDA tensors")


def _as_tensor(array, device):
    if isinstance(array, np.generic):  # a reduced loss: NumPy scalar
        return torch.from_numpy(np.asarray(array))
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array)
    return torch.from_dlpack(array).to(device)


def _optional_array(tensor, name, like):
    if tensor is None:
        return None
    if isinstance(tensor, torch.Tensor):
        if tensor.requires_grad:
            raise ValueError(f"fastloss.torch does not differentiate {name}; pass "
                             f"{name}.detach()")
        if tensor.device != like.device:
            raise ValueError(f"{name} is on {tensor.device} but input is on {like.device}")
        return _as_array(tensor, name)
    return tensor  # a Python number: the kernels take it as a scalar weight


def _check_deprecated(size_average, reduce):
    if size_average is not None or reduce is not None:
        raise ValueError("size_average and reduce are deprecated in PyTorch and not supported "
                         "here; use reduction='mean' | 'sum' | 'none'")


def _stream_of(tensor):
    """A context in which CuPy works on the tensor's device and launches on PyTorch's current
    stream of that device (a no-op for CPU tensors)."""
    if tensor.device.type != "cuda":
        return contextlib.nullcontext()
    return _cuda_device_and_stream(tensor.device)


@contextlib.contextmanager
def _cuda_device_and_stream(device):
    import cupy
    index = device.index if device.index is not None else torch.cuda.current_device()
    # The device first: CuPy gives a stream it wraps the current device, and refuses to make
    # current a stream of another device.
    with cupy.cuda.Device(index):
        with _cupy_stream(cupy, torch.cuda.current_stream(index), index):
            yield


def _cupy_stream(cupy, torch_stream, index):
    """PyTorch's stream as a CuPy stream of device ``index`` (call under that device)."""
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(torch_stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(torch_stream)  # CuPy >= 14 deprecates the other
    return cupy.cuda.ExternalStream(torch_stream.cuda_stream, device_id=index)


class _FusedLoss(torch.autograd.Function):
    """loss, grad = and_grad(input, target, ...) in forward; backward = grad * grad_output."""

    @staticmethod
    def forward(ctx, input, target, and_grad, reduction, weight, pos_weight):
        if target.requires_grad:
            raise ValueError("fastloss.torch does not differentiate target; pass "
                             "target.detach()")
        if target.device != input.device:
            raise ValueError(f"target is on {target.device} but input is on {input.device}")
        extra = {} if pos_weight is None else {"pos_weight": pos_weight}
        # the results become tensors there too: CuPy's stream is then PyTorch's, and DLPack
        # needs no event between the two
        with _stream_of(input):
            loss, grad = and_grad(_as_array(input, "input"), _as_array(target, "target"),
                                  weight=weight, reduction=reduction, **extra)
            loss, grad = _as_tensor(loss, input.device), _as_tensor(grad, input.device)
        ctx.reduction = reduction
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.reduction != "none" and grad_output.device.type == "cpu" \
                and grad_output.item() == 1.0:
            return grad, None, None, None, None, None
        return grad * grad_output, None, None, None, None, None


def _fused(and_grad, input, target, reduction, weight=None, pos_weight=None):
    for name, tensor in (("input", input), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__qualname__}")
    return _FusedLoss.apply(input, target, and_grad, reduction,
                            _optional_array(weight, "weight", input),
                            _optional_array(pos_weight, "pos_weight", input))


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """``torch.nn.functional.mse_loss`` on fastloss's fused kernel (loss and gradient in one
    pass; the sum is exact to about one ulp and deterministic)."""
    _check_deprecated(size_average, reduce)
    return _fused(F.mse_loss_and_grad, input, target, reduction, weight)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """``torch.nn.functional.binary_cross_entropy`` (probabilities; logs clamped at -100)."""
    _check_deprecated(size_average, reduce)
    return _fused(F.binary_cross_entropy_and_grad, input, target, reduction, weight)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """``torch.nn.functional.binary_cross_entropy_with_logits`` (stable for every logit)."""
    _check_deprecated(size_average, reduce)
    return _fused(F.binary_cross_entropy_with_logits_and_grad, input, target, reduction,
                  weight, pos_weight)


class _Sigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        with _stream_of(input):
            output = _as_tensor(F.sigmoid(_as_array(input, "input")), input.device)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        with _stream_of(output):
            grad = F.sigmoid_backward(_as_array(grad_output, "grad_output"),
                                      _as_array(output, "output"))
            return _as_tensor(grad, output.device)


def sigmoid(input):
    """``torch.sigmoid`` through fastloss (within 1 ulp, exactly 0/1 at saturation)."""
    return _Sigmoid.apply(input)


class MSELoss(torch.nn.Module):
    """``torch.nn.MSELoss`` on fastloss's fused kernel."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return mse_loss(input, target, reduction=self.reduction)


class BCELoss(torch.nn.Module):
    """``torch.nn.BCELoss`` on fastloss's fused kernel."""

    def __init__(self, weight=None, reduction="mean"):
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` on fastloss's fused kernel."""

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                reduction=self.reduction,
                                                pos_weight=self.pos_weight)


# ---- multi-class ---------------------------------------------------------------------------------
class _CrossEntropy(torch.autograd.Function):
    """loss, grad = cross_entropy_and_grad(...) in forward; backward scales the saved gradient
    by the upstream one (per row for reduction='none')."""

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing):
        if target.requires_grad:
            raise ValueError("fastloss.torch does not differentiate target; pass "
                             "target.detach()")
        if target.device != input.device:
            raise ValueError(f"target is on {target.device} but input is on {input.device}")
        with _stream_of(input):
            loss, grad = F.cross_entropy_and_grad(
                _as_array(input, "input"), _as_array(target, "target"), weight=weight,
                ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
            loss, grad = _as_tensor(loss, input.device), _as_tensor(grad, input.device)
        ctx.reduction = reduction
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.reduction != "none":
            if grad_output.device.type == "cpu" and grad_output.item() == 1.0:
                return grad, None, None, None, None, None
            return grad_output * grad, None, None, None, None, None
        # one upstream gradient per row: broadcast along the class dimension (1; 0 for (C,))
        per_row = grad_output.unsqueeze(1) if grad.dim() >= 2 else grad_output
        return grad * per_row, None, None, None, None, None


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` on fastloss's fused kernel: class indices (int64
    or int32) or probabilities as target, class weights, ignore_index, label_smoothing; loss
    and gradient in one pass over the logits, the sum exact to about one ulp."""
    _check_deprecated(size_average, reduce)
    for name, tensor in (("input", input), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__qualname__}")
    return _CrossEntropy.apply(input, target, _optional_array(weight, "weight", input),
                               ignore_index, reduction, label_smoothing)


class _SoftmaxFamily(torch.autograd.Function):
    """softmax or log_softmax along dim; backward from the saved output."""

    @staticmethod
    def forward(ctx, input, dim, log):
        forward = F.log_softmax if log else F.softmax
        with _stream_of(input):
            output = _as_tensor(forward(_as_array(input, "input"), dim), input.device)
        ctx.dim, ctx.log = dim, log
        ctx.save_for_backward(output)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        backward = F.log_softmax_backward if ctx.log else F.softmax_backward
        with _stream_of(output):
            grad = backward(_as_array(grad_output, "grad_output"), _as_array(output, "output"),
                            ctx.dim)
            return _as_tensor(grad, output.device), None, None


def _softmax_dim(input, dim):
    """torch.nn.functional's implicit dim when none is given (deprecated there too)."""
    if dim is not None:
        return dim
    import warnings
    warnings.warn("Implicit dimension choice for softmax has been deprecated. Change the call "
                  "to include dim=X as an argument.", stacklevel=3)
    return 0 if input.dim() in (0, 1, 3) else 1


def _softmax_family(input, dim, dtype, log):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__qualname__}")
    dim = _softmax_dim(input, dim)
    if dtype is not None:
        input = input.to(dtype)
    return _SoftmaxFamily.apply(input, dim, log)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """``torch.nn.functional.softmax`` through fastloss (one read of each row, in double)."""
    return _softmax_family(input, dim, dtype, False)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """``torch.nn.functional.log_softmax`` through fastloss (float32 within 1 ulp)."""
    return _softmax_family(input, dim, dtype, True)


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` on fastloss's fused kernel."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__()
        _check_deprecated(size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)
