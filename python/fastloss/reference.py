"""The readable specification: every fastloss function in NumPy float64.

These are slow and allocate freely; they define what the kernels must compute and are what the
tests compare against. Inputs of any float dtype are widened to float64 and results are float64
(a Python float for ``reduction='mean'|'sum'``). Broadcasting of ``weight``/``pos_weight`` and
``grad_output`` follows NumPy. The definitions match ``torch.nn.functional`` except where the
docstrings of ``fastloss`` say otherwise (BCE with logits at z = +-inf).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "mse_loss", "mse_loss_grad", "mse_loss_and_grad",
    "binary_cross_entropy", "binary_cross_entropy_grad", "binary_cross_entropy_and_grad",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_grad",
    "binary_cross_entropy_with_logits_and_grad",
    "sigmoid", "sigmoid_backward", "reduce", "exact_sum", "LOG_CLAMP", "GRAD_EPS",
    "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "cross_entropy", "cross_entropy_grad", "cross_entropy_and_grad",
    "tanh", "tanh_backward", "relu", "relu_backward",
]

LOG_CLAMP = -100.0  # PyTorch clamps each log of binary_cross_entropy here
GRAD_EPS = 1e-12  # and the gradient's denominator p*(1-p) here


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _weight(weight, shape):
    return np.ones(shape) if weight is None else np.broadcast_to(_f64(weight), shape)


def exact_sum(terms) -> float:
    """The correctly rounded float64 sum of ``terms`` (math.fsum): the accuracy yardstick."""
    return math.fsum(np.asarray(terms, dtype=np.float64).ravel())


def reduce(per_element, reduction="mean"):
    """'none' -> the array; 'sum' -> exact sum; 'mean' -> exact sum / count (NaN when empty)."""
    if reduction == "none":
        return per_element
    total = exact_sum(per_element)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / per_element.size if per_element.size else math.nan
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _grad_scale(reduction, n, grad_output):
    scale = _f64(grad_output)
    return scale / n if reduction == "mean" else scale


def _weighted_grad(g, weight, reduction, grad_output, factor=1.0):
    """g * weight * factor * grad_output [/ N], the weight scaled first as in the kernels: (g *
    weight) overflows float64 first where g is near 1e308 and the scale small. A constant
    factor (MSE's 2) joins the scale, as in PyTorch's ``2 / N * (input - target)``: so
    2 * (x - y) never overflows on its own, and subnormal results round once."""
    scale = factor * _grad_scale(reduction, g.size, grad_output)
    return g * (_weight(weight, g.shape) * scale)


def sigmoid(x):
    """1 / (1 + exp(-x)), from exp(-|x|) so that nothing overflows."""
    x = _f64(x)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def sigmoid_backward(grad_output, output):
    """grad_output * output * (1 - output), from sigmoid's output (no range check here)."""
    y = _f64(output)
    return _f64(grad_output) * (y * (1.0 - y))


# ---- mean squared error ----------------------------------------------------------------------
def mse_loss(input, target, weight=None, reduction="mean"):
    """reduce(weight * (input - target)**2)."""
    x, y = _f64(input), _f64(target)
    return reduce(_weight(weight, x.shape) * (x - y) ** 2, reduction)


def mse_loss_grad(input, target, weight=None, reduction="mean", grad_output=1.0):
    """2 * (input - target) * weight * grad_output, / N for 'mean'."""
    x, y = _f64(input), _f64(target)
    return _weighted_grad(x - y, weight, reduction, grad_output, factor=2.0)


def mse_loss_and_grad(input, target, weight=None, reduction="mean", grad_output=1.0):
    """(mse_loss(...), mse_loss_grad(...))."""
    return (mse_loss(input, target, weight, reduction),
            mse_loss_grad(input, target, weight, reduction, grad_output))


# ---- binary cross-entropy on probabilities ------------------------------------------------------
def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """reduce(-weight * (target * log(input) + (1 - target) * log(1 - input))), each log
    clamped at LOG_CLAMP (-100) like PyTorch."""
    p, y = _f64(input), _f64(target)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), LOG_CLAMP)
        log_1mp = np.maximum(np.log1p(-p), LOG_CLAMP)
    return reduce(-_weight(weight, p.shape) * (y * log_p + (1.0 - y) * log_1mp), reduction)


def binary_cross_entropy_grad(input, target, weight=None, reduction="mean", grad_output=1.0):
    """(input - target) / max(input * (1 - input), GRAD_EPS) * weight * grad_output, / N for
    'mean'."""
    p, y = _f64(input), _f64(target)
    g = (p - y) / np.maximum(p * (1.0 - p), GRAD_EPS)
    return _weighted_grad(g, weight, reduction, grad_output)


def binary_cross_entropy_and_grad(input, target, weight=None, reduction="mean", grad_output=1.0):
    """(binary_cross_entropy(...), binary_cross_entropy_grad(...))."""
    return (binary_cross_entropy(input, target, weight, reduction),
            binary_cross_entropy_grad(input, target, weight, reduction, grad_output))


# ---- binary cross-entropy on logits -------------------------------------------------------------
def _softplus(t):
    return np.logaddexp(0.0, t)


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None, reduction="mean"):
    """pos_weight*y*softplus(-z) + (1-y)*softplus(z), a term with coefficient 0 being 0 (z = +-inf)."""
    z, y = _f64(input), _f64(target)
    coef_neg = _weight(pos_weight, z.shape) * y
    coef_pos = 1.0 - y
    with np.errstate(invalid="ignore"):
        loss = (np.where(coef_neg == 0, 0.0, coef_neg * _softplus(-z))
                + np.where(coef_pos == 0, 0.0, coef_pos * _softplus(z)))
    return reduce(_weight(weight, z.shape) * loss, reduction)


def binary_cross_entropy_with_logits_grad(input, target, weight=None, pos_weight=None,
                                          reduction="mean", grad_output=1.0):
    """(pos_weight*y + 1 - y) * sigmoid(z) - pos_weight*y, evaluated from sigmoid(-|z|):
    the product and pos_weight*y cancel for z >> 0, which cost this yardstick its own accuracy
    (1e-14 absolute at pos_weight*y ~ 1e5, found by the property tests)."""
    z, y = _f64(input), _f64(target)
    coef_neg = _weight(pos_weight, z.shape) * y
    coef_total = coef_neg + (1.0 - y)  # (coef_neg + 1) - y would cancel where coef_neg is tiny
    with np.errstate(invalid="ignore"):
        g = np.where(z >= 0, (1.0 - y) - coef_total * sigmoid(-z),
                     coef_total * sigmoid(z) - coef_neg)
    return _weighted_grad(g, weight, reduction, grad_output)


def binary_cross_entropy_with_logits_and_grad(input, target, weight=None, pos_weight=None,
                                              reduction="mean", grad_output=1.0):
    """(binary_cross_entropy_with_logits(...), binary_cross_entropy_with_logits_grad(...))."""
    return (binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction),
            binary_cross_entropy_with_logits_grad(input, target, weight, pos_weight, reduction,
                                                  grad_output))


# ---- multi-class: softmax, log_softmax, cross-entropy ----------------------------------------
def _axis(x, dim):
    return dim % max(x.ndim, 1)  # a 0-d array is one row of one class


def log_softmax(input, dim=-1):
    """x - max - log(sum(exp(x - max))) along ``dim`` (NaN rows stay NaN, like PyTorch)."""
    x = _f64(input)
    axis = _axis(x, dim)
    if x.ndim == 0:
        x, axis = x.reshape(1), 0
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=axis, keepdims=True) if x.size else x
        shifted = x - m
        result = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return result.reshape(np.shape(input))


def softmax(input, dim=-1):
    """softmax along ``dim`` in float64: exp of ``log_softmax``."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.exp(log_softmax(input, dim))


def softmax_backward(grad_output, output, dim=-1):
    """d softmax from its output y: y * (g - sum(g * y)) along ``dim`` (PyTorch's)."""
    g, y = _f64(grad_output), _f64(output)
    axis = _axis(y, dim) if y.ndim else None
    return y * (g - np.sum(g * y, axis=axis, keepdims=True))


def log_softmax_backward(grad_output, output, dim=-1):
    """d log_softmax from its output y: g - exp(y) * sum(g) along ``dim`` (PyTorch's)."""
    g, y = _f64(grad_output), _f64(output)
    axis = _axis(y, dim) if y.ndim else None
    return g - np.exp(y) * np.sum(g, axis=axis, keepdims=True)


def _class_coefficients(input, target, weight, ignore_index, label_smoothing):
    """(log-probabilities with the classes last, a, row divisor weights) of cross_entropy: the
    loss of a row is -sum_c a_c * logp_c; the 'mean' divides the sum by the divisor weights'
    sum (the weights of the non-ignored class indices; 1 per row for probabilities)."""
    x = _f64(input)
    if x.ndim == 1:
        x = x[None]
        target = np.asarray(target)[None]
    classes = x.shape[1]
    logp = np.moveaxis(log_softmax(x, 1), 1, -1)  # (N, d1, ..., C)
    w = np.ones(classes) if weight is None else _f64(weight)
    eps = float(label_smoothing)
    target = np.asarray(target)
    if target.dtype.kind in "iu":
        index = target.astype(np.int64)
        ignored = index == ignore_index
        safe = np.where(ignored, 0, index)
        one_hot = np.zeros(logp.shape)
        np.put_along_axis(one_hot, safe[..., None], 1.0, axis=-1)
        a = w * ((1.0 - eps) * one_hot + eps / classes)
        a = np.where(ignored[..., None], 0.0, a)
        divisor = np.where(ignored, 0.0, w[safe])
    else:
        probabilities = np.moveaxis(_f64(target), 1, -1)
        a = w * ((1.0 - eps) * probabilities + eps / classes)
        divisor = np.ones(logp.shape[:-1])
    return logp, a, divisor


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """PyTorch's cross_entropy: class indices (int) or probabilities (input's shape) as
    target, class weights, ignore_index, label_smoothing; 'mean' divides by the summed weights
    of the non-ignored targets (by the row count for probability targets)."""
    logp, a, divisor = _class_coefficients(input, target, weight, ignore_index, label_smoothing)
    with np.errstate(invalid="ignore"):
        terms = -np.sum(np.where(a == 0, 0.0, a * logp), axis=-1)
    if np.ndim(input) == 1:
        terms = terms[0]
    if reduction == "mean":
        total = exact_sum(terms)
        count = exact_sum(divisor)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.float64(total) / np.float64(count))
    return reduce(np.asarray(terms), reduction)


def cross_entropy_grad(input, target, weight=None, ignore_index=-100, reduction="mean",
                       label_smoothing=0.0, grad_output=1.0):
    """d cross_entropy / d input: (sum_c a_c) * softmax - a per row, times grad_output (per
    row for reduction='none') [/ the mean's divisor]."""
    logp, a, divisor = _class_coefficients(input, target, weight, ignore_index, label_smoothing)
    p = np.exp(logp)
    scale = _f64(grad_output)
    if reduction == "mean":
        with np.errstate(divide="ignore"):
            scale = scale / exact_sum(divisor)
    scale = np.broadcast_to(scale, logp.shape[:-1])  # a 0-d scale, or one per row
    total = np.sum(a, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        # an ignored row's gradient is 0, also where the mean's divisor is 0 (all ignored)
        g = np.where(total == 0, 0.0, (total * p - a) * scale[..., None])
    g = np.moveaxis(g, -1, 1)
    return g[0] if np.ndim(input) == 1 else g


def cross_entropy_and_grad(input, target, weight=None, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0, grad_output=1.0):
    """(cross_entropy(...), cross_entropy_grad(...)) in float64."""
    return (cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing),
            cross_entropy_grad(input, target, weight, ignore_index, reduction, label_smoothing,
                               grad_output))


# ---- activations -------------------------------------------------------------------------------
def tanh(x):
    """tanh in float64."""
    return np.tanh(_f64(x))


def tanh_backward(grad_output, output):
    """d tanh from its output y: grad_output * (1 - y**2), in float64."""
    y = _f64(output)
    return _f64(grad_output) * (1.0 - y * y)


def relu(x):
    """0 where x < 0, else x (NaN and -0.0 pass through, as in PyTorch)."""
    x = _f64(x)
    return np.where(x < 0, 0.0, x)


def relu_backward(grad_output, output):
    """grad_output where the output is positive (or NaN), else 0: PyTorch's threshold_backward."""
    y = _f64(output)
    return np.where(y <= 0, 0.0, _f64(grad_output))
