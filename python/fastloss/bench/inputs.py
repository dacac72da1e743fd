"""The benchmark's input arrays, on the host (NumPy) or on a GPU (CuPy), and the exact losses
over them (``fastloss.reference``'s float64 terms, summed with math.fsum)."""

from __future__ import annotations

import importlib
import itertools
import math
from typing import Any

import numpy as np

from fastloss import reference

PROB_MIN = 1e-6  # probabilities lie in [PROB_MIN, 1 - PROB_MIN]: BCE's clips never bite


def array_module(array) -> Any:
    """numpy for a NumPy array, else the package whose array it is (cupy), without importing
    CuPy for NumPy arrays: the builders make their buffers with the module of their inputs."""
    if isinstance(array, np.ndarray):
        return np
    return importlib.import_module(type(array).__module__.partition(".")[0])


def host_array(array) -> np.ndarray:
    """The array itself when it is NumPy's, else a host copy (CuPy's ``get``)."""
    return array if isinstance(array, np.ndarray) else array.get()


class Inputs:
    """The arrays of one (dtype, N), made on first use with ``xp`` (numpy or cupy), and the
    exact losses over them.

    Arrays, each from a random stream k of its own (so that each is the same whichever is made
    first):
      values   standard normal: predictions, logits, upstream gradients
      targets  standard normal: regression targets
      probs    uniform in [1e-6, 1 - 1e-6]: BCE inputs and sigmoid outputs
      labels   hard targets, 0 or 1
    On the host the stream is ``np.random.default_rng([0, k])``. On a GPU it is CuPy's
    ``RandomState(1000 + k)`` (curand), on the device: making 4 GiB arrays on the host and
    copying them would take longer than the benchmark. Same distributions, other values.
    """

    _STREAMS = {"values": 1, "targets": 2, "probs": 3, "labels": 4}

    def __init__(self, dtype, n: int, xp: Any = np):
        self.dtype = np.dtype(dtype)
        self.n = int(n)
        self.xp = xp
        self._arrays: dict[str, Any] = {}
        self._exact: dict[str, float] = {}
        self._expected: tuple = (None, None)

    def __getitem__(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._make(name)
        return self._arrays[name]

    def _draws(self, name):
        """(standard normal, uniform in [0, 1)): functions drawing N values of stream k."""
        stream, n, dtype = self._STREAMS[name], self.n, self.dtype
        if self.xp is np:
            rng = np.random.default_rng([0, stream])
            return (lambda: rng.standard_normal(n, dtype=dtype),
                    lambda: rng.random(n, dtype=dtype))
        state = self.xp.random.RandomState(1000 + stream)
        return (lambda: state.standard_normal(n, dtype=dtype),
                lambda: state.random_sample(n, dtype=dtype))

    def _make(self, name):
        normal, uniform = self._draws(name)
        if name in ("values", "targets"):
            return normal()
        if name == "probs":
            return self.xp.clip(uniform(), PROB_MIN, 1 - PROB_MIN)
        return (uniform() < 0.5).astype(self.dtype)

    def arrays(self, op) -> tuple:
        return tuple(self[name] for name in op.arrays)

    def drop(self, *names: str) -> None:
        """Frees arrays no longer needed (the stability track's 1.6 GB arrays at N = 4e8)."""
        for name in names:
            self._arrays.pop(name, None)

    def exact_loss(self, op) -> float:
        """The op's loss in exact float64 (``fastloss.reference``: float64 terms, math.fsum)."""
        assert op.reference is not None, f"{op.name} has no reduced loss"
        key = op.reference.__name__  # mse_loss and mse_loss_and_grad share one
        if key not in self._exact:
            self._exact[key] = exact_mean(op.reference, self.arrays(op))
        return self._exact[key]

    def expected(self, op):
        """``fastloss.reference``'s result of the op (float64, on the host), for the latest op
        only: at N = 1e8 one array of it takes 800 MB."""
        if self._expected[0] != op.name:
            self._expected = (None, None)  # frees the previous op's arrays first
            host = tuple(host_array(a) for a in self.arrays(op))
            self._expected = (op.name, getattr(reference, op.name)(*host))
        return self._expected[1]


EXACT_CHUNK = 1 << 21  # the reference's float64 temporaries stay at tens of MB for any N


def exact_mean(reference_loss, arrays) -> float:
    """Exact mean of ``reference_loss``'s per-element terms: math.fsum over chunks (copied to
    the host chunk by chunk when the arrays are on a GPU)."""
    n = arrays[0].size
    chunks = (reference_loss(*(host_array(a[i:i + EXACT_CHUNK]) for a in arrays),
                             reduction="none").tolist()
              for i in range(0, n, EXACT_CHUNK))
    return math.fsum(itertools.chain.from_iterable(chunks)) / n
