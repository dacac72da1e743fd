"""build_info(), and sizes at the serial/parallel threshold and at chunk boundaries."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
import fastloss._cpu
from _helpers import (
    DTYPES,
    OPS,
    assert_elementwise_close,
    make_inputs,
    seed_for,
)
from fastloss import reference as R

INFO = fastloss._cpu.build_info()
CHUNK = INFO["chunk_size"]
THRESHOLD = INFO["parallel_threshold"]


def test_build_info_keys_and_values():
    info = fastloss._cpu.build_info()
    for key in ("compiler", "isa", "openmp", "max_threads", "forked_child", "chunk_size",
                "parallel_threshold"):
        assert key in info, key
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["isa"], str) and info["isa"]
    assert isinstance(info["openmp"], bool)
    assert info["forked_child"] is False
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    assert isinstance(info["chunk_size"], int) and info["chunk_size"] > 0
    assert isinstance(info["parallel_threshold"], int) and info["parallel_threshold"] > 0


SIZES = sorted({1, 15, 16, 17, 255, 256, 257, 4095, 4096, 4097,
                CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5,
                THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, THRESHOLD + CHUNK + 3})


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_sizes_around_chunk_and_threshold(op, dtype, n, weighted):
    rng = np.random.default_rng(seed_for("sizes", op.name, np.dtype(dtype).name, n, weighted))
    x, y = make_inputs(op.name, (n,), dtype, rng, soft=True)
    # an odd period, so weight segments cross tile and chunk boundaries at odd places
    w = rng.uniform(0.5, 2, size=n).astype(dtype) if weighted else None
    pw = rng.uniform(0.5, 3, size=n).astype(dtype) if weighted and op.has_pos_weight else None
    for reduction in ("mean", "sum", "none"):
        loss = op.call_loss(x, y, w, pw, reduction)
        op.check_loss(loss, x, y, w, pw, reduction, what=f"n={n} {reduction} loss")
        grad = op.call_grad(x, y, w, pw, reduction, grad_output=1.5)
        op.check_grad(grad, x, y, w, pw, reduction, 1.5, what=f"n={n} {reduction} grad")
        fused, fused_grad = op.call_and_grad(x, y, w, pw, reduction, grad_output=1.5)
        op.check_loss(fused, x, y, w, pw, reduction, what=f"n={n} {reduction} and_grad loss")
        op.check_grad(fused_grad, x, y, w, pw, reduction, 1.5,
                      what=f"n={n} {reduction} and_grad grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", SIZES)
def test_sigmoid_sizes_around_chunk_and_threshold(dtype, n):
    rng = np.random.default_rng(seed_for("sigmoid-sizes", np.dtype(dtype).name, n))
    x = (rng.standard_normal(n) * 40).astype(dtype)  # saturation and the subnormal tail too
    s = fastloss.sigmoid(x)
    assert_elementwise_close(s, R.sigmoid(x), dtype, what=f"n={n} sigmoid")
    g = rng.standard_normal(n).astype(dtype)
    assert_elementwise_close(fastloss.sigmoid_backward(g, s), R.sigmoid_backward(g, s), dtype,
                             what=f"n={n} sigmoid_backward")


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("period", [3, 7, 1000, 4099])
def test_periodic_weight_across_chunks(op, period):
    """A (C,) weight whose period does not divide the chunk size, over many chunks."""
    rows = (3 * CHUNK + 5) // period + 2
    shape = (rows, period)
    rng = np.random.default_rng(seed_for("period", op.name, period))
    x, y = make_inputs(op.name, shape, np.float64, rng, soft=True)
    w = rng.uniform(0.5, 2, size=period)
    pw = rng.uniform(0.5, 2, size=period) if op.has_pos_weight else None
    for reduction in ("sum", "none"):
        op.check_loss(op.call_loss(x, y, w, pw, reduction), x, y, w, pw, reduction)
    op.check_grad(op.call_grad(x, y, w, pw, "none"), x, y, w, pw, "none")


def test_sixteen_element_call_values():
    x = np.arange(16, dtype=np.float32) / 4
    y = np.ones(16, dtype=np.float32)
    # sum of (k/4 - 1)^2 for k = 0..15 = sum((k - 4)^2) / 16 = (30 + 506) / 16 = 536 / 16
    assert fastloss.mse_loss(x, y, reduction="sum") == np.float32(536 / 16)
    assert fastloss.mse_loss(x, y) == np.float32(536 / 16 / 16)
    np.testing.assert_array_equal(fastloss.mse_loss_grad(x, y, reduction="sum"),
                                  (2 * (x.astype(np.float64) - 1)).astype(np.float32))
    p = np.full(16, 0.5, dtype=np.float64)
    assert fastloss.binary_cross_entropy(p, np.ones(16)) == pytest.approx(np.log(2), rel=1e-15)
    assert fastloss.binary_cross_entropy_with_logits(np.zeros(16), np.ones(16)) == pytest.approx(
        np.log(2), rel=1e-15)
