"""fastloss inside PyTorch training code: custom operators, autograd functions and
``nn.Module`` losses with ``torch.nn.functional``'s signatures.

    from fastloss.torch import mse_loss, binary_cross_entropy_with_logits, BCEWithLogitsLoss

Every kernel is a PyTorch custom operator in the ``fastloss`` namespace
(``torch.ops.fastloss.mse_loss``, ...; ``torch.library.custom_op``) with a fake (meta)
implementation, an autograd formula, a vmap rule and, for the losses, an autocast rule, so
``torch.compile(fullgraph=True)`` traces forward and backward through them with no graph
break, and ``torch.func.grad``/``vmap`` and ``torch.autocast`` apply. The public functions call
the operators through ``torch.autograd.Function`` classes with ``setup_context`` and
``generate_vmap_rule`` (the autograd function ``register_autograd`` generates has no
``setup_context``, which torch.func requires: pytorch/pytorch#168393); both paths share one
backward.

The loss operators return ``(loss, gradient)``: the forward computes both in one pass (the
``*_and_grad`` kernels), the gradient marked non-differentiable and saved, so ``backward``
only scales it by ``grad_output`` (not even that in eager mode when the upstream gradient is
the usual 1). Outputs are allocated by torch (``torch.empty``) and written by the kernels
through ``out=``. CPU tensors reach the C++ kernels without a copy (``Tensor.numpy()`` on
contiguous tensors; others are made contiguous once); CUDA tensors reach the CUDA kernels
through DLPack (``cupy.from_dlpack``), on torch's current stream of the tensor's device.

Under ``torch.autocast`` the losses run in float32, as torch's own do (mse_loss,
binary_cross_entropy, binary_cross_entropy_with_logits and cross_entropy on the CPU and on
CUDA, where binary_cross_entropy is refused as torch refuses it; softmax and log_softmax on
CUDA); float64 arguments stay float64. Outside autocast the tensors must be all of one
dtype: float32, float64, or on the CPU float16 or bfloat16 (read and written as 16-bit values
by the kernels, computed in double, results in the input's dtype as torch's own; bfloat16 goes
through ``ml_dtypes.bfloat16``, which must be installed); CUDA tensors may be float16 too
(CuPy float16 arrays, in every op), never bfloat16. Any other dtype (integers, bool, complex,
float8; bfloat16 on CUDA) is a TypeError naming it.

Gradients flow to ``input`` only: a ``target``, ``weight`` or ``pos_weight`` that requires grad
is a ValueError (detach it). Double backward is not supported. This module imports torch;
``import fastloss`` never imports it.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from . import functional as F
from ._checks import check_reduction as _check_reduction

__all__ = ["mse_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid",
           "cross_entropy", "softmax", "log_softmax",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"]

_Tensor = torch.Tensor  # the operators' annotations, from which torch infers their schemas
_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.float16, torch.bfloat16)  # on the CPU; float16 only on CUDA: _check_floats
_CLASS_INDICES = (torch.int64, torch.int32)


# ---- tensors <-> arrays without copies ----------------------------------------------------------
def _as_array(tensor, name):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__qualname__}")
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        if tensor.dtype == torch.bfloat16:  # NumPy knows no bfloat16: its bits, re-viewed
            import ml_dtypes
            return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.contiguous().numpy()
    if tensor.device.type == "cuda":
        import cupy
        return cupy.from_dlpack(tensor.contiguous())
    raise ValueError(f"{name} is on device {tensor.device}; fastloss runs on CPU and CUDA tensors")


def _optional_array(tensor, name):
    return None if tensor is None else _as_array(tensor, name)


def _as_tensor(array, device):
    if isinstance(array, np.generic):  # a reduced loss: NumPy scalar
        array = np.asarray(array)
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":  # ml_dtypes': torch takes its bits
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)
    return torch.from_dlpack(array).to(device)


def _empty_like(tensor):
    """A contiguous tensor of ``tensor``'s shape, dtype and device (fake or real)."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)


def _output_like(tensor):
    """An output the kernels write through ``out=``: from torch's allocator, as torch's own
    ops get theirs."""
    out = _empty_like(tensor)
    if out.device.type == "cpu" and out.nbytes >= _HUGE_PAGE_MIN_BYTES:
        _advise_huge_pages(out)
    return out


# A large output is fresh memory (glibc maps allocations this large anew each time), which the
# kernel's first writes fault in: 4 KiB pages cost more than the pass (bench/NOTES.md, issue 15).
# Advised as huge pages, as NumPy advises its own large arrays, they fault in 2 MiB at a time.
# Advice only: torch still owns and frees the memory, and where the kernel has no transparent
# huge pages (or this is not Linux) nothing changes.
_HUGE_PAGE = 2 << 20
_HUGE_PAGE_MIN_BYTES = 2 * _HUGE_PAGE
_MADV_HUGEPAGE = 14


def _load_madvise():
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def _advise_huge_pages(tensor):
    if _madvise is None:
        return
    start = tensor.data_ptr()
    first = -(-start // _HUGE_PAGE) * _HUGE_PAGE  # the whole huge pages inside the buffer
    last = (start + tensor.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if last > first:
        _madvise(first, last - first, _MADV_HUGEPAGE)  # a failure leaves 4 KiB pages: fine


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _check_floats(input, **others):
    """input float32, float64, float16 or bfloat16, every other tensor (None: absent) of its
    dtype: checked before ``.numpy()``, which knows no bfloat16, and before any kernel converts
    anything. On CUDA the 16-bit tensors are float16 only: the CUDA kernels (cuda/losses.cu,
    cuda/multiclass.cu) read CuPy arrays, and CuPy has no bfloat16 dtype."""
    name = _dtype_name(input.dtype)
    if input.dtype not in _FLOATS and input.dtype not in _HALVES:
        raise TypeError(f"input has dtype {name}; fastloss.torch supports float32, float64, "
                        "float16 and bfloat16 tensors (inside torch.autocast the losses run in "
                        "float32)")
    if input.dtype in _HALVES:
        if input.device.type != "cpu" and input.dtype == torch.bfloat16:
            raise TypeError(f"input has dtype {name} on {input.device}; fastloss's CUDA "
                            "kernels take float16 but no bfloat16 (CuPy has no bfloat16 dtype): "
                            "pass input.float() (or run it on the CPU)")
        if input.dtype == torch.bfloat16:
            try:
                import ml_dtypes  # noqa: F401
            except ImportError:
                raise TypeError("input has dtype bfloat16: fastloss reads bfloat16 tensors as "
                                "ml_dtypes.bfloat16 arrays; pip install ml_dtypes") from None
    for name, tensor in others.items():
        if tensor is not None and tensor.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {_dtype_name(tensor.dtype)} but input has dtype "
                            f"{_dtype_name(input.dtype)}; fastloss.torch converts no argument "
                            f"(pass {name}.to(input.dtype))")


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


# ---- the custom operators -----------------------------------------------------------------------
def _fused_pass(and_grad, input, target, reduction, **weights):
    _check_floats(input, target=target, **weights)
    grad = _output_like(input)
    with _stream_of(input):
        arrays = {name: _optional_array(value, name) for name, value in weights.items()}
        loss, _ = and_grad(_as_array(input, "input"), _as_array(target, "target"),
                           reduction=reduction, out=_as_array(grad, "out"), **arrays)
        # the loss becomes a tensor there too: CuPy's stream is then PyTorch's, and DLPack
        # needs no event between the two
        return _as_tensor(loss, input.device), grad


def _fake_fused(input, target, reduction, **weights):
    _check_floats(input, target=target, **weights)
    return input.new_empty(input.shape if reduction == "none" else ()), _empty_like(input)


@torch.library.custom_op("fastloss::mse_loss", mutates_args=())
def _mse_op(input: _Tensor, target: _Tensor, weight: Optional[_Tensor],
            reduction: str) -> tuple[_Tensor, _Tensor]:
    return _fused_pass(F.mse_loss_and_grad, input, target, reduction, weight=weight)


@torch.library.custom_op("fastloss::binary_cross_entropy", mutates_args=())
def _bce_op(input: _Tensor, target: _Tensor, weight: Optional[_Tensor],
            reduction: str) -> tuple[_Tensor, _Tensor]:
    return _fused_pass(F.binary_cross_entropy_and_grad, input, target, reduction, weight=weight)


@torch.library.custom_op("fastloss::binary_cross_entropy_with_logits", mutates_args=())
def _logits_op(input: _Tensor, target: _Tensor, weight: Optional[_Tensor],
               pos_weight: Optional[_Tensor], reduction: str) -> tuple[_Tensor, _Tensor]:
    return _fused_pass(F.binary_cross_entropy_with_logits_and_grad, input, target, reduction,
                       weight=weight, pos_weight=pos_weight)


@_mse_op.register_fake
def _(input, target, weight, reduction):
    return _fake_fused(input, target, reduction, weight=weight)


@_bce_op.register_fake
def _(input, target, weight, reduction):
    return _fake_fused(input, target, reduction, weight=weight)


@_logits_op.register_fake
def _(input, target, weight, pos_weight, reduction):
    return _fake_fused(input, target, reduction, weight=weight, pos_weight=pos_weight)


def _check_cross_entropy(input, target, weight):
    _check_floats(input, weight=weight)
    if target.is_floating_point():
        _check_floats(input, target=target)
    elif target.dtype not in _CLASS_INDICES:
        raise TypeError(f"target has dtype {_dtype_name(target.dtype)}; cross_entropy takes "
                        f"class indices (int64 or int32) or probabilities of the input's dtype")


@torch.library.custom_op("fastloss::cross_entropy", mutates_args=())
def _cross_entropy_op(input: _Tensor, target: _Tensor, weight: Optional[_Tensor],
                      ignore_index: int, label_smoothing: float,
                      reduction: str) -> tuple[_Tensor, _Tensor]:
    _check_cross_entropy(input, target, weight)
    grad = _output_like(input)
    with _stream_of(input):
        loss, _ = F.cross_entropy_and_grad(
            _as_array(input, "input"), _as_array(target, "target"),
            weight=_optional_array(weight, "weight"), ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, out=_as_array(grad, "out"))
        return _as_tensor(loss, input.device), grad


@_cross_entropy_op.register_fake
def _(input, target, weight, ignore_index, label_smoothing, reduction):
    _check_cross_entropy(input, target, weight)
    if reduction != "none":
        shape = ()
    elif not target.is_floating_point():
        shape = tuple(target.shape)
    else:  # probabilities: one loss per row, the input's shape without the class dimension
        shape = tuple(input.shape[:1]) + tuple(input.shape[2:]) if input.dim() >= 2 else ()
    return input.new_empty(shape), _empty_like(input)


def _elementwise(forward, input):
    _check_floats(input)
    out = _output_like(input)
    with _stream_of(input):
        forward(_as_array(input, "input"), out=_as_array(out, "out"))
    return out


def _elementwise_backward(backward, grad_output, output, *dim):
    _check_floats(output, grad_output=grad_output)
    out = _output_like(output)
    with _stream_of(output):
        backward(_as_array(grad_output, "grad_output"), _as_array(output, "output"), *dim,
                 out=_as_array(out, "out"))
    return out


@torch.library.custom_op("fastloss::sigmoid", mutates_args=())
def _sigmoid_op(input: _Tensor) -> _Tensor:
    return _elementwise(F.sigmoid, input)


@torch.library.custom_op("fastloss::sigmoid_backward", mutates_args=())
def _sigmoid_backward_op(grad_output: _Tensor, output: _Tensor) -> _Tensor:
    return _elementwise_backward(F.sigmoid_backward, grad_output, output)


@torch.library.custom_op("fastloss::softmax", mutates_args=())
def _softmax_op(input: _Tensor, dim: int) -> _Tensor:
    return _elementwise(lambda x, out: F.softmax(x, dim, out=out), input)


@torch.library.custom_op("fastloss::log_softmax", mutates_args=())
def _log_softmax_op(input: _Tensor, dim: int) -> _Tensor:
    return _elementwise(lambda x, out: F.log_softmax(x, dim, out=out), input)


@torch.library.custom_op("fastloss::softmax_backward", mutates_args=())
def _softmax_backward_op(grad_output: _Tensor, output: _Tensor, dim: int) -> _Tensor:
    return _elementwise_backward(F.softmax_backward, grad_output, output, dim)


@torch.library.custom_op("fastloss::log_softmax_backward", mutates_args=())
def _log_softmax_backward_op(grad_output: _Tensor, output: _Tensor, dim: int) -> _Tensor:
    return _elementwise_backward(F.log_softmax_backward, grad_output, output, dim)


def _fake_elementwise(input, *dim):
    _check_floats(input)
    return _empty_like(input)


def _fake_elementwise_backward(grad_output, output, *dim):
    _check_floats(output, grad_output=grad_output)
    return _empty_like(output)


_sigmoid_op.register_fake(_fake_elementwise)
_sigmoid_backward_op.register_fake(_fake_elementwise_backward)
for _op in (_softmax_op, _log_softmax_op):
    _op.register_fake(lambda input, dim: _fake_elementwise(input))
for _op in (_softmax_backward_op, _log_softmax_backward_op):
    _op.register_fake(lambda grad_output, output, dim:
                      _fake_elementwise_backward(grad_output, output))


# ---- backward formulas (shared by the operators' autograd and the autograd functions) -----------
def _is_one(grad_output):
    """Whether the upstream gradient is a concrete CPU tensor holding 1 (the usual
    ``loss.backward()``): then the saved gradient is the answer as it is. Never while torch
    traces (compile, functorch): there ``.item()`` would break the graph or fail."""
    if torch.compiler.is_compiling() or type(grad_output) is not torch.Tensor:
        return False
    if torch._C._functorch.is_functorch_wrapped_tensor(grad_output):
        return False
    return grad_output.device.type == "cpu" and grad_output.item() == 1.0


def _save_fused(ctx, inputs, output):
    _, grad = output
    ctx.mark_non_differentiable(grad)
    # else autograd hands backward a zero tensor of the gradient's size for the gradient output
    # (a fresh full-size allocation per backward, slower than the pass itself)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad)
    ctx.reduction = inputs[-1]  # every loss operator takes reduction last
    ctx.inputs = len(inputs)


def _fused_backward(ctx, grad_loss, _grad_of_grad):
    # the second output, the gradient, is non-differentiable: its upstream gradient is ignored
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        scaled = None
    elif ctx.reduction != "none":
        scaled = grad if _is_one(grad_loss) else grad * grad_loss
    elif 2 <= grad.dim() != grad_loss.dim():
        # cross_entropy: one upstream gradient per row, along the class dimension 1
        scaled = grad * grad_loss.unsqueeze(1)
    else:
        scaled = grad * grad_loss
    return (scaled,) + (None,) * (ctx.inputs - 1)


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim = inputs[1] if len(inputs) > 1 else None


# The backward operators run without grad: they have no backward of their own (no double
# backward), and under torch.func (vmap of grad) the upstream gradient may require grad.
def _sigmoid_backward(ctx, grad_output):
    (output,) = ctx.saved_tensors
    with torch.no_grad():
        return _sigmoid_backward_op(grad_output, output)


def _softmax_backward(ctx, grad_output):
    (output,) = ctx.saved_tensors
    with torch.no_grad():
        return _softmax_backward_op(grad_output, output, ctx.dim), None


def _log_softmax_backward(ctx, grad_output):
    (output,) = ctx.saved_tensors
    with torch.no_grad():
        return _log_softmax_backward_op(grad_output, output, ctx.dim), None


for _op in (_mse_op, _bce_op, _logits_op, _cross_entropy_op):
    _op.register_autograd(_fused_backward, setup_context=_save_fused)
_sigmoid_op.register_autograd(_sigmoid_backward, setup_context=_save_output)
_softmax_op.register_autograd(_softmax_backward, setup_context=_save_output)
_log_softmax_op.register_autograd(_log_softmax_backward, setup_context=_save_output)


# ---- vmap rules ---------------------------------------------------------------------------------
def _batched(args, in_dims, size):
    """Each tensor argument with its batch dimension first (unbatched ones expanded, without a
    copy, to the batch)."""
    return [arg if not isinstance(arg, torch.Tensor) else
            arg.movedim(dim, 0) if dim is not None else arg.expand(size, *arg.shape)
            for arg, dim in zip(args, in_dims)]


def _elementwise_loss_vmap(op):
    """vmap of mse_loss and the binary cross-entropies: one reduction='none' pass over the whole
    batch, then each sample's sum (in double) or mean, and the gradient divided by the sample's
    size for a mean (so within an ulp of the unbatched call's, which scales before rounding)."""
    def rule(info, in_dims, *args):
        *tensors, reduction = args
        size = info.batch_size
        input, target = _batched(tensors[:2], in_dims[:2], size)
        sample = input.shape[1:]
        weights = []
        for weight, dim in zip(tensors[2:], in_dims[2:]):
            if weight is not None and dim is not None:
                # a per-sample weight broadcasts against its own sample: spelled out in full
                weight = weight.movedim(dim, 0)
                weight = weight.reshape(size, *([1] * (len(sample) - weight.dim() + 1)),
                                        *weight.shape[1:]).expand(size, *sample).contiguous()
            weights.append(weight)  # else shared: it broadcasts against each sample as it is
        loss, grad = op(input, target, *weights, "none")
        if reduction == "none":
            return (loss, grad), (0, 0)
        count = sample.numel()
        total = loss.reshape(size, count).sum(1, dtype=torch.float64)
        if reduction == "mean":
            total, grad = total / count, grad / count
        return (total.to(loss.dtype), grad), (0, 0)
    return rule


def _looped_vmap(op):
    """vmap of cross_entropy: the operator per batch element (each its own reduction and its
    own class-weighted mean), stacked."""
    def rule(info, in_dims, *args):
        results = [op(*(arg.select(dim, i) if dim is not None else arg
                        for arg, dim in zip(args, in_dims)))
                   for i in range(info.batch_size)]
        return tuple(torch.stack(part) for part in zip(*results)), (0, 0)
    return rule


def _elementwise_vmap(op):
    def rule(info, in_dims, *args):
        return op(*_batched(args, in_dims, info.batch_size)), 0
    return rule


def _rows_vmap(op):
    """softmax-like operators along ``dim``, the last argument: the batch dimension first, the
    dimension one further along."""
    def rule(info, in_dims, *args):
        *tensors, dim = _batched(args, in_dims, info.batch_size)
        sample_dims = max(tensors[0].dim() - 1, 1)
        return op(*tensors, dim % sample_dims + 1), 0
    return rule


for _op in (_mse_op, _bce_op, _logits_op):
    _op.register_vmap(_elementwise_loss_vmap(_op))
_cross_entropy_op.register_vmap(_looped_vmap(_cross_entropy_op))
for _op in (_sigmoid_op, _sigmoid_backward_op):
    _op.register_vmap(_elementwise_vmap(_op))
for _op in (_softmax_op, _log_softmax_op, _softmax_backward_op, _log_softmax_backward_op):
    _op.register_vmap(_rows_vmap(_op))


# ---- autocast: as torch's own ops ---------------------------------------------------------------
for _op in (_mse_op, _bce_op, _logits_op, _cross_entropy_op):
    _op.register_autocast("cpu", torch.float32)
for _op in (_mse_op, _logits_op, _cross_entropy_op, _softmax_op, _log_softmax_op):
    _op.register_autocast("cuda", torch.float32)
del _op


# ---- autograd functions for torch.func (which needs setup_context) ------------------------------
def _function(op, setup_context, backward):
    class Function(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return op(*args)

    Function.setup_context = staticmethod(setup_context)
    Function.backward = staticmethod(backward)
    Function.__name__ = Function.__qualname__ = op._name.title().replace("_", "")
    return Function


_MSE = _function(_mse_op, _save_fused, _fused_backward)
_BCE = _function(_bce_op, _save_fused, _fused_backward)
_LOGITS = _function(_logits_op, _save_fused, _fused_backward)
_CROSS_ENTROPY = _function(_cross_entropy_op, _save_fused, _fused_backward)
_SIGMOID = _function(_sigmoid_op, _save_output, _sigmoid_backward)
_SOFTMAX = _function(_softmax_op, _save_output, _softmax_backward)
_LOG_SOFTMAX = _function(_log_softmax_op, _save_output, _log_softmax_backward)


def _call(op, function, *args):
    """The operator itself (its registered autograd), or inside a torch.func transform the
    autograd function that wraps it. Not the autograd function everywhere: Dynamo, tracing one,
    warns that it instantiates it (a DeprecationWarning of torch's own making)."""
    if not torch.compiler.is_compiling() and \
            torch._C._functorch.peek_interpreter_stack() is not None:
        return function.apply(*args)
    return op(*args)


# ---- the public functions -----------------------------------------------------------------------
def _check_tensor(tensor, name):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__qualname__}")


def _check_pair(input, target):
    _check_tensor(input, "input")
    _check_tensor(target, "target")
    if target.requires_grad:
        raise ValueError("fastloss.torch does not differentiate target; pass target.detach()")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")




def _weight_tensor(weight, name, input):
    """A weight as the operators take it: None, or a tensor on the input's device (a Python
    number becomes a 0-d tensor of the input's dtype; float32 for a half input under
    autocast, where the loss runs in float32, so that the number is not rounded to half
    precision)."""
    if weight is None:
        return None
    if isinstance(weight, torch.Tensor):
        if weight.requires_grad:
            raise ValueError(f"fastloss.torch does not differentiate {name}; pass "
                             f"{name}.detach()")
        if weight.device != input.device:
            raise ValueError(f"{name} is on {weight.device} but input is on {input.device}")
        return weight
    dtype = input.dtype
    if dtype not in _FLOATS and (dtype not in _HALVES
                                 or torch.is_autocast_enabled(input.device.type)):
        dtype = torch.float32
    return torch.tensor(weight, dtype=dtype, device=input.device)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """``torch.nn.functional.mse_loss`` on fastloss's fused kernel (loss and gradient in one
    pass; the sum is exact to about one ulp and deterministic)."""
    _check_deprecated(size_average, reduce)
    _check_pair(input, target)
    _check_reduction(reduction)
    return _call(_mse_op, _MSE, input, target, _weight_tensor(weight, "weight", input),
                 reduction)[0]


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """``torch.nn.functional.binary_cross_entropy`` (probabilities; logs clamped at -100).
    Refused inside CUDA autocast, as torch refuses it (use the logits form there)."""
    _check_deprecated(size_average, reduce)
    _check_pair(input, target)
    _check_reduction(reduction)
    if input.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        raise RuntimeError("fastloss.torch.binary_cross_entropy is unsafe to autocast, as "
                           "torch's: use binary_cross_entropy_with_logits (or BCEWithLogitsLoss)"
                           ", which combines the sigmoid and the loss safely")
    return _call(_bce_op, _BCE, input, target, _weight_tensor(weight, "weight", input),
                 reduction)[0]


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """``torch.nn.functional.binary_cross_entropy_with_logits`` (stable for every logit)."""
    _check_deprecated(size_average, reduce)
    _check_pair(input, target)
    _check_reduction(reduction)
    return _call(_logits_op, _LOGITS, input, target, _weight_tensor(weight, "weight", input),
                 _weight_tensor(pos_weight, "pos_weight", input), reduction)[0]


def sigmoid(input):
    """``torch.sigmoid`` through fastloss (within 1 ulp, exactly 0/1 at saturation)."""
    _check_tensor(input, "input")
    return _call(_sigmoid_op, _SIGMOID, input)


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

# ---- multi-class --------------------------------------------------------------------------------
def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` on fastloss's fused kernel: class indices (int64
    or int32) or probabilities as target, class weights, ignore_index, label_smoothing; loss
    and gradient in one pass over the logits, the sum exact to about one ulp."""
    _check_deprecated(size_average, reduce)
    _check_pair(input, target)
    _check_reduction(reduction)
    return _call(_cross_entropy_op, _CROSS_ENTROPY, input, target,
                 _weight_tensor(weight, "weight", input), ignore_index,
                 float(label_smoothing), reduction)[0]


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
    if log:
        return _call(_log_softmax_op, _LOG_SOFTMAX, input, dim)
    return _call(_softmax_op, _SOFTMAX, input, dim)


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
