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


def _weighted_grad(g, weight, reduction, grad_output):
    """g * weight * grad_output [/ N], the weight scaled first as in the kernels: (g * weight)
    overflows float64 first where g is near 1e308 and the scale small."""
    return g * (_weight(weight, g.shape) * _grad_scale(reduction, g.size, grad_output))


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
    return _weighted_grad(2.0 * (x - y), weight, reduction, grad_output)


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
