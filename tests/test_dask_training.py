"""fit and predict on Dask data: mini-batches stream from one chunk of rows at a time
(fastloss.data.chunk_batches); without shuffling the batches, hence the trained weights, are
those of the same data in memory; with shuffling, a documented, seeded order."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from fastloss import nn
from fastloss.data import batches, chunk_batches
from fastloss.optim import SGD
from fastloss.training import fit, predict
from _helpers import assert_same_bits

ROW_CHUNKS = {"ragged": (300, 300, 300, 101), "small": 37, "one": 1001}


def _data(dtype=np.float32):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((1001, 5)).astype(dtype)
    Y = (X @ rng.standard_normal((5, 1)) > 0).astype(dtype)
    return X, Y


def _model(dtype=np.float32):
    model = nn.Sequential(nn.Dense(5, 8, rng=1, dtype=dtype), nn.Tanh(),
                          nn.Dense(8, 1, rng=2, dtype=dtype))
    return model, SGD(model.parameters(), lr=0.1, momentum=0.5)


@pytest.fixture(autouse=True)
def threaded():
    with dask.config.set(scheduler="threads"):
        yield


@pytest.mark.parametrize("chunks", ROW_CHUNKS.values(), ids=ROW_CHUNKS.keys())
@pytest.mark.parametrize("batch_size", [64, 300])
def test_unshuffled_batches_are_those_in_memory(chunks, batch_size):
    X, Y = _data()
    streamed = list(chunk_batches(da.from_array(X, chunks=(chunks, 2)),
                                  da.from_array(Y, chunks=(250, 1)), batch_size, shuffle=False))
    expected = list(batches(X, Y, batch_size, shuffle=False))
    assert len(streamed) == len(expected)
    for (xs, ys), (xe, ye) in zip(streamed, expected):
        assert_same_bits(xs, xe)
        assert_same_bits(ys, ye)


@pytest.mark.parametrize("chunks", ROW_CHUNKS.values(), ids=ROW_CHUNKS.keys())
def test_fit_without_shuffle_gives_the_weights_of_numpy(chunks):
    X, Y = _data()
    model, optimizer = _model()
    history = fit(model, X, Y, loss=nn.BCEWithLogitsLoss(), optimizer=optimizer, epochs=2,
                  batch_size=64, shuffle=False)
    dask_model, dask_optimizer = _model()
    dask_history = fit(dask_model, da.from_array(X, chunks=(chunks, 5)),
                       da.from_array(Y, chunks=(chunks, 1)), loss=nn.BCEWithLogitsLoss(),
                       optimizer=dask_optimizer, epochs=2, batch_size=64, shuffle=False)
    for p, q in zip(model.parameters(), dask_model.parameters()):
        assert_same_bits(q.data, p.data, "trained parameter")
    assert dask_history == history


def test_shuffled_order_is_chunk_order_then_rows_and_seeded():
    X, Y = np.arange(20.0)[:, None], np.arange(20.0)[:, None] * 10
    DX, DY = da.from_array(X, chunks=((8, 8, 4), 1)), da.from_array(Y, chunks=((5, 15), 1))
    got = np.concatenate([x for x, _ in chunk_batches(DX, DY, 3, shuffle=True, rng=7)])
    rng = np.random.default_rng(7)
    starts = (0, 8, 16)
    sizes = (8, 8, 4)
    expected = []
    for block in rng.permutation(3):
        expected.extend(starts[block] + rng.permutation(sizes[block]))
    np.testing.assert_array_equal(got[:, 0], np.array(expected, dtype=float))
    pairs = list(chunk_batches(DX, DY, 3, shuffle=True, rng=7))
    assert all(np.array_equal(y, x * 10) for x, y in pairs)  # rows stay paired
    assert [len(x) for x, _ in pairs] == [3] * 6 + [2]
    again = np.concatenate([x for x, _ in chunk_batches(DX, DY, 3, shuffle=True, rng=7)])
    np.testing.assert_array_equal(again, got)


def test_fit_with_shuffle_trains():
    X, Y = _data()
    model, optimizer = _model()
    history = fit(model, da.from_array(X, chunks=200), da.from_array(Y, chunks=200),
                  loss=nn.BCEWithLogitsLoss(), optimizer=optimizer, epochs=5, batch_size=32,
                  rng=0)
    assert history["loss"][-1] < history["loss"][0] * 0.7


def test_predict_is_lazy_and_equal_to_numpy():
    X, _ = _data()
    model, _ = _model()
    lazy = predict(model, da.from_array(X, chunks=(300, 2)), batch_size=128)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((300, 300, 300, 101), (1,))
    assert_same_bits(lazy.compute(), predict(model, X, batch_size=128))


def test_mixed_and_unknown_data_are_refused():
    X, Y = _data()
    model, optimizer = _model()
    with pytest.raises(TypeError, match="both must be Dask arrays"):
        fit(model, da.from_array(X, chunks=100), Y, loss=nn.MSELoss(), optimizer=optimizer,
            epochs=1)
    with pytest.raises(TypeError, match="dtype"):
        fit(model, da.from_array(X.astype(np.float64), chunks=100), da.from_array(Y, chunks=100),
            loss=nn.MSELoss(), optimizer=optimizer, epochs=1)
    with pytest.raises(TypeError, match=r"validation_data\[0\] is a Dask array but "
                                        r"validation_data\[1\] is a numpy.ndarray"):
        fit(model, da.from_array(X, chunks=100), da.from_array(Y, chunks=100),
            loss=nn.MSELoss(), optimizer=optimizer, epochs=1,
            validation_data=(da.from_array(X), Y))
    with pytest.raises(ValueError, match=r"validation_data\[0\] has 1001 samples but "
                                         r"validation_data\[1\] has 1000"):
        fit(model, X, Y, loss=nn.MSELoss(), optimizer=optimizer, epochs=1,
            validation_data=(da.from_array(X), da.from_array(Y[:1000])))


@pytest.mark.parametrize("loss", [nn.BCEWithLogitsLoss(), nn.MSELoss(reduction="sum"),
                                  nn.BCELoss(reduction="none")], ids=repr)
def test_dask_validation_data_gives_the_validation_loss(loss):
    """validation_data as Dask arrays (training data in memory or streamed): the val_loss of
    each epoch is the loss of the model's outputs, chunk by chunk, as fastloss computes it for
    Dask arrays; the same value as the in-memory evaluation up to the last bits of the
    forward pass's matrix products on other row counts."""
    X, Y = _data()
    X_val, Y_val = X[:400] * 1.5, Y[:400]
    layers = [nn.Dense(5, 8, rng=1), nn.Tanh(), nn.Dense(8, 1, rng=2)]
    if type(loss) is nn.BCELoss:
        layers.append(nn.Sigmoid())  # trained as logits; evaluated through the same swap
    results = []
    for lazy in (False, True):
        model = nn.Sequential(*[__import__("copy").deepcopy(layer) for layer in layers])
        optimizer = SGD(model.parameters(), lr=0.002, momentum=0.5)
        validation = ((da.from_array(X_val, chunks=(150, 5)), da.from_array(Y_val, chunks=70))
                      if lazy else (X_val, Y_val))
        results.append(fit(model, X, Y, loss=loss, optimizer=optimizer, epochs=3,
                           batch_size=64, shuffle=False, validation_data=validation))
    in_memory, streamed = results
    assert streamed["loss"] == in_memory["loss"]  # validation never changes the training
    assert all(isinstance(value, float) for value in streamed["val_loss"])
    np.testing.assert_allclose(streamed["val_loss"], in_memory["val_loss"], rtol=2e-6)
    assert streamed["val_loss"][0] != streamed["val_loss"][-1]  # one per epoch, as trained
