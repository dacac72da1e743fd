"""fastloss: exact, deterministic, fused loss kernels for NumPy (C++/OpenMP).

Functions mirror ``torch.nn.functional``: ``mse_loss``, ``binary_cross_entropy``,
``binary_cross_entropy_with_logits``, each with ``*_grad`` (d loss / d input) and
``*_and_grad`` (both in one pass), plus ``sigmoid`` and ``sigmoid_backward``; the multi-class
``softmax``, ``log_softmax`` (and their backward passes) and ``cross_entropy`` (``_grad``,
``_and_grad``); ``tanh`` and ``relu`` with their backward passes.
``fastloss.reference`` holds the NumPy float64 definitions they are tested against.
``fastloss.nn``, ``fastloss.optim`` and ``fastloss.data`` are a thin layer on top for training
dense networks with mini-batch SGD (``fastloss.nn.fit``).
"""

from importlib import metadata as _metadata

from . import functional as _functional
from . import data, nn, optim  # the training layer: small, NumPy-only imports

from .functional import (
    binary_cross_entropy,
    binary_cross_entropy_and_grad,
    binary_cross_entropy_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_and_grad,
    binary_cross_entropy_with_logits_grad,
    cross_entropy,
    cross_entropy_and_grad,
    cross_entropy_grad,
    log_softmax,
    log_softmax_backward,
    mse_loss,
    mse_loss_and_grad,
    mse_loss_grad,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    tanh,
    tanh_backward,
)

try:
    __version__ = _metadata.version("fastloss")
except _metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = list(_functional.__all__)
