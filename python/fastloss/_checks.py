"""The argument checks that every array family shares: the in-memory dispatch (``_dispatch``)
and the Dask graph builder (``_dask``) both word their errors through these."""

from __future__ import annotations

import numbers

import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction):
    if not (isinstance(reduction, str) and reduction in REDUCTIONS):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def type_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def is_bfloat16(dtype):
    """ml_dtypes.bfloat16 (a user-defined NumPy dtype: kind 'V', 2 bytes)."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def storage_name(dtype):
    """The name of a dtype some call of fastloss takes ("float32", "float64", "float16",
    "bfloat16"), else None."""
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return dtype.name
    return "bfloat16" if is_bfloat16(dtype) else None


def spelling(dtype_name):
    """How the messages spell a dtype's constructor."""
    return "ml_dtypes.bfloat16" if dtype_name == "bfloat16" else f"np.{dtype_name}"


def float_dtype_name(like):
    """The dtype a converted argument should take: that of the call's ``like`` array when it
    is one fastloss supports, float32 otherwise."""
    dtype = getattr(like, "dtype", None)
    name = storage_name(dtype) if dtype is not None else None
    return name or "float32"


def check_float_dtype(a, name, like=None, like_name=None, halves=()):
    """float32 or float64 in native byte order, or one of ``halves`` (the 16-bit dtypes the
    call and its backend take, by name); the message says how to convert (to the dtype of
    ``like``, the call's first array, when given)."""
    dtype = a.dtype
    storage = storage_name(dtype)
    if storage not in ("float32", "float64") and storage not in halves:
        wanted = float_dtype_name(like)
        if name == "out":  # a converted copy would not be written: a new buffer is the fix
            fix = (f": pass an out of dtype {wanted}, the dtype of {like_name} "
                   f"(np.empty_like({like_name}))")
        elif dtype.kind == "c":  # astype would drop the imaginary part without a word
            fix = " (real numbers)"
        else:
            of_like = f", the dtype of {like_name}" if like is not None else ""
            fix = f": convert it with {name}.astype({spelling(wanted)}){of_like}"
        supported = ("float32 and float64" if not halves else
                     ", ".join(("float32", "float64") + tuple(halves[:-1])) + " and "
                     + spelling(halves[-1]).replace("np.", ""))
        raise TypeError(f"{name} has dtype {dtype}; fastloss supports {supported}{fix}")
    if not dtype.isnative:
        native = dtype.newbyteorder("=")
        raise TypeError(f"{name} has non-native byte order (dtype {dtype.str}); convert it "
                        f"with .astype('{native.name}')")


def check_same_dtype(a, name, like, like_name):
    if a.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {like_name} has dtype {like.dtype}; "
                        f"convert one of them explicitly, e.g. {name}.astype("
                        f"{spelling(storage_name(like.dtype) or like.dtype.name)}) (fastloss "
                        "never upcasts silently)")


def check_same_shape(a, name, like, like_name):
    if a.shape != like.shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {like.shape} (the shape of "
                         f"{like_name})")


def is_real_scalar(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_float(value, name):
    """A real scalar as a Python float; float(10**400) raises an OverflowError naming nothing."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float64; expected a real number of "
                         "magnitude below 1.8e308") from None


def checked_dim(dim, ndim, name="dim"):
    """``dim`` of an array of ``ndim`` dimensions as a non-negative axis (torch's range:
    [-ndim, ndim - 1], and [-1, 0] for a 0-d array)."""
    if not isinstance(dim, numbers.Integral) or isinstance(dim, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got {type_name(dim)}")
    low, high = -max(ndim, 1), max(ndim, 1) - 1
    if not low <= dim <= high:
        raise ValueError(f"{name} must be in [{low}, {high}] for an input of {ndim} "
                         f"dimension{'s' if ndim != 1 else ''}, got {dim}")
    return int(dim) % max(ndim, 1)


def cross_entropy_rows(shape):
    """(class axis, C, loss shape) of a cross_entropy input of ``shape``: (C,), (N, C) or
    (N, C, d1, ...) with C >= 1."""
    if len(shape) == 0:
        raise ValueError("input has shape (); cross_entropy expects (C,), (N, C) or "
                         "(N, C, d1, ...) with the classes along dimension 1 (0 for (C,))")
    class_axis = 1 if len(shape) >= 2 else 0
    classes = shape[class_axis]
    if classes == 0:
        raise ValueError(f"input has shape {tuple(shape)}: no classes along dimension "
                         f"{class_axis}; expected C >= 1")
    return class_axis, classes, tuple(shape[:1]) + tuple(shape[2:]) if len(shape) >= 2 else ()
