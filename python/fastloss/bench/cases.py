"""Which implementations there are and how one runs an op: ``make_case`` gives the
zero-argument callable that every timing, check and error measure calls. fastloss's own
builders are here; the peers' are in ``peers/``.

On NumPy arrays (``python -m fastloss bench``, the pytest-benchmark suite): IMPLEMENTATIONS.
On CuPy arrays (bench/gpu.py): DEVICE_IMPLEMENTATIONS, where ``cupy`` is the seeds' formulas
of ``numpy-naive`` evaluated by CuPy.
"""

from __future__ import annotations

from typing import Callable

import fastloss
from fastloss.bench.inputs import array_module
from fastloss.bench.peers import (Unavailable, crysx_nn_calls, jax_calls, numba_loops,
                                  numpy_formulas, torch_calls)


def _with_out(function, *arrays):
    out = array_module(arrays[0]).empty_like(arrays[0])
    return lambda: function(*arrays, out=out)


FASTLOSS = {
    "mse_loss": lambda x, y: lambda: fastloss.mse_loss(x, y),
    "mse_loss_grad": lambda x, y: _with_out(fastloss.mse_loss_grad, x, y),
    "mse_loss_and_grad": lambda x, y: _with_out(fastloss.mse_loss_and_grad, x, y),
    "binary_cross_entropy": lambda p, t: lambda: fastloss.binary_cross_entropy(p, t),
    "binary_cross_entropy_grad": lambda p, t: _with_out(fastloss.binary_cross_entropy_grad, p, t),
    "binary_cross_entropy_and_grad":
        lambda p, t: _with_out(fastloss.binary_cross_entropy_and_grad, p, t),
    "binary_cross_entropy_with_logits":
        lambda z, t: lambda: fastloss.binary_cross_entropy_with_logits(z, t),
    "binary_cross_entropy_with_logits_grad":
        lambda z, t: _with_out(fastloss.binary_cross_entropy_with_logits_grad, z, t),
    "binary_cross_entropy_with_logits_and_grad":
        lambda z, t: _with_out(fastloss.binary_cross_entropy_with_logits_and_grad, z, t),
    "sigmoid": lambda z: _with_out(fastloss.sigmoid, z),
    "sigmoid_backward": lambda g, s: _with_out(fastloss.sigmoid_backward, g, s),
}


# name -> () -> builders (op name -> build(*arrays) -> run()); raises Unavailable. The peer
# modules import their library (Numba, PyTorch, crysx_nn) only when a case is built.
_BUILDERS: dict[str, Callable[[], dict]] = {
    "fastloss": lambda: FASTLOSS,
    "numpy-naive": lambda: numpy_formulas.NAIVE,
    "numpy-out": lambda: numpy_formulas.FASTEST,
    "numba": lambda: numba_loops.builders(False),
    "numba-parallel": lambda: numba_loops.builders(True),
    "torch": torch_calls.builders,
    "jax": jax_calls.builders,
    "crysx_nn": lambda: crysx_nn_calls.BUILDERS,
    "cupy": lambda: numpy_formulas.NAIVE,
}
IMPLEMENTATIONS = ("fastloss", "numpy-naive", "numpy-out", "numba", "numba-parallel", "torch",
                   "jax", "crysx_nn")
PEERS = IMPLEMENTATIONS[1:]
DEVICE_IMPLEMENTATIONS = ("fastloss", "cupy", "torch")


def builders(impl: str) -> dict:
    """op name -> build(*arrays) -> run() of ``impl``; raises Unavailable where it cannot run."""
    return _BUILDERS[impl]()


def make_case(impl: str, op, inputs, arrays: tuple | None = None) -> Callable:
    """The zero-argument callable that runs ``op`` once with ``impl`` on ``inputs`` (or on
    ``arrays``, copies of them). Raises Unavailable for a peer that is not installed."""
    return builders(impl)[op.name](*(arrays or inputs.arrays(op)))


def runnable_cases(impls, op, inputs, missing: dict, make=make_case):
    """(impl, case) for each impl that runs here; the others go into ``missing`` with the
    reason. The caller deletes each case before the next is made (outputs of size N)."""
    for impl in impls:
        try:
            case = make(impl, op, inputs)
        except Unavailable as reason:
            missing[impl] = str(reason)
            continue
        yield impl, case
        del case
