"""``python -m fastloss train``: a small dense network on a data set that ships with
scikit-learn, trained with fastloss.nn (breast_cancer: BCE; diabetes: MSE; digits: softmax
cross-entropy over 10 classes).

What the command cannot do here (a package missing, no GPU, a loss that diverged) is a
``CommandError``: ``python -m fastloss`` prints its message as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from . import nn
from ._arrays import as_module_array, module_for_device
from .optim import SGD

# fastloss is installed from its source tree (it is not on a package index): extras are named
# as a pip command run there.
INSTALL_TRAIN = ('pip install ".[train]" in the fastloss source tree (scikit-learn, matplotlib, '
                 'tqdm)')
INSTALL_CUDA = ('pip install ".[cuda12]" (CUDA 12) or ".[cuda13]" (CUDA 13) in the fastloss '
                'source tree')


class CommandError(RuntimeError):
    """A reason the command cannot run, worded for the command line (no traceback)."""


# name -> loader in sklearn.datasets, task, and the defaults of the command line. diabetes
# (353 training samples) overfits a 64-64 MLP within a few epochs: one small layer and weight
# decay reach the test R^2 of least squares (0.33 on the seed-0 split).
DATASETS = {
    "breast_cancer": {"loader": "load_breast_cancer", "task": "classification",
                      "hidden": [64, 64], "epochs": 30, "lr": 0.01, "weight_decay": 0.0},
    "diabetes": {"loader": "load_diabetes", "task": "regression",
                 "hidden": [32], "epochs": 60, "lr": 0.002, "weight_decay": 0.05},
    # 8x8 images of the digits 0-9 (1437 training samples): 64 -> 64 -> 10, softmax
    "digits": {"loader": "load_digits", "task": "multiclass",
               "hidden": [64], "epochs": 30, "lr": 0.01, "weight_decay": 0.0},
}


def load_dataset(name, *, seed=0, dtype=np.float32, test_fraction=0.2):
    """(X_train, Y_train, X_test, Y_test, y_scale): standardised with the training split's
    statistics (regression targets too; ``y_scale`` = (mean, std) undoes that); targets are
    (samples, 1), or (samples,) int64 class indices for the multi-class task. The split is
    stratified for classification."""
    try:
        import sklearn.datasets
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise CommandError(f"the train command needs scikit-learn for its data sets: "
                           f"{INSTALL_TRAIN}") from error
    loader, task = DATASETS[name]["loader"], DATASETS[name]["task"]
    X, y = getattr(sklearn.datasets, loader)(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y.astype(np.float64), test_size=test_fraction, random_state=seed,
        stratify=y if task != "regression" else None)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature (digits' border pixels) stays 0
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    y_scale = (0.0, 1.0)
    if task == "regression":
        y_scale = (y_train.mean(), y_train.std())
        y_train, y_test = (y_train - y_scale[0]) / y_scale[1], (y_test - y_scale[0]) / y_scale[1]

    def prepared(a):
        return np.ascontiguousarray(a.reshape(len(a), -1), dtype=dtype)
    if task == "multiclass":
        return (prepared(X_train), y_train.astype(np.int64), prepared(X_test),
                y_test.astype(np.int64), y_scale)
    return (prepared(X_train), prepared(y_train), prepared(X_test), prepared(y_test), y_scale)


def build_mlp(in_features, hidden, *, classification, dtype=np.float32, seed=0, classes=None):
    """in -> hidden... (ReLU, He init) -> 1, with a final Sigmoid for classification; with
    ``classes``, -> classes and a final Softmax instead."""
    rng = np.random.default_rng(seed)
    layers, width = [], in_features
    for size in hidden:
        layers += [nn.Dense(width, size, init="he_uniform", dtype=dtype, rng=rng), nn.ReLU()]
        width = size
    layers.append(nn.Dense(width, classes or 1, init="xavier_uniform", dtype=dtype, rng=rng))
    if classes:
        layers.append(nn.Softmax())
    elif classification:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def held_out_metrics(model, X_test, Y_test, *, classification, y_scale):
    """accuracy for classification; RMSE (in the target's units) and R^2 for regression."""
    predicted = as_module_array(nn.predict(model, X_test), np).astype(np.float64)
    truth = as_module_array(Y_test, np)
    if truth.ndim == 1:  # class indices: the most probable class
        return {"accuracy": float(np.mean(np.argmax(predicted, axis=1) == truth))}
    truth = truth.astype(np.float64)
    if classification:
        return {"accuracy": float(np.mean((predicted > 0.5) == (truth > 0.5)))}
    residual = (predicted - truth) * y_scale[1]
    variance = np.var(truth * y_scale[1])
    return {"rmse": float(np.sqrt(np.mean(residual ** 2))),
            "r2": float(1.0 - np.mean(residual ** 2) / variance)}


def check_device(device):
    """CommandError unless ``device`` can train here ('cuda': CuPy importable, a GPU seen)."""
    if device == "cpu":
        return
    try:
        import cupy
    except ImportError:
        raise CommandError(f"--device {device} needs CuPy: {INSTALL_CUDA}") from None
    try:
        available = bool(cupy.cuda.is_available())
    except Exception as error:  # a broken driver install fails in many ways
        raise CommandError(f"--device {device}: CuPy is installed but cannot reach a GPU "
                           f"({type(error).__name__}: {error})") from None
    if not available:
        raise CommandError(f"--device {device}: CuPy {cupy.__version__} finds no usable GPU "
                           "here; leave out --device to train on the CPU")


def run(args):
    check_device(args.device)
    defaults = DATASETS[args.dataset]
    hidden, epochs, lr, weight_decay = (
        defaults[name] if getattr(args, name) is None else getattr(args, name)
        for name in ("hidden", "epochs", "lr", "weight_decay"))
    classification = defaults["task"] != "regression"
    multiclass = defaults["task"] == "multiclass"
    dtype = np.dtype(args.dtype)
    X_train, Y_train, X_test, Y_test, y_scale = load_dataset(args.dataset, seed=args.seed,
                                                             dtype=dtype)
    classes = int(Y_train.max()) + 1 if multiclass else None
    model = build_mlp(X_train.shape[1], hidden, classification=classification,
                      dtype=dtype, seed=args.seed, classes=classes)
    if args.device != "cpu":
        xp = module_for_device(args.device)
        model.to(args.device)
        X_train, Y_train, X_test, Y_test = (xp.asarray(a) for a in
                                            (X_train, Y_train, X_test, Y_test))
    loss = (nn.CrossEntropyLoss() if multiclass else nn.BCELoss() if classification
            else nn.MSELoss())
    optimizer = SGD(model.parameters(), lr=lr, momentum=args.momentum,
                    weight_decay=weight_decay)
    sizes = "-".join(str(n) for n in [X_train.shape[1], *hidden, classes or 1])
    print(f"{args.dataset}: {len(X_train)} training / {len(X_test)} test samples, "
          f"{sizes} MLP, {type(loss).__name__}, SGD lr={lr} momentum={args.momentum} "
          f"weight_decay={weight_decay}, "
          f"batch {args.batch_size}, {dtype}, {args.device}")

    def report(epoch, record):
        extra = f"  val_loss {record['val_loss']:.6f}" if "val_loss" in record else ""
        print(f"epoch {epoch:4d}  loss {record['loss']:.6f}{extra}", flush=True)

    try:
        # fit reports a loss that stops being finite; NumPy's own overflow warnings from the
        # products before it would only repeat that
        with np.errstate(over="ignore", invalid="ignore"):
            history = nn.fit(model, X_train, Y_train, loss=loss, optimizer=optimizer,
                             epochs=epochs, batch_size=args.batch_size, rng=args.seed,
                             validation_data=(X_test, Y_test), progress=args.progress,
                             callback=report)
    except FloatingPointError as error:  # fit names the epoch and the batch, then advises
        where = str(error).split(": training diverged")[0]
        raise CommandError(f"{where}: training diverged; try a smaller --lr than {lr}") \
            from None
    metrics = held_out_metrics(model, X_test, Y_test, classification=classification,
                           y_scale=y_scale)
    print("test " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    if args.save:
        model.save(args.save)
        print(f"parameters written to {args.save}")
    if args.plot:
        plot_history(history, args.plot, title=f"{args.dataset} ({sizes})")
    return 0


def plot_history(history, path, *, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed, so no plot was written: {INSTALL_TRAIN}",
              file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(history["epoch"], history["loss"], label="training loss")
    if "val_loss" in history:
        axes.plot(history["epoch"], history["val_loss"], label="test loss")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"loss curve written to {path}")


def _hidden_sizes(text):
    try:
        sizes = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,64, got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("hidden sizes must be positive")
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _real(text, *, positive):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        wanted = "a positive" if positive else "a non-negative"
        raise argparse.ArgumentTypeError(f"expected {wanted} number, got {text}")
    return value


def _positive_real(text):
    return _real(text, positive=True)


def _non_negative_real(text):
    return _real(text, positive=False)


def add_arguments(parser):
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="breast_cancer",
                        help="breast_cancer (BCE, accuracy), diabetes (MSE, RMSE and R^2) or "
                             "digits (10 classes, softmax cross-entropy, accuracy)")
    parser.add_argument("--hidden", type=_hidden_sizes, default=None,
                        help="hidden layer sizes, comma separated (default: 64,64 for "
                             "breast_cancer, 32 for diabetes, 64 for digits)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="passes over the training set (default: 30 for breast_cancer "
                             "and digits, 60 for diabetes)")
    parser.add_argument("--batch-size", type=_positive_int, default=32,
                        help="samples per SGD step (default: %(default)s)")
    parser.add_argument("--lr", type=_positive_real, default=None,
                        help="learning rate (default: 0.01 breast_cancer and digits, 0.002 "
                             "diabetes)")
    parser.add_argument("--momentum", type=_non_negative_real, default=0.9,
                        help="SGD momentum (default: %(default)s)")
    parser.add_argument("--weight-decay", type=_non_negative_real, default=None,
                        help="default: 0 for breast_cancer, 0.05 for diabetes")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda trains on CuPy arrays (needs CuPy and a GPU: "
                             f"{INSTALL_CUDA})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the split, the initial weights and the batch order")
    parser.add_argument("--plot", metavar="PNG", help="write the loss curve (needs matplotlib)")
    parser.add_argument("--save", metavar="NPZ", help="write the trained parameters")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
