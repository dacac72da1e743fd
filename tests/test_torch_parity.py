"""Values and gradients agree with torch.nn.functional (gradients through autograd)."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
from _helpers import LOGITS, make_inputs, seed_for

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
DTYPES = (np.float32, np.float64)
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
# Absolute slack per element, as a fraction of the size of the terms that element is computed
# from (never of the array's largest value): torch's formulas cancel where ours do not (its
# logits loss adds (1 - y)*z to softplus(-z), its gradient is sigmoid(z) - y).
ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}
# The small shape is served by the serial path, the large one (> 32768 elements) by the
# parallel one.
SHAPES = [(37, 11), (3001, 13)]
shape_ids = lambda shape: "x".join(map(str, shape))  # noqa: E731


def _close(ours, theirs, dtype, what, term_size=0.0, extra_atol=0.0):
    dtype = np.dtype(dtype)
    ours = np.asarray(ours)
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    atol = ATOL[dtype] * np.broadcast_to(term_size, ours.shape) + extra_atol
    ours64, theirs64 = ours.astype(np.float64), theirs.astype(np.float64)
    bad = ~(np.abs(ours64 - theirs64) <= atol + RTOL[dtype] * np.abs(theirs64))
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[0]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements differ; first at "
                             f"flat index {i}: ours {ours64.reshape(-1)[i]!r}, torch's "
                             f"{theirs64.reshape(-1)[i]!r}")


def _logits_loss_term_size(z, y, w, pw):
    """|weight| * (|pos_weight*y| + |1 - y|) * (|z| + 1): the size of the parts of torch's
    logits loss, whose (1 - y)*z and max(-z, 0) cancel."""
    coefficients = LOGITS.grad_term_size(z, y, w, pw, "sum", 1.0)
    return coefficients * (np.abs(z.astype(np.float64)) + 1.0)


def _leaf(a):
    return torch.from_numpy(a.copy()).requires_grad_(True)


def _backward(loss, reduction, grad_output):
    if reduction == "none":
        loss.backward(torch.from_numpy(grad_output))
    else:
        loss.backward(torch.tensor(grad_output, dtype=loss.dtype))


def _grad_output(reduction, dtype, rng, shape):
    if reduction == "none":
        return rng.uniform(-1.5, 1.5, size=shape).astype(dtype)
    return 0.75


@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss(dtype, reduction, shape):
    rng = np.random.default_rng(seed_for("torch-mse", np.dtype(dtype).name, reduction, shape))
    x, y = make_inputs("mse", shape, dtype, rng)
    go = _grad_output(reduction, dtype, rng, shape)
    xt = _leaf(x)
    loss_t = F.mse_loss(xt, torch.from_numpy(y), reduction=reduction)
    _backward(loss_t, reduction, go)
    _close(fastloss.mse_loss(x, y, reduction=reduction), loss_t, dtype, "mse value")
    _close(fastloss.mse_loss_grad(x, y, reduction=reduction, grad_output=go), xt.grad, dtype,
           "mse grad")
    loss, grad = fastloss.mse_loss_and_grad(x, y, reduction=reduction, grad_output=go)
    _close(grad, xt.grad, dtype, "mse and_grad grad")
    if reduction != "none":
        _close(loss, loss_t, dtype, "mse and_grad value")


@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", [None, "trailing", "full"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_binary_cross_entropy(dtype, reduction, weight_kind, soft, shape):
    rng = np.random.default_rng(seed_for("torch-bce", np.dtype(dtype).name, reduction,
                                         weight_kind, soft, shape))
    p, y = make_inputs("bce", shape, dtype, rng, soft=soft)  # includes exact 0.0 and 1.0
    wshape = shape[-1:] if weight_kind == "trailing" else shape
    w = None if weight_kind is None else rng.uniform(0.5, 2.0, size=wshape).astype(dtype)
    go = _grad_output(reduction, dtype, rng, shape)
    pt = _leaf(p)
    loss_t = F.binary_cross_entropy(pt, torch.from_numpy(y),
                                    weight=None if w is None else torch.from_numpy(w),
                                    reduction=reduction)
    _backward(loss_t, reduction, go)
    _close(fastloss.binary_cross_entropy(p, y, weight=w, reduction=reduction), loss_t, dtype,
           "bce value")
    grad = fastloss.binary_cross_entropy_grad(p, y, weight=w, reduction=reduction, grad_output=go)
    grad_t = pt.grad.numpy()
    # Where p is exactly 0 or 1 the denominator p(1-p) is clamped. PyTorch's CPU kernel clamps
    # at float(1e-12) = 9.9999998e-13 even in float64 (fastloss and its reference: 1e-12), a
    # 4e-9 relative difference: compare those elements at rtol 1e-8, the rest at full precision.
    saturated = (p == 0) | (p == 1)
    assert saturated.any() and (~saturated).any()
    _close(grad[~saturated], torch.from_numpy(grad_t[~saturated]), dtype, "bce grad")
    np.testing.assert_allclose(grad[saturated], grad_t[saturated],
                               rtol=max(RTOL[np.dtype(dtype)], 1e-8), atol=0,
                               err_msg="bce grad at p in {0, 1}")
    _, fused_grad = fastloss.binary_cross_entropy_and_grad(p, y, weight=w, reduction=reduction,
                                                           grad_output=go)
    _close(fused_grad[~saturated], torch.from_numpy(grad_t[~saturated]), dtype,
           "bce and_grad grad")
    np.testing.assert_allclose(fused_grad[saturated], grad_t[saturated],
                               rtol=max(RTOL[np.dtype(dtype)], 1e-8), atol=0,
                               err_msg="bce and_grad grad at p in {0, 1}")


@pytest.mark.parametrize("shape", SHAPES, ids=shape_ids)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [None, "(C,)", "full"],
                         ids=["plain", "weight(C,)+pos_weight(C,)", "weight(B,C)+pos_weight(C,)"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_binary_cross_entropy_with_logits(dtype, reduction, weighted, soft, shape):
    rng = np.random.default_rng(seed_for("torch-logits", np.dtype(dtype).name, reduction,
                                         weighted, soft, shape))
    z, y = make_inputs("logits", shape, dtype, rng, soft=soft)
    wshape = shape if weighted == "full" else shape[-1:]
    w = rng.uniform(0.5, 2.0, size=wshape).astype(dtype) if weighted else None
    pw = rng.uniform(0.5, 3.0, size=shape[-1:]).astype(dtype) if weighted else None
    go = _grad_output(reduction, dtype, rng, shape)
    zt = _leaf(z)
    loss_t = F.binary_cross_entropy_with_logits(
        zt, torch.from_numpy(y), weight=None if w is None else torch.from_numpy(w),
        pos_weight=None if pw is None else torch.from_numpy(pw), reduction=reduction)
    _backward(loss_t, reduction, go)
    kw = dict(weight=w, pos_weight=pw, reduction=reduction)
    loss_terms = _logits_loss_term_size(z, y, w, pw)
    if reduction != "none":
        loss_terms = np.sum(loss_terms) / (z.size if reduction == "mean" else 1)
    grad_terms = LOGITS.grad_term_size(z, y, w, pw, reduction, go)
    _close(fastloss.binary_cross_entropy_with_logits(z, y, **kw), loss_t, dtype, "logits value",
           loss_terms)
    _close(fastloss.binary_cross_entropy_with_logits_grad(z, y, grad_output=go, **kw), zt.grad,
           dtype, "logits grad", grad_terms)
    _, grad = fastloss.binary_cross_entropy_with_logits_and_grad(z, y, grad_output=go, **kw)
    _close(grad, zt.grad, dtype, "logits and_grad grad", grad_terms)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_logits_at_large_finite_values_match_torch(dtype):
    z = np.array([-80.0, -30.0, -1e4, 30.0, 80.0, 1e4, 0.0], dtype=dtype)
    for label in (0.0, 0.3, 1.0):
        y = np.full_like(z, label)
        zt = _leaf(z)
        loss_t = F.binary_cross_entropy_with_logits(zt, torch.from_numpy(y), reduction="none")
        loss_t.sum().backward()
        _close(fastloss.binary_cross_entropy_with_logits(z, y, reduction="none"), loss_t, dtype,
               f"logits value y={label}", _logits_loss_term_size(z, y, None, None))
        _close(fastloss.binary_cross_entropy_with_logits_grad(z, y, reduction="none"), zt.grad,
               dtype, f"logits grad y={label}", LOGITS.grad_term_size(z, y, reduction="none"))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sigmoid_and_backward(dtype):
    rng = np.random.default_rng(seed_for("torch-sigmoid", np.dtype(dtype).name))
    x = np.concatenate([rng.standard_normal(5000) * 8, np.linspace(-60, 60, 1001)]).astype(dtype)
    go = rng.standard_normal(x.size).astype(dtype)
    xt = _leaf(x)
    st = torch.sigmoid(xt)
    st.backward(torch.from_numpy(go))
    s = fastloss.sigmoid(x)
    _close(s, st, dtype, "sigmoid")
    # sigmoid_backward takes the forward output, like torch's
    _close(fastloss.sigmoid_backward(go, st.detach().numpy()), xt.grad, dtype,
           "sigmoid_backward from torch's output")
    # from our own output: torch's differs from it by up to ~2 float32 ulps, and 1 - y
    # magnifies that where y is near 1: allowed, per element, |g| * |our y - torch's y|
    difference = np.abs(s.astype(np.float64) - st.detach().numpy().astype(np.float64))
    _close(fastloss.sigmoid_backward(go, s), xt.grad, dtype, "sigmoid_backward from ours",
           extra_atol=np.abs(go.astype(np.float64)) * difference)
