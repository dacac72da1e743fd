"""cross_entropy, the softmax family, tanh and relu over Dask arrays (fastloss._dask), on the
threaded scheduler and on a real two-process distributed.LocalCluster: a reduced cross-entropy
has the in-memory result's bits for any chunking of the rows (blocks smaller than the kernels'
chunk of rows, ragged ones, the class axis split: rechunked), 'none', the gradients and the
row functions equal it element for element. What makes that possible is tested first: a row's
results do not depend on which other rows are in the same call."""

from __future__ import annotations

import dask
import dask.array as da
import fastloss
import numpy as np
import pytest
from _helpers import assert_same_bits, seed_for

ROWS, CLASSES = 2000, 13  # 630 rows per kernel chunk in memory: three chunks and a ragged one
CHUNKINGS = {
    "rows-700": (700, CLASSES),
    "small-ragged": (97, 5),  # blocks far below a kernel chunk; the classes split (rechunked)
    "irregular": ((1, 1500, 499), (CLASSES,)),
}
TARGETS = ("int64", "int32", "probabilities")
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "ignore": {"ignore_index": 3},
}
FUNCTIONS = {"loss": fastloss.cross_entropy, "grad": fastloss.cross_entropy_grad,
             "and_grad": fastloss.cross_entropy_and_grad}


def _case(dtype, target_kind, option, shape=(ROWS, CLASSES)):
    rng = np.random.default_rng(seed_for("dask-ce", np.dtype(dtype).name, target_kind, option))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    loss_shape = shape[:1] + shape[2:]
    kw = dict(OPTIONS[option])
    if target_kind == "probabilities":
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, shape[1], loss_shape).astype(target_kind)
        t.reshape(-1)[::11] = kw.get("ignore_index", -100)  # ignored rows
    if kw.pop("weight", False):
        kw["weight"] = rng.uniform(0.25, 3.0, shape[1]).astype(dtype)
    return x, t, kw


def _lazy(array, chunks):
    return da.from_array(array, chunks=chunks[:array.ndim] if array.ndim else ())


def _check(function, reduction, x, t, kw, chunks, compute):
    f = FUNCTIONS[function]
    expected = f(x, t, reduction=reduction, **kw)
    lazy = f(_lazy(x, chunks), _lazy(t, chunks if t.ndim == x.ndim else chunks[:1] + chunks[2:]),
             reduction=reduction, **kw)
    what = f"{function} {reduction} {chunks} {sorted(kw)}"
    if function == "and_grad":
        got_loss, got_grad = compute(*lazy)
        assert_same_bits(got_grad, expected[1], what + " (grad)")
        assert_same_bits(got_loss, expected[0], what)
    else:
        (got,) = compute(lazy)
        assert_same_bits(got, expected, what)


@pytest.fixture
def threaded():
    with dask.config.set(scheduler="threads", num_workers=3):
        yield dask.compute


def test_a_rows_results_do_not_depend_on_the_other_rows_of_the_call():
    """The in-memory property the Dask blocks rely on: any split of the rows into calls gives
    the same per-row losses and gradients, bit for bit (the short-row kernel exps each row
    against its own target logit, not against a max shared by the rows of a tile)."""
    rng = np.random.default_rng(seed_for("ce-row-independence"))
    for classes in (2, 3, 10, 64, 65):
        x = (rng.standard_normal((3000, classes)) * 5).astype(np.float32)
        x[7] += 60.0  # a row far above the others (it set the shared max of its tile before)
        x[8] -= 80.0
        t = rng.integers(0, classes, 3000)
        whole_loss = fastloss.cross_entropy(x, t, reduction="none")
        whole_grad = fastloss.cross_entropy_grad(x, t, reduction="sum")
        cuts = np.sort(rng.choice(np.arange(1, 3000), 9, replace=False))
        parts = np.split(np.arange(3000), cuts)
        assert_same_bits(np.concatenate([fastloss.cross_entropy(x[p], t[p], reduction="none")
                                         for p in parts]), whole_loss, f"C={classes} loss")
        assert_same_bits(np.concatenate([fastloss.cross_entropy_grad(x[p], t[p], reduction="sum")
                                         for p in parts]), whole_grad, f"C={classes} grad")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_scheduler_gives_the_in_memory_bits(threaded, dtype, target_kind, option):
    if target_kind == "probabilities" and option == "ignore":
        pytest.skip("ignore_index applies to class indices only")
    x, t, kw = _case(dtype, target_kind, option)
    for chunks in CHUNKINGS.values():
        for function in FUNCTIONS:
            for reduction in ("mean", "sum", "none"):
                _check(function, reduction, x, t, kw, chunks, threaded)


def test_reduced_loss_is_a_lazy_scalar_and_the_gradient_keeps_the_row_chunks(threaded):
    x, t, _ = _case(np.float32, "int64", "plain")
    lazy = fastloss.cross_entropy(da.from_array(x, chunks=(500, 13)), da.from_array(t, chunks=500))
    assert isinstance(lazy, da.Array) and lazy.shape == () and lazy.dtype == np.float32
    _, grad = fastloss.cross_entropy_and_grad(da.from_array(x, chunks=(500, 13)),
                                              da.from_array(t, chunks=300))
    assert grad.chunks == ((500,) * 4, (13,))
    none = fastloss.cross_entropy(da.from_array(x, chunks=(500, 13)),
                                  da.from_array(t, chunks=500), reduction="none")
    assert none.shape == (ROWS,) and none.chunks == ((500,) * 4,)


def test_spatial_and_single_row_inputs(threaded):
    rng = np.random.default_rng(seed_for("dask-ce-shapes"))
    x = rng.standard_normal((9, 5, 4, 3)).astype(np.float32)
    t = rng.integers(0, 5, (9, 4, 3))
    grad_rows = rng.random((9, 4, 3)).astype(np.float32)
    for chunks in ((4, 2, 3, 1), (9, 5, 4, 3)):
        for function in FUNCTIONS:
            for reduction in ("mean", "sum", "none"):
                _check(function, reduction, x, t, {}, chunks, threaded)
        lazy_grad = fastloss.cross_entropy_grad(
            _lazy(x, chunks), da.from_array(t, chunks=(2, 2, 1)), reduction="none",
            grad_output=da.from_array(grad_rows, chunks=(3, 4, 3)))
        assert_same_bits(lazy_grad.compute(),
                         fastloss.cross_entropy_grad(x, t, reduction="none", grad_output=grad_rows),
                         f"array grad_output {chunks}")
    one = rng.standard_normal(11)
    for reduction in ("mean", "sum", "none"):
        expected = fastloss.cross_entropy_and_grad(one, np.array(4), reduction=reduction)
        got = dask.compute(*fastloss.cross_entropy_and_grad(
            da.from_array(one, chunks=4), da.from_array(np.array(4)), reduction=reduction))
        assert got[1].shape == (11,) and np.shape(got[0]) == ()
        assert_same_bits(got[0], expected[0], f"(C,) {reduction}")
        assert_same_bits(got[1], expected[1], f"(C,) {reduction} grad")


def test_every_target_ignored_gives_nan_as_in_memory(threaded):
    x, t, _ = _case(np.float32, "int64", "plain")
    t[:] = -100
    expected = fastloss.cross_entropy_and_grad(x, t)
    got = dask.compute(*fastloss.cross_entropy_and_grad(da.from_array(x, chunks=(300, 13)),
                                                        da.from_array(t, chunks=300)))
    assert np.isnan(got[0]) and np.isnan(expected[0])
    assert_same_bits(got[1], expected[1], "grad of an all-ignored mean")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_functions_and_activations(threaded, dtype):
    rng = np.random.default_rng(seed_for("dask-rows", np.dtype(dtype).name))
    x = (rng.standard_normal((300, 7, 5)) * 3).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    lazy_x, lazy_g = da.from_array(x, chunks=(64, 3, 2)), da.from_array(g, chunks=(100, 7, 5))
    for dim in (0, 1, -1):
        for forward, backward in ((fastloss.softmax, fastloss.softmax_backward),
                                  (fastloss.log_softmax, fastloss.log_softmax_backward)):
            y = forward(x, dim=dim)
            assert_same_bits(forward(lazy_x, dim=dim).compute(), y, f"{forward.__name__} {dim}")
            assert_same_bits(backward(lazy_g, forward(lazy_x, dim=dim), dim=dim).compute(),
                             backward(g, y, dim=dim), f"{backward.__name__} {dim}")
    for forward, backward in ((fastloss.tanh, fastloss.tanh_backward),
                              (fastloss.relu, fastloss.relu_backward)):
        assert_same_bits(forward(lazy_x).compute(), forward(x), forward.__name__)
        assert_same_bits(backward(lazy_g, forward(lazy_x)).compute(), backward(g, forward(x)),
                         backward.__name__)


def test_bad_input_is_named():
    x, t, _ = _case(np.float32, "int64", "plain")
    lazy_x, lazy_t = da.from_array(x, chunks=(500, 13)), da.from_array(t, chunks=500)
    bad = t.copy()
    bad[1234] = 13
    with pytest.raises(ValueError, match=r"class index 13.*C = 13.*block of input that starts at \(1000, 0\)"):
        fastloss.cross_entropy(lazy_x, da.from_array(bad, chunks=500)).compute()
    with pytest.raises(ValueError, match=r"class index 13"):  # the mean gradient's divisor pass
        fastloss.cross_entropy_grad(lazy_x, da.from_array(bad, chunks=500)).compute()
    with pytest.raises(ValueError, match=r"target has shape \(2000, 13\), expected \(2000,\)"):
        fastloss.cross_entropy(lazy_x, lazy_x.astype(np.int64))
    with pytest.raises(TypeError, match="weight must be None or a NumPy array.*compute"):
        fastloss.cross_entropy(lazy_x, lazy_t, weight=da.ones(13, dtype=np.float32))
    with pytest.raises(ValueError, match=r"weight has shape \(12,\), expected \(13,\)"):
        fastloss.cross_entropy(lazy_x, lazy_t, weight=np.ones(12, np.float32))
    with pytest.raises(TypeError, match="target is a numpy.ndarray but input is a"):
        fastloss.cross_entropy(lazy_x, t)
    with pytest.raises(TypeError, match="grad_output is a builtins.list but input is a dask"):
        fastloss.cross_entropy_grad(lazy_x, lazy_t, reduction="none", grad_output=[1.0] * ROWS)
    with pytest.raises(TypeError, match="out= is not taken with Dask arrays"):
        fastloss.softmax(lazy_x, out=x)
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\]"):
        fastloss.log_softmax(lazy_x, dim=2)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        fastloss.cross_entropy(lazy_x, lazy_t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        fastloss.cross_entropy(lazy_x, lazy_t, reduction="avg")


# ---- a real cluster: two worker processes ------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_cluster_gives_the_in_memory_bits(cluster, dtype):
    def on_cluster(*lazy):
        return tuple(cluster.compute(list(lazy), sync=True))

    for target_kind, option in (("int64", "weight"), ("probabilities", "smoothing")):
        x, t, kw = _case(dtype, target_kind, option)
        for chunks in CHUNKINGS.values():
            for function in FUNCTIONS:
                for reduction in ("mean", "sum", "none"):
                    _check(function, reduction, x, t, kw, chunks, on_cluster)
