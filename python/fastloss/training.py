"""The training loop: ``TrainStep`` (one SGD step), ``fit`` (epochs of mini-batches) and
``predict``; also reachable as ``fastloss.nn.fit`` and ``fastloss.nn.predict``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ._arrays import Array, array_module
from .data import batch_count, batches
# the modules of fastloss.nn, not the package: its __init__ re-exports fit and predict from here
from .nn._module import Module
from .nn.layers import Sequential, Sigmoid, Softmax, fused_stages, run_backward, run_forward
from .nn.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, _Loss

__all__ = ["TrainStep", "fit", "predict", "evaluate"]


def _trained_layers(model: Module, loss: _Loss) -> tuple[list[Module], _Loss]:
    """The layers that training runs and the loss it applies to their output.

    A Sequential ending in Sigmoid, trained with BCELoss, is trained on its logits with
    BCEWithLogitsLoss: the same loss where the sigmoid does not saturate, and finite
    (instead of clamped at 100) where it does. A Sequential ending in Softmax (over the
    classes, its last axis), trained with CrossEntropyLoss, is trained on the Softmax's input:
    the cross-entropy of its probabilities, from the logits in one fused pass.
    """
    layers = list(model.layers) if isinstance(model, Sequential) else [model]
    if type(loss) is BCELoss and layers and isinstance(layers[-1], Sigmoid):
        return layers[:-1], BCEWithLogitsLoss(weight=loss.weight, reduction=loss.reduction)
    if (type(loss) is CrossEntropyLoss and layers and isinstance(layers[-1], Softmax)
            and layers[-1].dim in (-1, 1)):
        return layers[:-1], loss
    return layers, loss


class TrainStep:
    """``step(X_batch, Y_batch)``: forward, loss and gradient in one fused call, backward,
    optimizer update; returns the batch loss (a NumPy scalar or 0-d CuPy array).

    Reduction 'none' trains on the sum of the per-element losses and returns their mean.
    """

    def __init__(self, model: Module, loss: _Loss, optimizer: Any) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model must be a fastloss.nn.Module, got {model!r}")
        if not isinstance(loss, _Loss):
            raise TypeError(f"loss must be a fastloss.nn loss module (MSELoss, BCELoss, "
                            f"BCEWithLogitsLoss, CrossEntropyLoss), got {loss!r}")
        if not hasattr(optimizer, "step"):
            raise TypeError(f"optimizer must have a step() method, got {optimizer!r}")
        self.model, self.optimizer = model, optimizer
        self.layers, self.loss = _trained_layers(model, loss)
        self.stages = fused_stages(self.layers)

    def __call__(self, X: Array, Y: Array) -> Any:
        value = self.loss.forward(run_forward(self.stages, X), Y)
        run_backward(self.stages, self.loss.backward(), need_input_grad=False)
        self.optimizer.step()
        return value.mean() if self.loss.reduction == "none" else value


def _progress_bar(total: int, enabled: bool | None, description: str) -> Any:
    """A tqdm bar on stderr, a plain line-per-update fallback, or nothing."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainProgress(total, description)
    return tqdm(total=total, desc=description, unit="batch", leave=False, file=sys.stderr)


class _PlainProgress:
    def __init__(self, total: int, description: str) -> None:
        self.total, self.count, self.description = total, 0, description

    def update(self, count: int = 1) -> None:
        self.count += count
        sys.stderr.write(f"\r{self.description}: {self.count}/{self.total}")
        sys.stderr.flush()

    def set_postfix_str(self, text: str) -> None:
        sys.stderr.write(f" {text}")

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _epoch_loss(total: Any, count: int) -> float:
    return float(total) / count if count else float("nan")


def fit(model: Module, X: Array, Y: Array, *, loss: _Loss, optimizer: Any, epochs: int,
        batch_size: int = 32, shuffle: bool = True,
        rng: int | np.random.Generator | None = None,
        validation_data: tuple[Array, Array] | None = None, progress: bool | None = None,
        callback: Callable[[int, dict[str, float]], Any] | None = None,
        ) -> dict[str, list[Any]]:
    """Trains ``model`` in place with mini-batch SGD and returns the per-epoch history.

    Args:
        model: a ``fastloss.nn`` module (usually ``Sequential``) whose parameters are in the
            array library of X and Y (NumPy, or CuPy after ``model.to('cuda')``).
        X, Y: ``(samples, features)`` and ``(samples, outputs)`` arrays of the model's dtype
            (for CrossEntropyLoss, Y may be ``(samples,)`` int64 class indices).
        loss: ``MSELoss``, ``BCELoss``, ``BCEWithLogitsLoss`` or ``CrossEntropyLoss`` (BCELoss
            after a final Sigmoid and CrossEntropyLoss after a final Softmax train through the
            logits, see ``TrainStep``).
        optimizer: ``fastloss.optim.SGD`` over ``model.parameters()``.
        epochs, batch_size: counts; the last, smaller batch of an epoch is kept.
        shuffle, rng: a new order every epoch from ``rng`` (a seed or Generator).
        validation_data: optional ``(X_val, Y_val)``; its loss is recorded every epoch.
        progress: show a progress bar on stderr (tqdm if installed); None means only when
            stderr is a terminal.
        callback: called as ``callback(epoch, record)`` after every epoch, with the record
            added to the history (e.g. to print it).
    Returns:
        ``{'epoch': [...], 'loss': [...]}`` (plus ``'val_loss'``), the loss of an epoch being the
        mean of its batch losses weighted by batch size (the sum for reduction='sum').
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if array_module(X) is not array_module(Y):
        raise TypeError("X and Y must both be NumPy arrays or both CuPy arrays")
    step = TrainStep(model, loss, optimizer)
    on_host = array_module(X) is np
    rng = np.random.default_rng(rng)
    history: dict[str, list[Any]] = {"epoch": [], "loss": []}
    if validation_data is not None:
        history["val_loss"] = []
    n_batches = batch_count(len(X), batch_size) if len(X) else 0
    bar = _progress_bar(epochs * n_batches, progress, "training")
    try:
        for epoch in range(1, epochs + 1):
            total = 0.0
            for X_batch, Y_batch in batches(X, Y, batch_size, shuffle=shuffle, rng=rng):
                value = step(X_batch, Y_batch)
                weight = 1 if loss.reduction == "sum" else len(X_batch)
                # Summed in double; on the GPU kept there: one synchronisation per epoch.
                total = (total + float(value) * weight if on_host
                         else total + value.astype("float64") * weight)
                if bar is not None:
                    bar.update(1)
            record = {"epoch": epoch,
                      "loss": float(total) if loss.reduction == "sum"
                      else _epoch_loss(total, len(X))}
            if validation_data is not None:
                record["val_loss"] = evaluate(model, *validation_data, loss=loss)
            for key, value in record.items():
                history[key].append(value)
            if bar is not None:
                bar.set_postfix_str(f"epoch {epoch} loss {record['loss']:.4g}")
            if callback is not None:
                callback(epoch, record)
    finally:
        if bar is not None:
            bar.close()
    return history


def predict(model: Module, X: Array, *, batch_size: int | None = None) -> Array:
    """The model's output on X, as a fresh array (probabilities after a final Sigmoid or
    Softmax)."""
    xp = array_module(X)
    if batch_size is None or len(X) <= batch_size:
        return model.forward(X).copy()
    return xp.concatenate([model.forward(X[start:start + batch_size]).copy()
                           for start in range(0, len(X), batch_size)])


def evaluate(model: Module, X: Array, Y: Array, *, loss: _Loss) -> float:
    """The loss of ``model`` on (X, Y) as a float (no parameter changes)."""
    layers, loss = _trained_layers(model, loss)
    evaluation = loss.fresh()
    value = evaluation.forward(run_forward(fused_stages(layers), X), Y)
    return float(value.mean() if evaluation.reduction == "none" else value)
