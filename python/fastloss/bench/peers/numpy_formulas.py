"""NumPy as the seeds wrote it (``numpy-naive``, also the ``cupy`` peer of bench/gpu.py on CuPy
arrays) and at its fastest, as a careful NumPy user writes it (``numpy-out``: ``out=`` buffers,
BLAS dot products for the sums, which accumulate in float32 for float32 input)."""

from __future__ import annotations

import functools

import numpy as np

from fastloss import reference
from fastloss.bench.inputs import array_module

BCE_EPS = 1e-7  # the seeds' clip of BCE's input (Keras's epsilon)


# Naive: the seeds' formulas (the code fastloss replaces), one temporary per operator, loss and
# gradient separately, k = the element count. ``xp`` is the inputs' module (numpy or cupy),
# bound when the case is built so that a call pays nothing for it.
def _naive_mse_loss(xp, x, y):
    return xp.sum((x - y) ** 2) / x.size


def _naive_mse_loss_grad(xp, x, y):
    return 2 * (x - y) / x.size


def _naive_bce(xp, p, t):
    pc = xp.clip(p, BCE_EPS, 1 - BCE_EPS)
    return -xp.sum(t * xp.log(pc) + (1 - t) * xp.log(1 - pc)) / p.size


def _naive_bce_grad(xp, p, t):
    pc = xp.clip(p, BCE_EPS, 1 - BCE_EPS)
    return (pc - t) / (pc * (1 - pc)) / p.size


def _naive_sigmoid(xp, z):
    return 1 / (1 + xp.exp(-z))


def _naive_bce_logits(xp, z, t):
    return xp.sum(xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))) / z.size


def _naive_bce_logits_grad(xp, z, t):
    return (_naive_sigmoid(xp, z) - t) / z.size


def _naive_sigmoid_backward(xp, g, s):
    return g * s * (1 - s)


def _loss_and_grad(loss, grad):
    return lambda xp, *arrays: (loss(xp, *arrays), grad(xp, *arrays))


def _bind(function):
    return lambda *arrays: functools.partial(function, array_module(arrays[0]), *arrays)


NAIVE = {name: _bind(function) for name, function in {
    "mse_loss": _naive_mse_loss,
    "mse_loss_grad": _naive_mse_loss_grad,
    "mse_loss_and_grad": _loss_and_grad(_naive_mse_loss, _naive_mse_loss_grad),
    "binary_cross_entropy": _naive_bce,
    "binary_cross_entropy_grad": _naive_bce_grad,
    "binary_cross_entropy_and_grad": _loss_and_grad(_naive_bce, _naive_bce_grad),
    "binary_cross_entropy_with_logits": _naive_bce_logits,
    "binary_cross_entropy_with_logits_grad": _naive_bce_logits_grad,
    "binary_cross_entropy_with_logits_and_grad":
        _loss_and_grad(_naive_bce_logits, _naive_bce_logits_grad),
    "sigmoid": _naive_sigmoid,
    "sigmoid_backward": _naive_sigmoid_backward,
}.items()}


# The fastest NumPy: what a careful NumPy user writes: preallocated buffers, in-place ufuncs,
# BLAS dot products for the sums (fast, but float32 lanes: their error grows with N), and the
# same definitions as fastloss (BCE's logs clamped at -100 like PyTorch's, not clipped inputs).
def _fastest_mse_loss(x, y):
    diff = np.empty_like(x)

    def run():
        np.subtract(x, y, out=diff)
        return np.dot(diff, diff) / x.size
    return run


def _fastest_mse_loss_grad(x, y):
    out = np.empty_like(x)

    def run():
        np.subtract(x, y, out=out)
        return np.multiply(out, 2 / x.size, out=out)
    return run


def _fastest_mse_loss_and_grad(x, y):
    out = np.empty_like(x)

    def run():
        np.subtract(x, y, out=out)
        loss = np.dot(out, out) / x.size
        return loss, np.multiply(out, 2 / x.size, out=out)
    return run


def _bce_sum(p, t, log_p, log_q):
    """Sum of t*log(p) + (1-t)*log(1-p), logs clamped at -100, via t*(log p - log q) + log q."""
    np.log(p, out=log_p)
    np.maximum(log_p, reference.LOG_CLAMP, out=log_p)
    np.negative(p, out=log_q)
    np.log1p(log_q, out=log_q)
    np.maximum(log_q, reference.LOG_CLAMP, out=log_q)
    np.subtract(log_p, log_q, out=log_p)
    return np.dot(t, log_p) + log_q.sum()


def _fastest_bce(p, t):
    log_p, log_q = np.empty_like(p), np.empty_like(p)
    return lambda: -_bce_sum(p, t, log_p, log_q) / p.size


def _bce_grad(p, t, denominator, out):
    """(p - t) / (N max(p (1 - p), 1e-12)), PyTorch's clamp, into ``out``."""
    np.subtract(1, p, out=denominator)
    np.multiply(denominator, p, out=denominator)
    np.maximum(denominator, reference.GRAD_EPS, out=denominator)
    np.multiply(denominator, p.size, out=denominator)
    np.subtract(p, t, out=out)
    return np.divide(out, denominator, out=out)


def _fastest_bce_grad(p, t):
    denominator, out = np.empty_like(p), np.empty_like(p)
    return lambda: _bce_grad(p, t, denominator, out)


def _fastest_bce_and_grad(p, t):
    log_p, log_q, out = np.empty_like(p), np.empty_like(p), np.empty_like(p)

    def run():
        loss = -_bce_sum(p, t, log_p, log_q) / p.size
        return loss, _bce_grad(p, t, log_q, out)  # log_q's buffer reused for the denominator
    return run


def _logits_sum(z, t, buffer):
    """Sum of max(z, 0) - z*t + log1p(exp(-|z|)): the overflow-free form."""
    np.abs(z, out=buffer)
    np.negative(buffer, out=buffer)
    np.exp(buffer, out=buffer)
    np.log1p(buffer, out=buffer)
    softplus_tail = buffer.sum()
    return softplus_tail + np.maximum(z, 0, out=buffer).sum() - np.dot(z, t)


def _tanh_sigmoid(z, out):
    """sigmoid(z) = (1 + tanh(z/2)) / 2: one transcendental, no overflow for any z."""
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    np.multiply(out, 0.5, out=out)
    return np.add(out, 0.5, out=out)


def _fastest_bce_logits(z, t):
    buffer = np.empty_like(z)
    return lambda: _logits_sum(z, t, buffer) / z.size


def _logits_grad(z, t, out):
    """(sigmoid(z) - t) / N into ``out``."""
    _tanh_sigmoid(z, out)
    np.subtract(out, t, out=out)
    return np.multiply(out, 1 / z.size, out=out)


def _fastest_bce_logits_grad(z, t):
    out = np.empty_like(z)
    return lambda: _logits_grad(z, t, out)


def _fastest_bce_logits_and_grad(z, t):
    buffer, out = np.empty_like(z), np.empty_like(z)
    return lambda: (_logits_sum(z, t, buffer) / z.size, _logits_grad(z, t, out))


def _fastest_sigmoid(z):
    out = np.empty_like(z)
    return lambda: _tanh_sigmoid(z, out)


def _fastest_sigmoid_backward(g, s):
    out = np.empty_like(g)

    def run():
        np.subtract(1, s, out=out)
        np.multiply(out, s, out=out)
        return np.multiply(out, g, out=out)
    return run


FASTEST = {
    "mse_loss": _fastest_mse_loss,
    "mse_loss_grad": _fastest_mse_loss_grad,
    "mse_loss_and_grad": _fastest_mse_loss_and_grad,
    "binary_cross_entropy": _fastest_bce,
    "binary_cross_entropy_grad": _fastest_bce_grad,
    "binary_cross_entropy_and_grad": _fastest_bce_and_grad,
    "binary_cross_entropy_with_logits": _fastest_bce_logits,
    "binary_cross_entropy_with_logits_grad": _fastest_bce_logits_grad,
    "binary_cross_entropy_with_logits_and_grad": _fastest_bce_logits_and_grad,
    "sigmoid": _fastest_sigmoid,
    "sigmoid_backward": _fastest_sigmoid_backward,
}


# ---- multi-class: cross-entropy of (N, C) logits and int64 class indices ----------------------
# As a NumPy user writes it: log-softmax by the max-shifted log-sum-exp, the mean of the target
# entries; the gradient softmax - one_hot over N. One (N, C) temporary per step.
def _numpy_cross_entropy(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(shifted, y[:, None], axis=1)
    return np.mean(log_sum - picked)


def _numpy_cross_entropy_and_grad(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    picked = np.take_along_axis(shifted, y[:, None], axis=1)
    loss = np.mean(np.log(total) - picked)
    grad = e / total
    grad[np.arange(len(y)), y] -= 1
    grad /= len(y)
    return loss, grad


MULTICLASS = {
    "cross_entropy": lambda x, y: functools.partial(_numpy_cross_entropy, x, y),
    "cross_entropy_and_grad": lambda x, y: functools.partial(_numpy_cross_entropy_and_grad, x, y),
}
