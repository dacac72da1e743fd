"""The loss functions over Dask arrays (fastloss._dask), on the threaded scheduler and on a real
two-process distributed.LocalCluster: the reduced losses have the in-memory result's bits for
any chunking (ragged blocks, blocks smaller than the kernels' 8192-element chunk), 'none' and
the gradients equal it element for element."""

from __future__ import annotations

import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest

import fastloss
from _helpers import BCE, LOGITS, MSE, OPS, assert_same_bits, make_inputs, seed_for

SHAPE = (2500, 9)  # 22500 elements: three of the kernels' chunks in memory
CHUNKINGS = {
    "rows-1000": (1000, 9),  # 9000-element blocks, the last of 4500: ragged
    "small-ragged": (333, 4),  # 1332-element blocks, ragged along both axes
    "irregular": ((1, 1200, 1299), (2, 7)),  # a 2-element block beside large ones
}
FUNCTIONS = ("loss", "grad", "and_grad")


def _case(op, dtype, weighted):
    rng = np.random.default_rng(seed_for("dask", op.name, np.dtype(dtype).name, weighted))
    x, y = make_inputs(op.name, SHAPE, dtype, rng, soft=True)
    kw = {}
    if weighted:
        kw["weight"] = rng.uniform(0.5, 2.0, SHAPE[-1]).astype(dtype)
        if op.has_pos_weight:
            kw["pos_weight"] = rng.uniform(0.5, 3.0, SHAPE[-1]).astype(dtype)
    return x, y, kw


def _call(op, function, x, y, reduction, kw):
    f = {"loss": op.loss, "grad": op.grad, "and_grad": op.and_grad}[function]
    return f(x, y, reduction=reduction, **kw)


def _check(op, function, reduction, x, y, kw, chunks, compute):
    expected = _call(op, function, x, y, reduction, kw)
    lazy = _call(op, function, da.from_array(x, chunks=chunks), da.from_array(y, chunks=chunks),
                 reduction, kw)
    what = f"{op.name} {function} {reduction} {chunks}"
    if function == "and_grad":
        assert all(isinstance(part, da.Array) for part in lazy)
        got_loss, got_grad = compute(*lazy)
        expected_loss, expected_grad = expected
        assert_same_bits(got_grad, expected_grad, what + " (grad)")
        assert lazy[1].chunks == da.from_array(x, chunks=chunks).chunks
    else:
        assert isinstance(lazy, da.Array)
        (got_loss,) = compute(lazy)
        expected_loss = expected
    if reduction != "none" and function != "grad":
        assert lazy[0].shape == () if function == "and_grad" else lazy.shape == ()
    assert_same_bits(got_loss, expected_loss, what)


@pytest.fixture
def threaded():
    with dask.config.set(scheduler="threads", num_workers=3):
        yield dask.compute


@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_threaded_scheduler_gives_the_in_memory_bits(threaded, op, function, dtype, chunks):
    x, y, kw = _case(op, dtype, weighted=True)
    for reduction in ("mean", "sum", "none"):
        _check(op, function, reduction, x, y, kw, chunks, threaded)


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_unweighted_and_one_block(threaded, op):
    x, y, kw = _case(op, np.float32, weighted=False)
    for chunks in (SHAPE, (17, 9)):
        for function in FUNCTIONS:
            _check(op, function, "mean", x, y, kw, chunks, threaded)


def test_importing_fastloss_does_not_import_dask():
    code = ("import sys, numpy as np, fastloss, fastloss.training; "
            "fastloss.mse_loss(np.ones(3), np.zeros(3)); print('dask' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_empty_and_zero_dimensional_arrays(threaded):
    for shape in ((0,), (0, 3), ()):
        x = np.full(shape, 0.25)
        y = np.zeros(shape)
        X, Y = da.from_array(x), da.from_array(y)
        for reduction in ("mean", "sum", "none"):
            got_loss, got_grad = threaded(*fastloss.mse_loss_and_grad(X, Y, reduction=reduction))
            loss, grad = fastloss.mse_loss_and_grad(x, y, reduction=reduction)
            assert_same_bits(got_loss, loss, f"{shape} {reduction}")
            assert_same_bits(got_grad, grad, f"{shape} {reduction} grad")


def test_reduced_loss_is_lazy_and_zero_dimensional():
    x, y, _ = _case(MSE, np.float32, weighted=False)
    loss = fastloss.mse_loss(da.from_array(x, chunks=1000), da.from_array(y, chunks=1000))
    assert isinstance(loss, da.Array) and loss.shape == () and loss.dtype == np.float32


def test_grad_output_scales_and_arrays(threaded):
    x, y, kw = _case(LOGITS, np.float64, weighted=True)
    X, Y = da.from_array(x, chunks=(700, 5)), da.from_array(y, chunks=(700, 5))
    g = np.random.default_rng(3).standard_normal(SHAPE)
    for grad_output in (0.25, g, da.from_array(g, chunks=(300, 9))):
        (got,) = threaded(fastloss.binary_cross_entropy_with_logits_grad(
            X, Y, reduction="none", grad_output=grad_output, **kw))
        assert_same_bits(got, fastloss.binary_cross_entropy_with_logits_grad(
            x, y, reduction="none", grad_output=g if not isinstance(grad_output, float)
            else grad_output, **kw))
    (got,) = threaded(fastloss.binary_cross_entropy_with_logits_grad(X, Y, grad_output=3.0))
    assert_same_bits(got, fastloss.binary_cross_entropy_with_logits_grad(x, y, grad_output=3.0))


def test_dask_weight_and_column_weight(threaded):
    x, y, _ = _case(MSE, np.float64, weighted=False)
    X, Y = da.from_array(x, chunks=(600, 4)), da.from_array(y, chunks=(600, 4))
    column = np.random.default_rng(4).uniform(0.5, 2.0, (SHAPE[0], 1))
    for weight in (column, da.from_array(column, chunks=(1000, 1))):
        (got,) = threaded(fastloss.mse_loss(X, Y, weight=weight))
        assert_same_bits(got, fastloss.mse_loss(x, y, weight=column))


def test_the_same_bits_for_many_random_chunkings(threaded):
    x, y, _ = _case(BCE, np.float32, weighted=False)
    expected = fastloss.binary_cross_entropy(x, y, reduction="sum")
    rng = np.random.default_rng(5)
    for _ in range(6):
        cuts = np.sort(rng.choice(np.arange(1, SHAPE[0]), size=int(rng.integers(1, 40)),
                                  replace=False))
        rows = tuple(int(b - a) for a, b in zip(np.r_[0, cuts], np.r_[cuts, SHAPE[0]]))
        X, Y = da.from_array(x, chunks=(rows, 9)), da.from_array(y, chunks=(rows, 9))
        (got,) = threaded(fastloss.binary_cross_entropy(X, Y, reduction="sum"))
        assert_same_bits(got, expected, f"rows {rows}")


def test_target_chunked_otherwise_is_rechunked(threaded):
    x, y, _ = _case(MSE, np.float32, weighted=False)
    (got,) = threaded(fastloss.mse_loss(da.from_array(x, chunks=(500, 9)),
                                        da.from_array(y, chunks=(333, 2))))
    assert_same_bits(got, fastloss.mse_loss(x, y))


def test_mixed_families_are_a_type_error():
    x, y, _ = _case(MSE, np.float32, weighted=False)
    X = da.from_array(x, chunks=1000)
    with pytest.raises(TypeError, match="Dask arrays"):
        fastloss.mse_loss(X, y)
    with pytest.raises(TypeError, match="Dask arrays"):
        fastloss.mse_loss(x, da.from_array(y, chunks=1000))
    with pytest.raises(TypeError, match="float64"):
        fastloss.mse_loss(X, da.from_array(y.astype(np.float64), chunks=1000))
    with pytest.raises(ValueError, match="shape"):
        fastloss.mse_loss(X, da.from_array(y[:10], chunks=5))
    with pytest.raises(TypeError, match="out="):
        fastloss.mse_loss_grad(X, X, out=np.empty_like(x))


def test_unknown_chunk_sizes_are_refused_by_name():
    x = da.from_array(np.arange(10.0), chunks=3)
    unknown = x[x > 2]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fastloss.mse_loss(unknown, unknown)


def test_probability_out_of_range_raises_at_compute(threaded):
    x = np.full((100,), 0.5, dtype=np.float32)
    x[77] = 1.5
    loss = fastloss.binary_cross_entropy(da.from_array(x, chunks=30),
                                         da.from_array(np.ones_like(x), chunks=30))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        threaded(loss)


def test_sigmoid_blocks(threaded):
    x = np.random.default_rng(6).standard_normal(SHAPE).astype(np.float32)
    X = da.from_array(x, chunks=(400, 5))
    s = fastloss.sigmoid(x)
    (got, back) = threaded(fastloss.sigmoid(X), fastloss.sigmoid_backward(X, da.from_array(s, chunks=900)))
    assert_same_bits(got, s)
    assert_same_bits(back, fastloss.sigmoid_backward(x, s))


# ---- a real cluster: two worker processes ------------------------------------------------------
def _on(client):
    return lambda *lazy: tuple(client.compute(list(lazy), sync=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_local_cluster_gives_the_in_memory_bits(cluster, op, dtype):
    x, y, kw = _case(op, dtype, weighted=True)
    for chunks in CHUNKINGS.values():
        for function in FUNCTIONS:
            for reduction in ("mean", "sum", "none"):
                _check(op, function, reduction, x, y, kw, chunks, _on(cluster))
    # the blocks ran in the two worker processes, through their own fastloss._cpu
    isas = cluster.run(lambda: __import__("fastloss")._cpu.build_info()["isa"])
    assert len(isas) == 2 and set(isas.values()) == {fastloss._cpu.build_info()["isa"]}
