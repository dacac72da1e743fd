"""crysx_nn (PyPI ``crysx-nn``): its Numba functions ``loss.MSE_loss``, ``loss.BCE_loss``,
``activation.Sigmoid`` and their ``*_grad``, called as its documentation says: (samples,
outputs) arrays, losses averaged over the outputs, so divided by the batch size for PyTorch's
mean. It has no BCE with logits; a crysx_nn user composes ``Sigmoid`` and ``BCE_loss``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math

import numpy as np

from fastloss.bench.ops import OPS
from fastloss.bench.peers import INSTALL_HINT, Unavailable
from fastloss.bench.peers.numba_loops import compile_once, heads

# crysx-nn 0.1.7 pins numpy==1.19.2, which has no wheel for Python 3.11 and fails to build,
# so it cannot be a dependency of the extra; its code runs on current NumPy and Numba.
CRYSX_INSTALL_HINT = "pip install --no-deps crysx-nn (its numpy==1.19.2 pin cannot install)"


@functools.cache
def _crysx_modules():
    try:
        # Each module prints a warning on stdout when CuPy is missing; the table owns stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            from crysx_nn import activation, loss
    except ImportError as error:
        if getattr(error, "name", None) == "crysx_nn":
            raise Unavailable(f"crysx_nn is not installed ({CRYSX_INSTALL_HINT})") from None
        raise Unavailable(f"crysx_nn cannot be imported ({error}; {INSTALL_HINT})") from None
    except Exception as error:  # an incompatible NumPy or Numba fails in other ways
        raise Unavailable(
            f"crysx_nn cannot be imported ({type(error).__name__}: {error})") from None
    return activation, loss


def _as_batch(a):
    """(samples, outputs) as crysx_nn expects: 10 outputs per sample (an MNIST-sized layer)
    where N allows."""
    return a.reshape(-1, math.gcd(a.size, 10))


def crysx_builder(op_name, *arrays):
    """run() calling crysx_nn for ``op_name``; arrays come back flat, losses as PyTorch's mean."""
    activation, loss = _crysx_modules()
    a, b = (_as_batch(array) for array in arrays) if len(arrays) == 2 else (
        _as_batch(arrays[0]), None)
    batch = a.shape[0]

    def mse():
        return loss.MSE_loss(a, b) / batch

    def mse_grad():
        return (loss.MSE_loss_grad(a, b) / batch).reshape(-1)

    def bce():
        return loss.BCE_loss(a, b) / batch

    def bce_grad():
        return (loss.BCE_loss_grad(a, b) / batch).reshape(-1)

    def logits():
        return loss.BCE_loss(activation.Sigmoid(a), b) / batch

    def logits_grad(output=None):
        output = activation.Sigmoid(a) if output is None else output
        grad = loss.BCE_loss_grad(output, b) * activation.Sigmoid_grad(a) / batch
        return grad.reshape(-1)

    def logits_and_grad():
        output = activation.Sigmoid(a)
        return loss.BCE_loss(output, b) / batch, logits_grad(output)

    def sigmoid():
        return activation.Sigmoid(a).reshape(-1)

    # crysx_nn's Sigmoid_grad takes the sigmoid's input, the benchmark gives its output s: the
    # input, log(s / (1 - s)), is made here, outside the timed call.
    pre_activation = (np.log(b) - np.log1p(-b)) if op_name == "sigmoid_backward" else None

    def sigmoid_backward():
        return (a * activation.Sigmoid_grad(pre_activation)).reshape(-1)

    run = {
        "mse_loss": mse, "mse_loss_grad": mse_grad,
        "mse_loss_and_grad": lambda: (mse(), mse_grad()),
        "binary_cross_entropy": bce, "binary_cross_entropy_grad": bce_grad,
        "binary_cross_entropy_and_grad": lambda: (bce(), bce_grad()),
        "binary_cross_entropy_with_logits": logits,
        "binary_cross_entropy_with_logits_grad": logits_grad,
        "binary_cross_entropy_with_logits_and_grad": logits_and_grad,
        "sigmoid": sigmoid, "sigmoid_backward": sigmoid_backward,
    }[op_name]
    # crysx_nn caches its compiled functions on disk; loading them still takes a call.
    compile_once(("crysx_nn", op_name, a.dtype.name),
                 lambda: crysx_builder(op_name, *heads(arrays))())
    return run


BUILDERS = {name: functools.partial(crysx_builder, name) for name in OPS}
