"""The array library of an array (NumPy or CuPy), for code that runs unchanged on both."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

# A numpy.ndarray or a cupy.ndarray (CuPy is optional, so it cannot be named in annotations).
Array = Any


def array_module(array: Array) -> ModuleType:
    """numpy for a NumPy array, cupy for a CuPy array; TypeError for anything else."""
    if isinstance(array, np.ndarray):
        return np
    if type(array).__module__.startswith("cupy"):
        import cupy  # only reached with a CuPy array in hand, so CuPy is installed
        return cupy
    raise TypeError(f"expected a numpy.ndarray or a cupy.ndarray, got "
                    f"{type(array).__module__}.{type(array).__qualname__}")


def is_dask(obj: Any) -> bool:
    """A Dask collection (told by its type's module, so dask is never imported for it)."""
    return type(obj).__module__.startswith("dask.")


def module_for_device(device: str) -> ModuleType:
    """numpy for 'cpu', cupy for 'cuda' (or 'gpu')."""
    if device == "cpu":
        return np
    if device in ("cuda", "gpu"):
        try:
            import cupy
        except ImportError as error:
            raise RuntimeError("device 'cuda' needs CuPy: pip install cupy-cuda12x (or "
                               "cupy-cuda13x), or \".[cuda12]\" in the fastloss source "
                               "tree") from error
        return cupy
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def as_module_array(array: Array, xp: ModuleType) -> Array:
    """``array`` moved to the library ``xp`` (a no-op when it is already there)."""
    if xp is np:
        return array.get() if not isinstance(array, np.ndarray) else array
    return xp.asarray(array)
