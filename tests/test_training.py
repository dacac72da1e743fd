"""Training end to end: the three seed examples, fit's history and progress bar, the train
command on scikit-learn's data sets, parity with torch.nn + torch.optim.SGD, and CuPy."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest

import fastloss.__main__ as cli
from fastloss import nn
from fastloss import reference as R
from fastloss.data import batches
from fastloss.optim import SGD
from fastloss.training import TrainStep, evaluate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))


# ---- the seeds ---------------------------------------------------------------------------------

def test_seed_single_neuron_gradient_step():
    seed = example("single_neuron_step")
    # Worked by hand: z = 0.1 * -0.8 + 0.3 * 0.5 = 0.07, out = 1 / (1 + e^-0.07),
    # dE/dw = 2 (out - y) out (1 - out) x, change = -0.5 dE/dw.
    out = 1 / (1 + math.exp(-0.07))
    assert out == pytest.approx(0.5174928576663897, abs=1e-15)
    output, error, change = seed["with_fastloss"]()
    assert output == pytest.approx(0.51749286, abs=5e-9)
    assert error == pytest.approx(0.31749286, abs=5e-9)
    # out (1 - out) = 0.2496940, dE/dz = 2 * 0.3174929 * 0.2496940 = 0.1585521
    np.testing.assert_allclose(change, [-0.0079276062, -0.0237828185], atol=5e-11)
    hand_output, hand_error, hand_change = seed["by_hand"]()
    assert output == pytest.approx(hand_output, rel=1e-15)
    assert error == pytest.approx(hand_error, rel=1e-15)
    np.testing.assert_allclose(change, hand_change, rtol=1e-12)


def test_seed_linear_regression_reaches_least_squares():
    seed = example("linear_regression")
    x, y = seed["data"]()
    theta, losses = seed["gradient_descent"](x, y)
    np.testing.assert_allclose(theta, seed["least_squares"](x, y), rtol=1e-9)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(losses, losses[1:]))  # monotone descent


@pytest.mark.parametrize("seed", range(5))
def test_seed_and_network_classifies_the_unseen_rows(seed):
    example_globals = example("and_network")
    network, losses = example_globals["train"](seed=seed)
    assert losses[-1] < 0.01
    assert example_globals["classify"](network, example_globals["X"]) == [1, 0, 0, 0, 0]
    assert example_globals["classify"](network, example_globals["UNSEEN"]) == [0, 1, 0]


# ---- fit --------------------------------------------------------------------------------------

def _problem(dtype=np.float64, n=90, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(dtype)
    Y = (X[:, :1] + 0.5 * X[:, 1:2] > 0).astype(dtype)
    model = nn.Sequential(nn.Dense(6, 8, dtype=dtype, rng=rng), nn.Tanh(),
                          nn.Dense(8, 1, dtype=dtype, rng=rng), nn.Sigmoid())
    return X, Y, model


def test_fit_history_is_the_batch_weighted_mean_and_is_reproducible():
    X, Y, model = _problem()
    state = {k: v.copy() for k, v in model.state_dict().items()}
    history = nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=SGD(model.parameters(), lr=0.5),
                     epochs=3, batch_size=32, rng=5, validation_data=(X, Y), progress=False)
    assert history["epoch"] == [1, 2, 3] and len(history["val_loss"]) == 3
    assert history["loss"][-1] < history["loss"][0]
    # Replay by hand: batch losses of sizes 32, 32, 26, weighted by size; after each epoch the
    # validation loss is the reference BCE of the model's probabilities (not evaluate's logits).
    model.load_state_dict(state)
    optimizer, loss = SGD(model.parameters(), lr=0.5), nn.BCEWithLogitsLoss()
    generator, replayed, replayed_validation = np.random.default_rng(5), [], []
    logits_layers = model.layers[:-1]
    for _ in range(3):
        total = 0.0
        for X_batch, Y_batch in batches(X, Y, 32, rng=generator):
            out = X_batch
            for layer in logits_layers:
                out = layer.forward(out)
            total += float(loss.forward(out, Y_batch)) * len(X_batch)
            grad = loss.backward()
            for layer in reversed(logits_layers):
                grad = layer.backward(grad)
            optimizer.step()
        replayed.append(total / len(X))
        replayed_validation.append(R.binary_cross_entropy(nn.predict(model, X), Y))
    np.testing.assert_array_equal(history["loss"], replayed)
    np.testing.assert_allclose(history["val_loss"], replayed_validation, rtol=1e-12)


def test_fit_reduction_sum_records_the_epoch_sum():
    X, Y, model = _problem()
    history = nn.fit(model, X, Y, loss=nn.MSELoss(reduction="sum"),
                     optimizer=SGD(model.parameters(), lr=0.0), epochs=1, batch_size=40,
                     progress=False)
    assert history["loss"][0] == pytest.approx(float(np.sum((nn.predict(model, X) - Y) ** 2)),
                                               rel=1e-12)


def test_fit_progress_bar_on_request_and_silent_otherwise(capsys):
    X, Y, model = _problem(n=40)
    optimizer = SGD(model.parameters(), lr=0.1)
    nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=2, progress=None)
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=2, progress=True)
    assert "loss" in capsys.readouterr().err


def test_fit_rejects_bad_arguments():
    X, Y, model = _problem(n=10)
    optimizer = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=-1)
    with pytest.raises(TypeError, match="loss must be a fastloss.nn loss module"):
        nn.fit(model, X, Y, loss=lambda a, b: 0.0, optimizer=optimizer, epochs=1)
    with pytest.raises(TypeError, match="model must be a fastloss.nn.Module"):
        nn.fit(lambda x: x, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=1)
    with pytest.raises(ValueError, match="X has 10 samples but Y has 9"):
        nn.fit(model, X, Y[:9], loss=nn.BCELoss(), optimizer=optimizer, epochs=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise', 'warn' or 'ignore'"):
        nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=1,
               on_nonfinite="stop")


class _StepsTaken:
    """An optimizer that counts its steps (and changes nothing)."""

    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1


@pytest.mark.parametrize("bad, error, message", [
    ("X float32", TypeError, r"^X has dtype float32 but the model's parameters are float64: "
                             r"convert it with X\.astype\(np\.float64\)"),
    ("X list", TypeError, r"^X must be a numpy.ndarray or a cupy.ndarray, got builtins.list; "
                          r"convert it with np\.asarray\(X, dtype=np\.float32\)$"),
    ("X 1-D", ValueError, r"^X has shape \(10,\), expected \(samples, features\)"),
    ("X features", ValueError, r"^X has 5 features \(shape \(10, 5\)\) but the model's "
                               r"first Dense layer takes 6$"),
    ("Y 1-D", ValueError, r"^Y has shape \(10,\), but BCELoss needs the shape of the "
                          r"model's output, \(10, 1\): one target per sample needs a column, "
                          r"Y\.reshape\(-1, 1\)$"),
    ("Y columns", ValueError, r"^Y has shape \(10, 2\), but BCELoss needs the shape of the "
                              r"model's output, \(10, 1\)$"),
    ("Y int", TypeError, r"^Y has dtype int64, but BCELoss needs the model's dtype, float64: "
                         r"convert it with Y\.astype\(np\.float64\)$"),
    ("Y samples", ValueError, r"^X has 10 samples but Y has 9; they must have one row per "
                              r"sample"),
    ("validation Y 1-D", ValueError, r"^validation_data\[1\] has shape \(10,\), but BCELoss "
                                     r"needs .*validation_data\[1\]\.reshape\(-1, 1\)$"),
    ("validation X float32", TypeError, r"^validation_data\[0\] has dtype float32"),
    ("validation triple", TypeError, r"^validation_data must be a pair \(X_val, Y_val\), got "
                                     r"builtins.tuple$"),
])
def test_fit_checks_its_data_before_the_first_step(bad, error, message):
    """Each mistake is named at entry with its fix, before any step (no optimizer step is
    taken, no layer's error from inside the first batch)."""
    X, Y, model = _problem(n=10)
    validation = (X, Y)
    changed = {"X float32": lambda: (X.astype(np.float32), Y),
               "X list": lambda: (X.tolist(), Y),
               "X 1-D": lambda: (X[:, 0], Y),
               "X features": lambda: (X[:, :5], Y),
               "Y 1-D": lambda: (X, Y[:, 0]),
               "Y columns": lambda: (X, np.hstack([Y, Y])),
               "Y int": lambda: (X, Y.astype(np.int64)),
               "Y samples": lambda: (X, Y[:9])}
    if bad in changed:
        X, Y = changed[bad]()
    else:
        validation = {"validation Y 1-D": (X, Y[:, 0]),
                      "validation X float32": (X.astype(np.float32), Y),
                      "validation triple": (X, Y, Y)}[bad]
    optimizer = _StepsTaken()
    with pytest.raises(error, match=message):
        nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=optimizer, epochs=1,
               validation_data=validation, progress=False)
    assert optimizer.steps == 0


def test_fit_target_checks_follow_the_loss():
    """The target check is the loss's (check_target), against the width of the model's output:
    MSELoss on a 3-output model wants (samples, 3)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 4))
    model = nn.Sequential(nn.Dense(4, 3, dtype=np.float64, rng=rng), nn.Tanh())
    with pytest.raises(ValueError, match=r"^Y has shape \(12, 1\), but MSELoss needs the shape "
                                         r"of the model's output, \(12, 3\)$"):
        nn.fit(model, X, np.zeros((12, 1)), loss=nn.MSELoss(), optimizer=_StepsTaken(),
               epochs=1)
    history = nn.fit(model, X, np.zeros((12, 3)), loss=nn.MSELoss(),
                     optimizer=SGD(model.parameters(), lr=0.1), epochs=1, progress=False)
    assert len(history["loss"]) == 1


def _linear_problem(n=90):
    """A linear model on MSE: a step far too large makes it diverge (nothing saturates)."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((n, 6))
    return X, X @ rng.standard_normal((6, 1)), nn.Dense(6, 1, dtype=np.float64, rng=rng)


@pytest.mark.parametrize("lr, where", [(float("inf"), "epoch 1, batch 2 of 3"),
                                       (100.0, r"epoch \d+, batch \d of 3")])
def test_a_diverging_loss_stops_fit_naming_the_epoch_and_the_batch(lr, where):
    """lr = inf: the first step makes the weights infinite, so the second batch's loss is not
    finite; lr = 100: the weights grow a hundredfold a step until they overflow."""
    X, Y, model = _linear_problem()
    with pytest.raises(FloatingPointError, match=f"^the training loss is (nan|inf) at {where}: "
                                                 "training diverged"):
        nn.fit(model, X, Y, loss=nn.MSELoss(), optimizer=SGD(model.parameters(), lr=lr),
               epochs=100, batch_size=32, shuffle=False, progress=False)


def test_a_diverging_loss_can_warn_once_or_be_ignored():
    X, Y, model = _linear_problem()
    state = {name: value.copy() for name, value in model.state_dict().items()}
    settings = dict(loss=nn.MSELoss(), epochs=4, batch_size=32, progress=False)
    with pytest.warns(RuntimeWarning, match="training diverged") as caught:
        history = nn.fit(model, X, Y, optimizer=SGD(model.parameters(), lr=float("inf")),
                         on_nonfinite="warn", **settings)
    assert len(caught) == 1 and len(history["loss"]) == 4
    assert caught[0].filename == __file__  # pointed at the call of fit
    assert not np.isfinite(history["loss"][-1])
    model.load_state_dict(state)
    history = nn.fit(model, X, Y, optimizer=SGD(model.parameters(), lr=float("inf")),
                     on_nonfinite="ignore", **settings)
    assert len(history["loss"]) == 4


def test_bce_with_logits_after_a_final_sigmoid_warns():
    """A double sigmoid trains, badly: a warning says so (BCELoss there is trained through the
    logits and does not warn)."""
    X, Y, model = _problem(n=20)
    with pytest.warns(UserWarning, match="ends in Sigmoid and BCEWithLogitsLoss applies a "
                                         "sigmoid of its own") as caught:
        nn.fit(model, X, Y, loss=nn.BCEWithLogitsLoss(), optimizer=_StepsTaken(), epochs=1)
    assert caught[0].filename == __file__  # pointed at the call of fit
    nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=_StepsTaken(), epochs=1)


# ---- the train command and real data ----------------------------------------------------------

def test_breast_cancer_mlp_reaches_95_percent_test_accuracy():
    pytest.importorskip("sklearn")
    from fastloss._train_cli import build_mlp, held_out_metrics, load_dataset
    X_train, Y_train, X_test, Y_test, scale = load_dataset("breast_cancer", seed=0)
    assert X_train.shape == (455, 30) and X_test.shape == (114, 30)
    np.testing.assert_allclose(X_train.mean(axis=0), 0, atol=1e-5)
    model = build_mlp(30, [64, 64], classification=True, seed=0)
    assert [p.data.shape for p in model.parameters()] == [(64, 30), (64,), (64, 64), (64,),
                                                          (1, 64), (1,)]
    nn.fit(model, X_train, Y_train, loss=nn.BCELoss(),
           optimizer=SGD(model.parameters(), lr=0.01, momentum=0.9), epochs=30, batch_size=32,
           rng=0, progress=False)
    accuracy = held_out_metrics(model, X_test, Y_test, classification=True,
                                y_scale=scale)["accuracy"]
    assert accuracy >= 0.95


def test_train_command_breast_cancer(capsys, tmp_path):
    pytest.importorskip("sklearn")
    saved = tmp_path / "model.npz"
    assert cli.main(["train", "--epochs", "3", "--seed", "1", "--save", str(saved),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "30-64-64-1 MLP" in out and "epoch    3  loss" in out
    assert "test accuracy 0.9" in out
    assert sorted(np.load(saved).files) == ["0.bias", "0.weight", "2.bias", "2.weight",
                                            "4.bias", "4.weight"]


def test_train_command_diabetes_with_plot(capsys, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curve.png"
    assert cli.main(["train", "--dataset", "diabetes", "--epochs", "60", "--plot", str(plot),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "10-32-1 MLP, MSELoss" in out
    r2 = float(out.split("r2 ")[1].split()[0])
    assert r2 > 0.3  # least squares gets 0.33 on this split
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_command_rejects_bad_hidden_sizes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--hidden", "64,x"])
    assert "expected sizes like 64,64" in capsys.readouterr().err


# ---- parity with PyTorch ------------------------------------------------------------------------

def _torch_twin(torch, model):
    """A float64 torch.nn.Sequential with the layers and the weights of a fastloss Sequential."""
    activations = {nn.Tanh: torch.nn.Tanh, nn.ReLU: torch.nn.ReLU, nn.Sigmoid: torch.nn.Sigmoid}
    twin = torch.nn.Sequential(*[
        torch.nn.Linear(layer.in_features, layer.out_features) if isinstance(layer, nn.Dense)
        else activations[type(layer)]() for layer in model.layers]).double()
    twin.load_state_dict({name: torch.from_numpy(value.copy())
                          for name, value in model.state_dict().items()})
    return twin


def _torch_step(torch, model, loss, optimizer, X_batch, Y_batch):
    """One torch.optim step as TrainStep takes it ('none' trains on the sum of the elements);
    returns the batch loss as TrainStep returns it (the mean of the elements for 'none')."""
    optimizer.zero_grad()
    value = loss(model(torch.from_numpy(X_batch)), torch.from_numpy(Y_batch))
    (value.sum() if loss.reduction == "none" else value).backward()
    optimizer.step()
    return value.mean().item()


def _torch_fit(torch, model, loss, X, Y, settings, *, epochs, batch_size, rng,
               validation_data=None):
    """fit's loop in torch: the same batches (the same Generator draws), each epoch's loss as fit
    records it (size-weighted mean, or the sum for 'sum'), the validation loss after each epoch."""
    optimizer = torch.optim.SGD(model.parameters(), **settings)
    generator, summed = np.random.default_rng(rng), loss.reduction == "sum"
    history = {"loss": [], "val_loss": []}
    for _ in range(epochs):
        total = 0.0
        for X_batch, Y_batch in batches(X, Y, batch_size, rng=generator):
            value = _torch_step(torch, model, loss, optimizer, X_batch, Y_batch)
            total += value * (1 if summed else len(X_batch))
        history["loss"].append(total if summed else total / len(X))
        if validation_data is not None:
            with torch.no_grad():
                X_val, Y_val = (torch.from_numpy(array) for array in validation_data)
                history["val_loss"].append(loss(model(X_val), Y_val).mean().item())
    return history


def _assert_same_weights(model, torch_model):
    for name, value in torch_model.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[name], value.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", ["bce_sigmoid_tanh", "bce_logits_relu", "mse_nesterov"])
def test_ten_epochs_match_torch_nn_and_torch_optim_sgd(case):
    """Same initial weights, same batches, float64: the loss history of 10 epochs and the final
    weights agree with torch.nn + torch.optim.SGD (momentum and weight decay) to rtol 1e-9."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    X = rng.standard_normal((150, 8))
    Y = (np.sin(X[:, :1]) + X[:, 1:2] ** 2 > 0.7).astype(np.float64)
    activation = nn.Tanh if case == "bce_sigmoid_tanh" else nn.ReLU
    layers = [nn.Dense(8, 16, dtype=np.float64, rng=rng), activation(),
              nn.Dense(16, 12, dtype=np.float64, rng=rng), activation(),
              nn.Dense(12, 1, dtype=np.float64, rng=rng)]
    settings = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    if case == "bce_sigmoid_tanh":
        layers.append(nn.Sigmoid())
        loss, torch_loss = nn.BCELoss(), torch.nn.BCELoss()
    elif case == "bce_logits_relu":
        loss, torch_loss = nn.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss()
    else:
        loss, torch_loss = nn.MSELoss(), torch.nn.MSELoss()
        settings.update(nesterov=True, lr=0.02)
    model = nn.Sequential(*layers)
    torch_model = _torch_twin(torch, model)

    history = nn.fit(model, X, Y, loss=loss, optimizer=SGD(model.parameters(), **settings),
                     epochs=10, batch_size=32, rng=4, progress=False)
    torch_history = _torch_fit(torch, torch_model, torch_loss, X, Y, settings, epochs=10,
                               batch_size=32, rng=4)["loss"]

    np.testing.assert_allclose(history["loss"], torch_history, rtol=1e-9)
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    _assert_same_weights(model, torch_model)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["bce_after_sigmoid", "bce_logits"])
def test_weighted_losses_train_like_torch(case, reduction):
    """A per-output weight (and pos_weight) through fit, its validation loss and TrainStep,
    float64, against torch.nn + torch.optim.SGD: losses and final weights to rtol 1e-9.

    BCELoss after a final Sigmoid is trained on the logits with BCEWithLogitsLoss; that swap
    (and evaluate's copy of the loss) must carry the weight and the reduction over."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    X, X_val = rng.standard_normal((100, 6)), rng.standard_normal((40, 6))
    Y = (X[:, :3] + 0.5 * rng.standard_normal((100, 3)) > 0).astype(np.float64)
    Y_val = (X_val[:, :3] + 0.5 * rng.standard_normal((40, 3)) > 0).astype(np.float64)
    # Far from 1, so that a dropped weight or pos_weight changes every loss.
    weight, pos_weight = np.array([0.25, 3.0, 1.5]), np.array([2.0, 0.5, 4.0])
    layers = [nn.Dense(6, 10, dtype=np.float64, rng=rng), nn.Tanh(),
              nn.Dense(10, 3, dtype=np.float64, rng=rng)]
    if case == "bce_after_sigmoid":
        layers.append(nn.Sigmoid())
        loss = nn.BCELoss(weight=weight, reduction=reduction)
        torch_loss = torch.nn.BCELoss(weight=torch.from_numpy(weight), reduction=reduction)
    else:
        loss = nn.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight, reduction=reduction)
        torch_loss = torch.nn.BCEWithLogitsLoss(weight=torch.from_numpy(weight),
                                                pos_weight=torch.from_numpy(pos_weight),
                                                reduction=reduction)
    model = nn.Sequential(*layers)
    initial = {name: value.copy() for name, value in model.state_dict().items()}
    # 'sum' and 'none' train on the sum over a batch (16 x 3 elements): a smaller step.
    settings = dict(lr=0.05 if reduction == "mean" else 0.002, momentum=0.9, weight_decay=1e-3)

    torch_model = _torch_twin(torch, model)
    history = nn.fit(model, X, Y, loss=loss, optimizer=SGD(model.parameters(), **settings),
                     epochs=6, batch_size=16, rng=3, validation_data=(X_val, Y_val),
                     progress=False)
    torch_history = _torch_fit(torch, torch_model, torch_loss, X, Y, settings, epochs=6,
                               batch_size=16, rng=3, validation_data=(X_val, Y_val))
    np.testing.assert_allclose(history["loss"], torch_history["loss"], rtol=1e-9)
    np.testing.assert_allclose(history["val_loss"], torch_history["val_loss"], rtol=1e-9)
    assert history["loss"][-1] < 0.9 * history["loss"][0]
    _assert_same_weights(model, torch_model)

    model.load_state_dict(initial)
    torch_model = _torch_twin(torch, model)
    step = TrainStep(model, loss, SGD(model.parameters(), **settings))
    optimizer = torch.optim.SGD(torch_model.parameters(), **settings)
    for X_batch, Y_batch in batches(X, Y, 16, rng=9):  # 100 rows: the last batch has 4
        ours = step(X_batch, Y_batch)
        theirs = _torch_step(torch, torch_model, torch_loss, optimizer, X_batch, Y_batch)
        assert float(ours) == pytest.approx(theirs, rel=1e-12)
    _assert_same_weights(model, torch_model)


# ---- evaluate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["mse", "mse_weight", "bce_after_sigmoid",
                                  "bce_after_sigmoid_weight", "bce_logits_weights"])
def test_evaluate_is_the_reference_loss_of_the_predictions(case, reduction):
    """evaluate() against fastloss.reference applied to predict()'s output by hand (the mean of
    the elements for 'none'), and it leaves the parameters alone."""
    rng = np.random.default_rng(21)
    X = rng.standard_normal((50, 4))
    Y = (X[:, :2] > 0).astype(np.float64) if case.startswith("bce") else X[:, :2] ** 2
    weight = np.array([0.5, 3.0]) if "weight" in case else None
    pos_weight = np.array([4.0, 0.25]) if case == "bce_logits_weights" else None
    layers = [nn.Dense(4, 6, dtype=np.float64, rng=rng), nn.Tanh(),
              nn.Dense(6, 2, dtype=np.float64, rng=rng)]
    if case.startswith("bce_after_sigmoid"):
        layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers)
    before = {name: value.copy() for name, value in model.state_dict().items()}
    output = nn.predict(model, X)
    if case.startswith("mse"):
        loss = nn.MSELoss(weight=weight, reduction=reduction)
        expected = R.mse_loss(output, Y, weight, reduction)
    elif case.startswith("bce_after_sigmoid"):
        loss = nn.BCELoss(weight=weight, reduction=reduction)
        expected = R.binary_cross_entropy(output, Y, weight, reduction)
    else:
        loss = nn.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight, reduction=reduction)
        expected = R.binary_cross_entropy_with_logits(output, Y, weight, pos_weight, reduction)
    value = evaluate(model, X, Y, loss=loss)
    assert type(value) is float
    assert value == pytest.approx(float(np.mean(expected)), rel=1e-12)
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)


# ---- CuPy: the same code on the GPU ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_on_cupy_matches_numpy(cp, dtype):
    X, Y, model = _problem(dtype)
    gpu_model = nn.Sequential(*[type(layer)() if not isinstance(layer, nn.Dense)
                                else nn.Dense(layer.in_features, layer.out_features, dtype=dtype)
                                for layer in model.layers])
    gpu_model.load_state_dict(model.state_dict())
    gpu_model.to("cuda")
    assert all(type(p.data) is cp.ndarray for p in gpu_model.parameters())
    settings = dict(lr=0.3, momentum=0.9, weight_decay=1e-3)
    cpu_history = nn.fit(model, X, Y, loss=nn.BCELoss(), optimizer=SGD(model.parameters(),
                                                                         **settings),
                         epochs=4, batch_size=16, rng=2, progress=False)
    gpu_history = nn.fit(gpu_model, cp.asarray(X), cp.asarray(Y), loss=nn.BCELoss(),
                         optimizer=SGD(gpu_model.parameters(), **settings), epochs=4,
                         batch_size=16, rng=2, progress=False)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(gpu_history["loss"], cpu_history["loss"], rtol=rtol)
    probabilities = nn.predict(gpu_model, cp.asarray(X))
    assert type(probabilities) is cp.ndarray
    np.testing.assert_allclose(cp.asnumpy(probabilities), nn.predict(model, X), rtol=rtol * 10,
                               atol=rtol)
    with pytest.raises(TypeError, match="move the model"):
        gpu_model.forward(X)
