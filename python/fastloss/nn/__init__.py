"""Dense networks on the fastloss kernels: each layer is a class with ``forward`` and
``backward``; there is no autograd engine.

Arrays are ``(batch, features)``, float32 or float64, NumPy or CuPy: a layer works in the
array library of its parameters (``Module.to('cuda')`` moves them) and its input must live
there too. Names, shapes and initialisers follow ``torch.nn``: ``Dense`` holds ``weight`` of
shape ``(out_features, in_features)`` and ``bias`` of shape ``(out_features,)``.

Buffers: a layer writes its output and its input gradient into buffers it owns, one per batch
shape, and reuses them on the next call, so a training step allocates nothing. An array a
layer returns is therefore overwritten by that layer's next call with the same batch shape:
copy it to keep it. ``predict`` returns fresh arrays. ``backward`` overwrites each
parameter's ``.grad`` (it does not accumulate), so no ``zero_grad`` is needed
(``Module.zero_grad()`` is there for loops written the PyTorch way).
"""

from __future__ import annotations

from typing import Any

from ._module import Module, Parameter
from .layers import Dense, ReLU, Sequential, Sigmoid, Softmax, Tanh
from .losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss

__all__ = ["Parameter", "Module", "Dense", "Sigmoid", "Tanh", "ReLU", "Softmax", "Sequential",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "fit", "predict"]


def __getattr__(name: str) -> Any:
    # fit and predict live in fastloss.training, which builds on this package: imported on
    # first use, so the two never import each other while loading (the one import from
    # fastloss.nn back up to the training loop).
    if name in ("fit", "predict"):
        from .. import training
        return getattr(training, name)
    raise AttributeError(f"module 'fastloss.nn' has no attribute {name!r}")
