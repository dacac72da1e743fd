"""The multi-class training layer: nn.Softmax, nn.CrossEntropyLoss (a Sequential ending in
Softmax trains through its logits; predict returns probabilities), Tanh and ReLU on the kernels,
gradients against finite differences, parity with torch.nn + torch.optim.SGD, and
``python -m fastloss train --dataset digits``."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss.__main__ as cli
from fastloss import nn
from fastloss import reference as R
from fastloss.optim import SGD
from fastloss.training import TrainStep, evaluate
from test_nn import check_module_gradients, numerical_gradient
from test_training import _assert_same_weights, _torch_fit


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


@pytest.mark.parametrize("dim", [-1, 0])
def test_softmax_layer_gradients(rng, dim):
    check_module_gradients(nn.Softmax(dim), rng.standard_normal((5, 4)), rng)


@pytest.mark.parametrize("kind", ["indices", "probabilities"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2, "weight": "classes"},
                                     {"reduction": "sum", "ignore_index": 2}])
def test_cross_entropy_loss_module_gradient(rng, kind, options):
    x = rng.standard_normal((6, 4))
    if kind == "indices":
        y = rng.integers(0, 4, 6)
    else:
        y = rng.random((6, 4))
        y /= y.sum(axis=1, keepdims=True)
    options = dict(options)
    if options.get("weight") == "classes":
        options["weight"] = rng.uniform(0.5, 2, 4)
    loss = nn.CrossEntropyLoss(**options)
    value = loss.forward(x, y)
    reference_options = {k: v for k, v in options.items() if k != "reduction"}
    assert abs(float(value) - R.cross_entropy(x, y, reduction=options.get("reduction", "mean"),
                                              **reference_options)) < 1e-12
    grad = loss.backward().copy()
    numerical = numerical_gradient(lambda: float(nn.CrossEntropyLoss(**options).forward(x, y)), x)
    np.testing.assert_allclose(grad, numerical, rtol=1e-6, atol=1e-8)


def test_softmax_then_cross_entropy_trains_on_the_logits(rng):
    """The gradient TrainStep sends into the last Dense is cross_entropy's on its output
    (the logits), not a chain through the Softmax; predict returns probabilities."""
    model = nn.Sequential(nn.Dense(3, 5, dtype=np.float64, rng=rng), nn.Softmax())
    x, y = rng.standard_normal((8, 3)), rng.integers(0, 5, 8)
    step = TrainStep(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.0))
    assert step.layers == model.layers[:1]
    value = step(x, y)
    logits = x @ model[0].weight.data.T + model[0].bias.data
    assert abs(float(value) - R.cross_entropy(logits, y)) < 1e-12
    np.testing.assert_allclose(model[0].bias.grad, R.cross_entropy_grad(logits, y).sum(axis=0),
                               rtol=1e-12)
    probabilities = nn.predict(model, x)
    np.testing.assert_allclose(probabilities, R.softmax(logits), rtol=1e-13)
    assert abs(evaluate(model, x, y, loss=nn.CrossEntropyLoss()) - R.cross_entropy(logits, y)) < 1e-12
    # a Softmax over another axis is a layer like any other
    other = nn.Sequential(nn.Dense(3, 5, dtype=np.float64, rng=rng), nn.Softmax(dim=0))
    assert TrainStep(other, nn.CrossEntropyLoss(), SGD(other.parameters(), lr=0.0)).layers == \
        other.layers


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "weight": True}])
def test_ten_epochs_match_torch(options):
    """float64, the same weights and batches: a Dense-Tanh-Dense-ReLU-Dense-Softmax trained
    with CrossEntropyLoss matches torch's Linear-Tanh-Linear-ReLU-Linear with
    torch.nn.CrossEntropyLoss (on the logits) to rtol 1e-9."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 6))
    Y = (np.argmax(X[:, :4] + 0.3 * rng.standard_normal((120, 4)), axis=1)).astype(np.int64)
    model = nn.Sequential(nn.Dense(6, 16, dtype=np.float64, rng=rng), nn.Tanh(),
                          nn.Dense(16, 12, dtype=np.float64, rng=rng), nn.ReLU(),
                          nn.Dense(12, 4, dtype=np.float64, rng=rng), nn.Softmax())
    weight = np.array([1.0, 2.0, 0.5, 1.5]) if options.get("weight") else None
    smoothing = options.get("label_smoothing", 0.0)
    torch_model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12), torch.nn.ReLU(),
        torch.nn.Linear(12, 4)).double()
    torch_model.load_state_dict({name: torch.from_numpy(value.copy())
                                 for name, value in model.state_dict().items()
                                 if not name.startswith("5.")})
    settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
    torch_loss = torch.nn.CrossEntropyLoss(
        weight=None if weight is None else torch.from_numpy(weight), label_smoothing=smoothing)
    history = nn.fit(model, X, Y, loss=loss, optimizer=SGD(model.parameters(), **settings),
                     epochs=10, batch_size=32, rng=4, progress=False)
    torch_history = _torch_fit(torch, torch_model, torch_loss, X, Y, settings, epochs=10,
                               batch_size=32, rng=4)["loss"]
    np.testing.assert_allclose(history["loss"], torch_history, rtol=1e-9)
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    _assert_same_weights(model, torch_model)


def test_digits_reaches_95_percent_test_accuracy(capsys):
    pytest.importorskip("sklearn")
    assert cli.main(["train", "--dataset", "digits", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "64-64-10 MLP, CrossEntropyLoss" in out and "epoch   30  loss" in out
    accuracy = float(out.strip().splitlines()[-1].split("test accuracy ")[1])
    assert accuracy >= 0.95, out[-500:]
