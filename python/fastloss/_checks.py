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


def float_dtype_name(like):
    """The dtype a converted argument should take: that of the call's ``like`` array when it
    is one fastloss supports, float32 otherwise."""
    dtype = getattr(like, "dtype", None)
    if dtype is not None and dtype.kind == "f" and dtype.itemsize in (4, 8):
        return dtype.name
    return "float32"


def check_float_dtype(a, name, like=None, like_name=None):
    """float32 or float64 in native byte order; the message says how to convert (to the dtype
    of ``like``, the call's first array, when given)."""
    dtype = a.dtype
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        wanted = float_dtype_name(like)
        if name == "out":  # a converted copy would not be written: a new buffer is the fix
            fix = (f": pass an out of dtype {wanted}, the dtype of {like_name} "
                   f"(np.empty_like({like_name}))")
        elif dtype.kind == "c":  # astype would drop the imaginary part without a word
            fix = " (real numbers)"
        else:
            of_like = f", the dtype of {like_name}" if like is not None else ""
            fix = f": convert it with {name}.astype(np.{wanted}){of_like}"
        raise TypeError(f"{name} has dtype {dtype}; fastloss supports float32 and float64"
                        f"{fix}")
    if not dtype.isnative:
        native = dtype.newbyteorder("=")
        raise TypeError(f"{name} has non-native byte order (dtype {dtype.str}); convert it "
                        f"with .astype('{native.name}')")


def check_same_dtype(a, name, like, like_name):
    if a.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {like_name} has dtype {like.dtype}; "
                        f"convert one of them explicitly, e.g. {name}.astype(np."
                        f"{like.dtype.name}) (fastloss never upcasts silently)")


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
