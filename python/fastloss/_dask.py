"""The Dask family: the loss functions over ``dask.array.Array`` inputs, lazily, block by block.

Imported only for a Dask argument (``import fastloss`` never imports dask). Each block runs
through the dispatch like an in-memory call, so it takes the NumPy backend (or CuPy's, for
CuPy blocks), and every check of the in-memory call applies to it.

- ``reduction='none'`` and gradients: Dask arrays with the input's chunks, each block the
  in-memory result of that block, so equal element for element to the in-memory result (the
  kernels are elementwise; a 'mean' gradient is scaled by grad_output / N of the whole array,
  the very double the in-memory call uses).
- 'sum' and 'mean': a 0-d Dask array from ``dask.array.reduction``. Each block yields its sum
  unrounded, as a double-double (the backend's ``loss_partial``); the partials are added with
  the same double-double arithmetic (``fastloss._dd``) and rounded once. The in-memory sum is
  the same near-exact double-double computation (csrc/kernels.h), so both are the exact sum of
  the same per-element terms, correctly rounded: the same bits for any chunking, any number of
  workers and any order of the combine, unless the exact value lies within about 1e-26
  (relative to the sum of the terms' magnitudes) of a rounding boundary of the dtype.
- ``*_and_grad``: (lazy loss, lazy gradient) from one pass per block; computed together
  (``dask.compute(loss, grad)``) each block's pass runs once.

The multi-class functions (cross_entropy, softmax and log_softmax, their backward functions,
tanh, relu) follow the same rules, with the class axis whole in every block (see
``cross_entropy`` below).

Weights that broadcast may be NumPy arrays (sent with the graph: keep them small) or real
numbers; a Dask weight is broadcast to the input and rechunked like it. An array grad_output
(reduction='none') follows the same rules. Any other mix of array families is a TypeError.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
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


# ---- multi-class: cross_entropy, the softmax family, tanh and relu ------------------------------
# A block's partial of cross_entropy: its sum of row losses and the mean's divisor (the summed
# class weights of its non-ignored targets), two double-doubles (_cpu.cross_entropy_partial).
CE_PARTIAL = np.dtype([("hi", np.float64), ("lo", np.float64),
                       ("divisor_hi", np.float64), ("divisor_lo", np.float64)])
# The divisor alone, from the targets (what a 'mean' gradient needs before the logits' pass).
DIVISOR = PARTIAL

_INDEX_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))


def _no_out(out) -> None:
    if out is not None:
        raise TypeError("out= is not taken with Dask arrays: the result is a new lazy Dask array "
                        "(store it with dask.array.store or .to_zarr)")


def _known_chunks(array, name: str) -> None:
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {array.shape}); call "
                         f"{name}.compute_chunk_sizes() first")


def _checked_backward_pair(grad_output, output, out) -> None:
    """The checks of a backward function's (grad_output, forward output) on Dask arrays."""
    if not (is_dask(grad_output) and is_dask(output)):
        raise _mixed("output", output, "grad_output", grad_output)
    _no_out(out)
    _checks.check_float_dtype(grad_output, "grad_output")
    _checks.check_same_dtype(output, "output", grad_output, "grad_output")
    _checks.check_same_shape(output, "output", grad_output, "grad_output")


def activation(entries, op, input, out):
    import dask.array as da
    _no_out(out)
    _checks.check_float_dtype(input, "input")
    return da.map_blocks(partial(entries.activation, op), input, dtype=input.dtype)


def activation_backward(entries, op, grad_output, output, out):
    import dask.array as da
    _checked_backward_pair(grad_output, output, out)
    return da.map_blocks(partial(entries.activation_backward, op), grad_output,
                         output.rechunk(grad_output.chunks), dtype=grad_output.dtype)


def _whole_along(array, axis):
    """``array`` with the whole of ``axis`` in every block (a row's classes must meet in one
    kernel call); the other axes keep their chunks."""
    if array.ndim == 0 or array.numblocks[axis] == 1:
        return array
    return array.rechunk({axis: -1})


def softmax_forward(entries, op, input, dim, out):
    """softmax or log_softmax along ``dim``, block by block: each block holds whole rows, so
    it is the in-memory result of its rows (equal element for element)."""
    import dask.array as da
    _no_out(out)
    _checks.check_float_dtype(input, "input")
    axis = _checks.checked_dim(dim, input.ndim)
    _known_chunks(input, "input")
    x = _whole_along(input, axis)
    return da.map_blocks(lambda block: entries.softmax_forward(op, block, axis), x,
                         dtype=input.dtype)


def softmax_backward(entries, op, grad_output, output, dim, out):
    import dask.array as da
    _checked_backward_pair(grad_output, output, out)
    axis = _checks.checked_dim(dim, grad_output.ndim)
    _known_chunks(grad_output, "grad_output")
    g = _whole_along(grad_output, axis)
    return da.map_blocks(lambda gb, yb: entries.softmax_backward(op, gb, yb, axis), g,
                         output.rechunk(g.chunks), dtype=grad_output.dtype)


def _ce_target_is_indices(target, input, loss_shape) -> bool:
    """Whether ``target`` holds class indices (else probabilities); its dtype and shape checked
    as the in-memory call checks them."""
    dtype = target.dtype
    if dtype.kind in "iu":
        if dtype not in _INDEX_DTYPES or not dtype.isnative:
            raise TypeError(f"target has dtype {dtype}; class indices must be int64 or int32 "
                            "(native byte order)")
        if tuple(target.shape) != tuple(loss_shape):
            raise ValueError(f"target has shape {target.shape}, expected {loss_shape} (one "
                             f"class index per row of the input {input.shape}, which has its "
                             "classes along dimension 1)")
        return True
    if dtype.kind != "f":
        raise TypeError(f"target has dtype {dtype}; expected int64 or int32 class indices or "
                        f"class probabilities of dtype {input.dtype}")
    _checks.check_same_dtype(target, "target", input, "input")
    if target.shape != input.shape:
        raise ValueError(f"target holds class probabilities (dtype {dtype}) and must have the "
                         f"input's shape {input.shape}, got {target.shape}; class indices "
                         "must be int64 or int32")
    return False


def _ce_weight(weight, input, classes):
    if weight is None:
        return None
    if not isinstance(weight, np.ndarray):
        hint = " (weight.compute() brings a Dask one into memory)" if is_dask(weight) else ""
        raise TypeError(f"weight must be None or a NumPy array of one weight per class beside "
                        f"Dask inputs, got {_checks.type_name(weight)}{hint}")
    _checks.check_float_dtype(weight, "weight")
    _checks.check_same_dtype(weight, "weight", input, "input")
    if weight.shape != (classes,):
        raise ValueError(f"weight has shape {weight.shape}, expected ({classes},) (one weight "
                         f"per class, C = {classes})")
    return weight


def _rows_of(block, indices):
    """A target block as the in-memory call takes it: class indices lose the class axis of
    length 1 that aligned them with the input's blocks."""
    return block.reshape(block.shape[:1] + block.shape[2:]) if indices else block


def _on_device_of(block, array):
    """A small NumPy array (class weights) copied to the GPU of a CuPy block."""
    import cupy
    with block.device:
        return cupy.asarray(array)


def _with_class_axis(array):
    return array.reshape(array.shape[:1] + (1,) + array.shape[1:])


def _block_start(block_info):
    location = block_info[0]["array-location"] if block_info else None
    return tuple(start for start, _ in location) if location else None


def _located(error: ValueError, block_info) -> ValueError:
    start = _block_start(block_info)
    if start is None:
        return error
    return ValueError(f"{error} (in the Dask block of input that starts at {start})")


def _ce_block(entries, kind, mode, reduction, indices, weight, ignore_index, smoothing, scale,
              x, t, *rest, block_info=None):
    """One block of cross_entropy. ``mode`` 'map': the in-memory call with ``reduction``
    ('none', or 'sum' for a reduced loss's gradient); 'partial': the block's partial (and its
    gradient). ``rest``: an array grad_output block ('none'), or the divisor's 0-d partial (a
    'mean' gradient: the scale becomes ``scale`` / the whole array's divisor, the very double
    the in-memory pass divides by)."""
    target = _rows_of(t, indices)
    if weight is not None and not isinstance(x, np.ndarray):
        weight = _on_device_of(x, weight)  # a CuPy block: its weights on its GPU
    grad_output = scale
    if rest and getattr(rest[0], "dtype", None) == DIVISOR:
        hi, _ = _dd.normalize(float(rest[0]["hi"]), float(rest[0]["lo"]))
        with np.errstate(divide="ignore", invalid="ignore"):
            grad_output = float(np.float64(scale) / np.float64(hi))
    elif rest:
        grad_output = _rows_of(rest[0], True)
    try:
        if mode == "partial":
            result = entries.cross_entropy_partial(kind.want_grad, x, target, weight,
                                                   ignore_index, smoothing, float(grad_output))
        else:
            result = entries.cross_entropy(kind, x, target, weight, ignore_index, reduction,
                                           smoothing, grad_output)
    except ValueError as error:
        raise _located(error, block_info) from None
    ones = (1,) * x.ndim
    if mode == "partial":
        sums, grad = (result, None) if not kind.want_grad else result
        block = np.empty(ones, dtype=CE_PARTIAL)
        for field, value in zip(CE_PARTIAL.names, sums):
            block[field] = value
        return block if grad is None else _pair_block(block, grad, x.ndim)
    if kind.want_loss and kind.want_grad:
        return _pair_block(_with_class_axis(result[0]), result[1], x.ndim)
    if kind.want_loss:
        return _with_class_axis(result)
    return result


def _divisor_block(indices, weight, ignore_index, classes, t, block_info=None):
    """A block's share of a mean's divisor from its targets alone, exact: the count of its
    non-ignored class indices (or of its rows, for probabilities), or their summed weights
    (counts per class times the weights, summed as fractions), as a (hi, lo) double-double."""
    if not indices:
        count = math.prod(t.shape[:1] + t.shape[2:])
        return _partial_block(float(count), 0.0, t.ndim)
    rows = (np.asarray(t) if isinstance(t, np.ndarray) else t.get()).reshape(-1)  # CuPy: .get()
    kept = rows[rows != ignore_index]
    bad = (kept < 0) | (kept >= classes)
    if bad.any():
        value = int(kept[np.argmax(bad)])
        raise _located(ValueError(f"target holds the class index {value}, outside [0, "
                                  f"{classes}) for an input of C = {classes} classes (and not "
                                  f"ignore_index={ignore_index})"), block_info)
    if weight is None:
        return _partial_block(float(kept.size), 0.0, t.ndim)
    counts = np.bincount(kept, minlength=classes)
    exact = sum((Fraction(int(n)) * Fraction(float(w)) for n, w in zip(counts, weight) if n),
                Fraction(0))
    hi = float(exact)
    return _partial_block(hi, float(exact - Fraction(hi)) if math.isfinite(hi) else 0.0, t.ndim)


def _summed_ce(block: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    flat = block.reshape(-1)
    return (_dd.total(zip(flat["hi"].tolist(), flat["lo"].tolist())),
            _dd.total(zip(flat["divisor_hi"].tolist(), flat["divisor_lo"].tolist())))


def _combine_ce(block, axis=None, keepdims=False):
    (hi, lo), (dhi, dlo) = _summed_ce(block)
    result = np.empty((1,) * block.ndim if keepdims else (), dtype=CE_PARTIAL)
    result["hi"], result["lo"], result["divisor_hi"], result["divisor_lo"] = hi, lo, dhi, dlo
    return result


def _finish_ce(block, *, mean, dtype):
    """The total partial divided by its divisor for 'mean' (dd::divide_by_sum) and rounded
    once, as the C++ module rounds the in-memory loss."""
    hi, lo = float(block["hi"]), float(block["lo"])
    if mean:
        hi, lo = _dd.divide_by_sum(hi, lo, float(block["divisor_hi"]),
                                   float(block["divisor_lo"]))
    return _dd.rounded(hi, lo, dtype)


def _ce_grad_output(grad_output, reduction, loss_shape, input):
    """(scale, None) for a real grad_output, or (1.0, the per-row Dask array) for 'none'."""
    import dask.array as da
    if _checks.is_real_scalar(grad_output) or (getattr(grad_output, "ndim", None) == 0
                                               and not is_dask(grad_output)):
        return _checks.as_float(grad_output, "grad_output"), None
    if reduction != "none":
        raise ValueError(f"grad_output must be a scalar for reduction={reduction!r} (the loss "
                         f"is a scalar); got {_checks.type_name(grad_output)}")
    if isinstance(grad_output, np.ndarray):
        grad_output = da.from_array(grad_output)
    if not is_dask(grad_output):
        raise _mixed("grad_output", grad_output, "input", input)
    try:
        return 1.0, da.broadcast_to(grad_output, loss_shape)
    except ValueError:
        raise ValueError(f"grad_output has shape {grad_output.shape}, which does not broadcast "
                         f"to the loss shape {loss_shape}") from None


def cross_entropy(entries, kind, input, target, weight, ignore_index, reduction, smoothing,
                  grad_output, out):
    """cross_entropy (the dispatch's ``kind``) on Dask arrays, lazily. Each block holds whole
    rows (all C classes of its rows: the class axis is rechunked to one chunk); its class
    indices or probabilities come with it. 'none' and gradients: each block's in-memory result
    (equal element for element; a 'mean' gradient's scale is divided by the whole array's
    divisor, summed exactly from the targets before the logits' pass). 'sum' and 'mean': each
    block's partial (sum of row losses, divisor: two double-doubles) combined exactly and
    rounded once, so the bits of the in-memory call for any chunking."""
    import dask.array as da

    if not (is_dask(input) and is_dask(target)):
        raise _mixed("target", target, "input", input)
    _no_out(out)
    _checks.check_float_dtype(input, "input")
    _known_chunks(input, "input")
    _known_chunks(target, "target")
    _, classes, loss_shape = _checks.cross_entropy_rows(input.shape)
    indices = _ce_target_is_indices(target, input, loss_shape)
    weight = _ce_weight(weight, input, classes)
    scale, grad_rows = (_ce_grad_output(grad_output, reduction, loss_shape, input) if kind.want_grad
                        else (1.0, None))
    one_row = input.ndim == 1  # (C,): one row, computed as (1, C)
    if one_row:
        input = input.reshape(1, classes)
        target = target.reshape(1) if indices else target.reshape(1, classes)
        if grad_rows is not None:
            grad_rows = grad_rows.reshape(1)
    # whole rows in every block; and for (N, C, d1, ...) the d axes whole too: the kernels walk
    # a block with inner = d1 * ... rows apart, and a block of inner 1 would take the
    # short-row kernel instead of the in-memory call's general scan (other bits)
    x = input
    for axis in range(1, input.ndim):
        x = _whole_along(x, axis)
    row_chunks = x.chunks[:1] + ((1,),) + x.chunks[2:]
    t = _with_class_axis(target).rechunk(row_chunks) if indices else target.rechunk(x.chunks)
    ndim = x.ndim
    meta = np.empty_like(x._meta, shape=(0,) * ndim, dtype=x.dtype)
    one_per_block = tuple((1,) * b for b in x.numblocks)
    pair_meta = np.empty((0,) * ndim, dtype=object)

    extra = []
    if grad_rows is not None:
        extra.append(_with_class_axis(grad_rows).rechunk(row_chunks))
    elif kind.want_grad and reduction == "mean":
        divisor_blocks = da.map_blocks(
            partial(_divisor_block, indices, weight, ignore_index, classes), t,
            dtype=DIVISOR, chunks=tuple((1,) * b for b in t.numblocks),
            meta=np.empty((0,) * ndim, dtype=DIVISOR))
        extra.append(da.reduction(divisor_blocks, _identity, _combine, combine=_combine,
                                  axis=None, dtype=DIVISOR, concatenate=True,
                                  meta=np.empty((), dtype=DIVISOR)))

    def finish_shapes(loss_value, grad):
        if loss_value is not None and reduction == "none":
            loss_value = loss_value[:, 0]
            loss_value = loss_value.reshape(()) if one_row else loss_value
        if grad is not None and one_row:
            grad = grad.reshape(classes)
        if grad is None:
            return loss_value
        return grad if loss_value is None else (loss_value, grad)

    if reduction == "none" or not kind.want_loss:
        run = partial(_ce_block, entries, kind, "map", "none" if reduction == "none" else "sum",
                      indices, weight, ignore_index, smoothing, scale)
        if kind.want_loss and kind.want_grad:
            pairs = da.map_blocks(run, x, t, *extra, dtype=object, chunks=one_per_block,
                                  meta=pair_meta)
            loss_value = pairs.map_blocks(_first, dtype=x.dtype, chunks=row_chunks, meta=meta)
            grad = pairs.map_blocks(_second, dtype=x.dtype, chunks=x.chunks, meta=meta)
            return finish_shapes(loss_value, grad)
        if kind.want_loss:
            return finish_shapes(da.map_blocks(run, x, t, dtype=x.dtype, chunks=row_chunks,
                                               meta=meta), None)
        return finish_shapes(None, da.map_blocks(run, x, t, *extra, dtype=x.dtype,
                                                 chunks=x.chunks, meta=meta))

    run = partial(_ce_block, entries, kind, "partial", "sum", indices, weight, ignore_index,
                  smoothing, scale)
    partial_meta = np.empty((0,) * ndim, dtype=CE_PARTIAL)
    grad = None
    if kind.want_grad:
        pairs = da.map_blocks(run, x, t, *extra, dtype=object, chunks=one_per_block,
                              meta=pair_meta)
        partials = pairs.map_blocks(_first, dtype=CE_PARTIAL, chunks=one_per_block,
                                    meta=partial_meta)
        grad = pairs.map_blocks(_second, dtype=x.dtype, chunks=x.chunks, meta=meta)
    else:
        partials = da.map_blocks(run, x, t, dtype=CE_PARTIAL, chunks=one_per_block,
                                 meta=partial_meta)
    summed = da.reduction(partials, _identity, _combine_ce, combine=_combine_ce, axis=None,
                          dtype=CE_PARTIAL, concatenate=True, meta=np.empty((), dtype=CE_PARTIAL))
    total = summed.map_blocks(partial(_finish_ce, mean=reduction == "mean", dtype=x.dtype),
                              dtype=x.dtype, meta=np.empty((), dtype=x.dtype))
    if grad is None:
        return total
    return total, finish_shapes(None, grad)
