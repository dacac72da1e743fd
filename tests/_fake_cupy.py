"""A stand-in for the few parts of CuPy that ``fastloss._cuda`` calls, for tests without a GPU.

Arrays are NumPy arrays that remember the device they were allocated on (views keep their
base's); a device is current inside ``with fake.cuda.Device(i):``, as in CuPy, and device 0
otherwise. Every allocation and every kernel launch is logged with the device that was current,
so a test can check that a call does all of its work on its input's device without a second
GPU; each launch is also listed with the dtypes of its array arguments (``launches``), so a test
can check which instantiation a call picks and what it hands it. Kernels do nothing: only
argument checks, kernel choice and device placement can be tested this way.

    fake = FakeCupy()
    monkeypatch.setattr(_cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(_cuda, "_kernel", fake.kernel)
"""

from __future__ import annotations

import types

import numpy as np


class FakeDevice:
    compute_capability = "90"

    def __init__(self, fake, device_id):
        self.fake = fake
        self.id = device_id

    def __enter__(self):
        self.fake.current.append(self.id)
        return self

    def __exit__(self, *exc_info):
        self.fake.current.pop()


class FakeCupy:
    __name__ = "cupy"  # the array module's name appears in error messages
    float32, float64, int32 = np.float32, np.float64, np.int32

    def __init__(self):
        self.current = [0]
        self.log: list[tuple[str, int]] = []  # (allocation or launch, device current then)
        # (name expression, the dtype names of the launch's array arguments, in order)
        self.launches: list[tuple[str, tuple[str, ...]]] = []
        fake = self

        class ndarray(np.ndarray):
            def __array_finalize__(self, obj):
                self.device_id = getattr(obj, "device_id", fake.current[-1])

            @property
            def device(self):
                return FakeDevice(fake, self.device_id)

            @property
            def data(self):  # CuPy's MemoryPointer: only .ptr is read
                return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

            def get(self):
                return np.array(self)

        # the dispatch picks the CUDA backend for arrays whose type comes from CuPy
        ndarray.__module__ = "cupy._fake"
        self.ndarray = ndarray
        self.cuda = types.SimpleNamespace(Device=lambda device_id=0: FakeDevice(fake, device_id))

    # ---- allocations: on the current device ----
    def _new(self, what, values):
        self.log.append((what, self.current[-1]))
        return np.array(values).view(self.ndarray)

    def empty(self, shape, dtype=np.float64):
        return self._new("empty", np.empty(shape, dtype))

    def zeros(self, shape, dtype=np.float64):
        return self._new("zeros", np.zeros(shape, dtype))

    def ones(self, shape, dtype=np.float64):
        return self._new("ones", np.ones(shape, dtype))

    def full(self, shape, value, dtype=None):
        return self._new("full", np.full(shape, value, dtype))

    def asarray(self, values, dtype=None):
        return self._new("asarray", np.asarray(values, dtype))

    def tile(self, a, reps):
        return self._new("tile", np.tile(np.asarray(a), reps))

    def multiply(self, a, b, dtype=None):
        return self._new("multiply", np.multiply(np.asarray(a), np.asarray(b), dtype=dtype))

    def ascontiguousarray(self, a):
        if isinstance(a, self.ndarray) and a.flags.c_contiguous:
            return a  # no copy, like CuPy
        return self._new("ascontiguousarray", np.ascontiguousarray(a))

    def broadcast_to(self, a, shape):  # a view: on a's device
        return np.broadcast_to(a, shape, subok=True)

    def unaligned(self, shape, dtype):
        """A C-contiguous array one byte past an element boundary (as DLPack can deliver)."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape))
        raw = np.zeros(size * dtype.itemsize + 1, np.uint8)[1:].view(dtype).reshape(shape)
        self.log.append(("unaligned", self.current[-1]))
        return raw.view(self.ndarray)

    # ---- kernels ----
    def kernel(self, family, dtype_name, name, device):
        def launch(grid, block, args):
            self.log.append((f"launch {name}", self.current[-1]))
            self.launches.append((name, tuple(arg.dtype.name for arg in args
                                              if isinstance(arg, self.ndarray))))
            for arg in args:
                if isinstance(arg, self.ndarray):
                    self.log.append((f"argument of {name}", arg.device_id))
        return launch
