"""fastloss.optim.SGD (the C++ update and the array-expression update used for CuPy) and
fastloss.data.batches."""

from __future__ import annotations

import numpy as np
import pytest

from fastloss import data, nn
from fastloss.optim import SGD, _sgd_update

SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.02, momentum=0.8, nesterov=True),
    dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.05),
]


def reference_sgd(params, grads_per_step, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                  nesterov=False):
    """torch.optim.SGD's documented update, in float64, one parameter at a time."""
    params = [p.astype(np.float64) for p in params]
    buffers = [None] * len(params)
    for grads in grads_per_step:
        for i, grad in enumerate(grads):
            g = grad.astype(np.float64) + weight_decay * params[i]
            if momentum != 0:
                buffers[i] = g.copy() if buffers[i] is None \
                    else momentum * buffers[i] + (1 - dampening) * g
                g = g + momentum * buffers[i] if nesterov else buffers[i]
            params[i] = params[i] - lr * g
    return params


def _parameters(rng, dtype):
    return [nn.Parameter(rng.standard_normal(shape).astype(dtype))
            for shape in [(4, 3), (4,), (1, 4), (1,)]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}"
                                                                       for k, v in s.items()))
def test_sgd_matches_the_reference_and_the_array_expression_path(dtype, settings):
    rng = np.random.default_rng(3)
    params = _parameters(rng, dtype)
    twins = [nn.Parameter(p.data.copy()) for p in params]
    initial = [p.data.copy() for p in params]
    optimizer, twin_optimizer = SGD(params, **settings), SGD(twins, **settings)
    steps = []
    for _ in range(4):
        grads = [rng.standard_normal(p.data.shape).astype(dtype) for p in params]
        steps.append(grads)
        for p, t, g in zip(params, twins, grads):
            p.grad[...] = g
            t.grad[...] = g
        optimizer.step()
        # The array-expression update that CuPy parameters take, on NumPy arrays here.
        first = twin_optimizer._momentum_buffers is None and twin_optimizer.momentum != 0
        if first:
            twin_optimizer._momentum_buffers = [np.empty_like(t.data) for t in twins]
        for index, twin in enumerate(twins):
            _sgd_update(twin.data, twin.grad, None if twin_optimizer._momentum_buffers is None
                       else twin_optimizer._momentum_buffers[index], twin_optimizer.lr,
                       twin_optimizer.momentum, twin_optimizer.dampening,
                       twin_optimizer.weight_decay, twin_optimizer.nesterov, first)
    expected = reference_sgd(initial, steps, **settings)
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    for p, t, e in zip(params, twins, expected):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, e, rtol=rtol, atol=rtol)
        np.testing.assert_array_equal(t.data, p.data)


def test_sgd_learning_rate_can_change_between_steps():
    parameter = nn.Parameter(np.ones(3))
    optimizer = SGD([parameter], lr=0.5)
    parameter.grad[...] = 1.0
    optimizer.step()
    optimizer.lr = 0.25
    optimizer.step()
    np.testing.assert_array_equal(parameter.data, np.full(3, 0.25))


def test_zero_grad():
    parameter = nn.Parameter(np.ones(3, np.float32))
    parameter.grad[...] = 2.0
    SGD([parameter], lr=0.1).zero_grad()
    assert not parameter.grad.any()


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-0.1), "lr must be a non-negative number"),
    (dict(lr=float("nan")), "lr must be a non-negative number"),
    (dict(lr=0.1, momentum=-0.5), "momentum must be"),
    (dict(lr=0.1, nesterov=True), "nesterov momentum needs momentum > 0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening == 0"),
    (dict(lr="0.1"), "lr must be"),
])
def test_sgd_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD([nn.Parameter(np.ones(2))], **kwargs)


def test_sgd_rejects_bad_parameters():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameter objects"):
        SGD([np.ones(3)], lr=0.1)
    mixed = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3, np.float32))]
    mixed[1].grad = np.ones(3)
    with pytest.raises(TypeError, match=r"params\[1\].grad has dtype float64, expected float32"):
        SGD(mixed, lr=0.1).step()
    frozen = nn.Parameter(np.ones(3))
    frozen.data.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\].data is read-only"):
        SGD([frozen], lr=0.1).step()
    reshaped = nn.Parameter(np.ones(3))
    reshaped.grad = np.ones(4)
    with pytest.raises(ValueError, match="another shape"):
        SGD([reshaped], lr=0.1).step()
    strided = nn.Parameter(np.ones(6)[::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        SGD([strided], lr=0.1).step()


# ---- batches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (1, 4), (0, 2), (5, 5), (7, 1)])
def test_batches_cover_every_sample_once_and_keep_the_ragged_batch(n, batch_size):
    X = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    Y = np.arange(n, dtype=np.float32).reshape(n, 1)
    sizes, seen = [], []
    for X_batch, Y_batch in data.batches(X, Y, batch_size, rng=0):
        np.testing.assert_array_equal(X_batch[:, 0] / 2, Y_batch[:, 0])  # rows stay paired
        sizes.append(len(X_batch))
        seen.extend(Y_batch[:, 0].tolist())
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert len(sizes) == data.batch_count(n, batch_size)
    assert sorted(seen) == list(range(n))


def test_batches_order_is_seeded_and_changes_between_epochs():
    X = np.arange(50.0).reshape(50, 1)

    def order(rng):
        return [y[0] for _, Y_batch in data.batches(X, X, 8, rng=rng) for y in Y_batch]

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)) == X[:, 0].tolist() and order(1) != X[:, 0].tolist()
    generator = np.random.default_rng(1)
    first_epoch, second_epoch = order(generator), order(generator)
    assert first_epoch == order(1) and second_epoch != first_epoch


def test_batches_without_shuffle_are_views_in_order():
    X = np.arange(10.0).reshape(5, 2)
    pieces = list(data.batches(X, X[:, :1], 2, shuffle=False))
    assert [len(b) for b, _ in pieces] == [2, 2, 1]
    assert all(np.shares_memory(b, X) for b, _ in pieces)


@pytest.mark.parametrize("X, Y, batch_size, error, message", [
    (np.zeros((4, 2)), np.zeros((3, 1)), 2, ValueError, "X has 4 samples but Y has 3"),
    (np.zeros((4, 2)), np.zeros((4, 1)), 0, ValueError, "batch_size must be a positive integer"),
    (np.zeros((4, 2)), np.zeros((4, 1)), 2.0, ValueError, "batch_size must be a positive"),
    (np.zeros((4, 2)), np.zeros((4, 1)), True, ValueError, "batch_size must be a positive"),
    (np.zeros(()), np.zeros(()), 2, ValueError, "first \\(sample\\) axis"),
    ([[0.0]], np.zeros((1, 1)), 1, TypeError, "expected a numpy.ndarray or a cupy.ndarray"),
])
def test_batches_reject_bad_input(X, Y, batch_size, error, message):
    with pytest.raises(error, match=message):
        next(data.batches(X, Y, batch_size))
