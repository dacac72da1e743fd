"""Arrays of other libraries, taken without a copy through the standard protocols.

``adopt`` turns an object that speaks ``__cuda_array_interface__`` (into a CuPy array),
DLPack (``__dlpack__``: into NumPy for CPU memory, CuPy for CUDA memory) or
``__array_interface__`` (into NumPy) into an array the backends take; the result shares the
object's memory, so an ``out=`` of another library is written in place. Anything else is left
as it is, for the backends to refuse with their own message. NumPy scalars and the ``__array__``
protocol alone (pandas, xarray) are not adopted: those convert by copying.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def _cupy_or_none() -> Any:
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def _requires_grad_hint(value: Any) -> str:
    if getattr(value, "requires_grad", False):
        return "; for gradients through autograd use fastloss.torch, or pass .detach()"
    return ""


def adopt(value: Any, name: str) -> Any:
    """``value`` as a NumPy or CuPy array sharing its memory, if it speaks an array protocol;
    otherwise ``value`` unchanged."""
    kind = type(value)
    if (value is None or isinstance(value, (np.ndarray, np.generic, float, int))
            or kind.__module__.startswith("cupy")):
        return value
    described = f"{kind.__module__}.{kind.__qualname__}"
    if hasattr(value, "__cuda_array_interface__"):
        cupy = _cupy_or_none()
        if cupy is None:
            return value  # no GPU library: the backends name it a GPU array on the wrong device
        try:
            return cupy.asarray(value)
        except Exception:  # a broken interface: left to the backends' checks
            return value
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        device_type = int(value.__dlpack_device__()[0])
        try:
            if device_type == _DLPACK_CPU:
                return np.from_dlpack(value)
            if device_type == _DLPACK_CUDA:
                cupy = _cupy_or_none()
                return value if cupy is None else cupy.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as error:
            raise TypeError(f"{name} ({described}) could not be taken through DLPack: {error}"
                            f"{_requires_grad_hint(value)}") from None
        raise TypeError(f"{name} ({described}) is on DLPack device type {device_type}; "
                        "fastloss takes CPU and CUDA memory")
    if hasattr(value, "__array_interface__"):
        return np.asarray(value)
    return value
