"""The Dask family: the loss functions over ``dask.array.Array`` inputs, lazily, block by block.

Imported only for a Dask argument (``import fastloss`` never imports dask). Each block runs
through the dispatch like an in-memory call, so it takes the NumPy backend (or CuPy's for
'none' and the gradients: see below), and every check of the in-memory call applies to it.

- ``reduction='none'`` and gradients: Dask arrays with the input's chunks, each block the
  in-memory result of that block, so equal element for element to the in-memory result (the
  kernels are elementwise; a 'mean' gradient is scaled by grad_output / N of the whole array,
  the very double the in-memory call uses).
- 'sum' and 'mean': a 0-d Dask array from ``dask.array.reduction``. Each block yields its sum
  unrounded, as a double-double (``fastloss._cpu.loss_partial``); the partials are added with
  the same double-double arithmetic (``fastloss._dd``) and rounded once. The in-memory sum is
  the same near-exact double-double computation (csrc/kernels.h), so both are the exact sum of
  the same per-element terms, correctly rounded: the same bits for any chunking, any number of
  workers and any order of the combine, unless the exact value lies within about 1e-26
  (relative to the sum of the terms' magnitudes) of a rounding boundary of the dtype.
- ``*_and_grad``: (lazy loss, lazy gradient) from one pass per block; computed together
  (``dask.compute(loss, grad)``) each block's pass runs once.

Weights that broadcast may be NumPy arrays (sent with the graph: keep them small) or real
numbers; a Dask weight is broadcast to the input and rechunked like it. An array grad_output
(reduction='none') follows the same rules. Any other mix of array families is a TypeError.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any

import numpy as np

from . import _checks, _dd
from ._arrays import is_dask

# A block's partial sum: its (hi, lo) double-double, one per block of the partials array.
PARTIAL = np.dtype([("hi", np.float64), ("lo", np.float64)])


def _mixed(name: str, value: Any, like_name: str, like: Any) -> TypeError:
    return TypeError(f"{name} is a {_checks.type_name(value)} but {like_name} is a {_checks.type_name(like)}; "
                     "pass the arrays of one call as Dask arrays (dask.array.from_array(a, "
                     "chunks=...)) or all in memory; only weights that broadcast may be NumPy "
                     "arrays beside Dask inputs")


# ---- the per-block arguments: weights and an array grad_output ----------------------------------
class _Broadcast:
    """A NumPy array that broadcasts to the input, sliced to each block's place."""

    def __init__(self, array: np.ndarray, ndim: int) -> None:
        self.array = array.reshape((1,) * (ndim - array.ndim) + array.shape)

    def block(self, location) -> np.ndarray:
        return self.array[tuple(slice(None) if size == 1 else slice(start, stop)
                                for size, (start, stop) in zip(self.array.shape, location))]


def _compact(block: np.ndarray) -> np.ndarray:
    """A block of a broadcast Dask array without its repeated axes (stride 0), so that a
    ``(C,)`` weight stays a trailing block for the kernels instead of a full copy."""
    strides = getattr(block, "strides", None)
    if strides is None:
        return block
    return block[tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                       for stride, size in zip(strides, block.shape))]


def _argument(value: Any, name: str, input: Any, mapped: list) -> Any:
    """How the blocks receive ``value``: as it is (None, a number), a _Broadcast, or ('mapped',
    k) for the k-th Dask array passed beside the input's blocks."""
    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return value
    if isinstance(value, np.ndarray):
        _check_broadcast(value, name, input)
        return _Broadcast(value, input.ndim)
    if is_dask(value):
        import dask.array as da
        _check_broadcast(value, name, input)
        mapped.append(da.broadcast_to(value, input.shape).rechunk(input.chunks))
        return ("mapped", len(mapped) - 1)
    if getattr(value, "ndim", None) == 0 or isinstance(value, np.generic):
        return value  # a NumPy scalar or 0-d array: the block call checks it
    raise _mixed(name, value, "input", input)


def _check_broadcast(value: Any, name: str, input: Any) -> None:
    _checks.check_float_dtype(value, name, input, "input")
    _checks.check_same_dtype(value, name, input, "input")
    shape = input.shape
    if value.ndim > len(shape) or any(a != 1 and a != b
                                      for a, b in zip(value.shape[::-1], shape[::-1])):
        raise ValueError(f"{name} has shape {value.shape}, which does not broadcast to the "
                         f"input shape {shape}")


def _resolve(argument: Any, location, mapped_blocks) -> Any:
    if isinstance(argument, _Broadcast):
        return argument.block(location)
    if isinstance(argument, tuple) and argument[:1] == ("mapped",):
        return _compact(mapped_blocks[argument[1]])
    return argument


# ---- what one block computes ------------------------------------------------------------------
def _partial_block(hi: float, lo: float, ndim: int) -> np.ndarray:
    block = np.empty((1,) * ndim, dtype=PARTIAL)
    block["hi"], block["lo"] = hi, lo
    return block


def _pair_block(first: Any, second: Any, ndim: int) -> np.ndarray:
    """Two results of one pass, in a 1-element object block (split by _first and _second)."""
    block = np.empty((1,) * ndim, dtype=object)
    block.reshape(-1)[0] = (first, second)
    return block


def _first(block: np.ndarray) -> Any:
    return block.reshape(-1)[0][0]


def _second(block: np.ndarray) -> Any:
    return block.reshape(-1)[0][1]


def _run_block(entries, kind, mode, reduction, scale, arguments, x, y, *mapped_blocks,
               block_info=None):
    """One block's pass. ``mode`` 'partial': its unrounded sum (and gradient, for a kind that
    wants one, times ``scale``); 'map': the in-memory call on the block with reduction
    ``reduction`` and grad_output ``scale``."""
    location = block_info[0]["array-location"] if block_info else [(0, n) for n in x.shape]
    weight, pos_weight, grad_output = (_resolve(a, location, mapped_blocks) for a in arguments)
    if mode == "partial":
        result = entries.loss_partial(kind.op, kind.want_grad, x, y, weight, pos_weight,
                                        scale)
        if not kind.want_grad:
            return _partial_block(result[0], result[1], x.ndim)
        return _pair_block(_partial_block(result[0], result[1], x.ndim), result[2], x.ndim)
    result = entries.loss(kind, x, y, weight, pos_weight, reduction,
                            scale if grad_output is None else grad_output)
    if kind.want_loss and kind.want_grad:
        return _pair_block(result[0], result[1], x.ndim)
    return result


# ---- the combine: double-double sums of the partials --------------------------------------------
def _identity(block, axis=None, keepdims=False):
    return block


def _summed(block: np.ndarray) -> tuple[float, float]:
    flat = block.reshape(-1)
    return _dd.total(zip(flat["hi"].tolist(), flat["lo"].tolist()))


def _combine(block, axis=None, keepdims=False):
    hi, lo = _summed(block)
    return _partial_block(hi, lo, block.ndim if keepdims else 0)


def _finish(block, *, count, mean, dtype):
    """The total partial (a 0-d block) divided by N for 'mean' and rounded once."""
    hi, lo = float(block["hi"]), float(block["lo"])
    if mean:
        hi, lo = _dd.divide(hi, lo, count)
    return _dd.rounded(hi, lo, dtype)


# ---- the entry ----------------------------------------------------------------------------------
def loss(entries, kind, input, target, weight, pos_weight, reduction, grad_output, out):
    """A loss function of the dispatch (``kind``) on Dask arrays: see the module's docstring.
    ``entries`` are the dispatch's in-memory calls that each block runs (``loss``,
    ``loss_partial``, ``sigmoid``, ``sigmoid_backward``): handed over, not imported, so that
    this module depends on the dispatch only through its caller."""
    import dask.array as da

    if not is_dask(input):
        raise _mixed("target", target, "input", input)
    if not is_dask(target):
        raise _mixed("target", target, "input", input)
    if out is not None:
        raise TypeError("out= is not taken with Dask arrays: the gradient is a new lazy Dask "
                        "array (store it with dask.array.store or .to_zarr)")
    _checks.check_reduction(reduction)
    _checks.check_float_dtype(input, "input")
    _checks.check_float_dtype(target, "target", input, "input")
    _checks.check_same_dtype(target, "target", input, "input")
    _checks.check_same_shape(target, "target", input, "input")
    shape = input.shape
    if any(math.isnan(size) for size in shape):
        raise ValueError(f"input has unknown chunk sizes (shape {shape}); call "
                         "input.compute_chunk_sizes() (and target's) first")
    if type(input._meta).__module__.startswith("cupy") and kind.want_loss and (
            reduction != "none"):
        raise NotImplementedError("reduced losses of Dask arrays of CuPy blocks are not "
                                  "implemented yet (the CUDA partial sums are not "
                                  "double-doubles); use reduction='none', or NumPy blocks")
    if input.ndim == 0:  # blocks of one element: a 0-d array has no axis to place them on
        input, target = input.reshape(1), target.reshape(1)
    if target.chunks != input.chunks:
        target = target.rechunk(input.chunks)
    mapped = []  # the Dask arrays beside the input and target, in the order the blocks get them
    scale = 1.0
    grad_array = None
    if kind.want_grad:
        if _checks.is_real_scalar(grad_output):
            scale = _checks.as_float(grad_output, "grad_output")
        elif reduction != "none":
            raise ValueError(f"grad_output must be a scalar for reduction={reduction!r} (the "
                             f"loss is a scalar); got {_checks.type_name(grad_output)}")
        else:
            grad_array = grad_output
    arguments = (_argument(weight, "weight", input, mapped),
                 _argument(pos_weight, "pos_weight", input, mapped),
                 _argument(grad_array, "grad_output", input, mapped))
    n = input.size
    if reduction == "mean" and kind.want_grad and grad_array is None:
        scale = scale / n if n else scale
    ndim = input.ndim
    meta = np.empty_like(input._meta, shape=(0,) * ndim, dtype=input.dtype)
    block_args = (input, target, *mapped)

    if reduction == "none" or not kind.want_loss:
        run = partial(_run_block, entries, kind, "map",
                      "none" if reduction == "none" else "sum", scale, arguments)
        if not (kind.want_loss and kind.want_grad):
            result = da.map_blocks(run, *block_args, dtype=input.dtype, meta=meta)
            return result.reshape(shape) if result.shape != shape else result
        pairs = da.map_blocks(run, *block_args, dtype=object,
                              chunks=tuple((1,) * b for b in input.numblocks),
                              meta=np.empty((0,) * ndim, dtype=object))
        loss_value, grad = (pairs.map_blocks(pick, dtype=input.dtype, chunks=input.chunks,
                                             meta=meta) for pick in (_first, _second))
        return loss_value.reshape(shape), grad.reshape(shape)

    run = partial(_run_block, entries, kind, "partial", None, scale, arguments)
    one_per_block = tuple((1,) * b for b in input.numblocks)
    partial_meta = np.empty((0,) * ndim, dtype=PARTIAL)
    grad = None
    if kind.want_grad:
        pairs = da.map_blocks(run, *block_args, dtype=object, chunks=one_per_block,
                              meta=np.empty((0,) * ndim, dtype=object))
        partials = pairs.map_blocks(_first, dtype=PARTIAL, chunks=one_per_block,
                                    meta=partial_meta)
        grad = pairs.map_blocks(_second, dtype=input.dtype, chunks=input.chunks, meta=meta)
    else:
        partials = da.map_blocks(run, *block_args, dtype=PARTIAL, chunks=one_per_block,
                                 meta=partial_meta)
    # the reduction's dtype is that of every partial: the rounding is a step of its own
    summed = da.reduction(partials, _identity, _combine, combine=_combine, axis=None,
                          dtype=PARTIAL, concatenate=True, meta=np.empty((), dtype=PARTIAL))
    total = summed.map_blocks(partial(_finish, count=n, mean=reduction == "mean",
                                      dtype=input.dtype),
                              dtype=input.dtype, meta=np.empty((), dtype=input.dtype))
    if grad is None:
        return total
    return total, grad.reshape(shape)


def sigmoid(entries, input, out):
    import dask.array as da
    if out is not None:
        raise TypeError("out= is not taken with Dask arrays: the result is a new lazy Dask array")
    _checks.check_float_dtype(input, "input")
    return da.map_blocks(entries.sigmoid, input, dtype=input.dtype)


def sigmoid_backward(entries, grad_output, output, out):
    import dask.array as da
    if not (is_dask(grad_output) and is_dask(output)):
        raise _mixed("output", output, "grad_output", grad_output)
    if out is not None:
        raise TypeError("out= is not taken with Dask arrays: the result is a new lazy Dask array")
    _checks.check_float_dtype(grad_output, "grad_output")
    _checks.check_same_dtype(output, "output", grad_output, "grad_output")
    _checks.check_same_shape(output, "output", grad_output, "grad_output")
    return da.map_blocks(entries.sigmoid_backward, grad_output,
                         output.rechunk(grad_output.chunks), dtype=grad_output.dtype)
