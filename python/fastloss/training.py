"""The training loop: ``TrainStep`` (one SGD step), ``fit`` (epochs of mini-batches) and
``predict``; also reachable as ``fastloss.nn.fit`` and ``fastloss.nn.predict``."""

from __future__ import annotations

import math
import numbers
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ._arrays import Array, array_module as _array_module, is_dask as _is_dask
from .data import batch_count, batches, chunk_batches
# the modules of fastloss.nn, not the package: its __init__ re-exports fit and predict from here
from .nn._module import Module
from .nn.layers import Dense, Sequential, Sigmoid, Softmax, _fused_stages, _run_backward, _run_forward
from .nn.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, _Loss

__all__ = ["TrainStep", "fit", "predict", "evaluate"]

_NONFINITE_ACTIONS = ("raise", "warn", "ignore")


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
        self.stages = _fused_stages(self.layers)
        if isinstance(loss, BCEWithLogitsLoss) and self.layers and isinstance(
                self.layers[-1], Sigmoid):
            warnings.warn(
                "the model ends in Sigmoid and BCEWithLogitsLoss applies a sigmoid of its own, "
                "so the loss sees sigmoid(sigmoid(z)); use BCELoss after a final Sigmoid (it "
                "is trained through the logits), or drop the Sigmoid", UserWarning,
                stacklevel=_caller_stacklevel())

    def __call__(self, X: Array, Y: Array) -> Any:
        value = self.loss.forward(_run_forward(self.stages, X), Y)
        _run_backward(self.stages, self.loss.backward(), need_input_grad=False)
        self.optimizer.step()
        return value.mean() if self.loss.reduction == "none" else value


def _caller_stacklevel() -> int:
    """The stacklevel of a warning that names the first frame outside this module."""
    level = 1
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    return level


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _model_arrays(model: Module) -> Array | None:
    """A parameter array of the model (its dtype and array library), None if it has none."""
    parameters = model.parameters()
    return parameters[0].data if parameters else None


def _output_shape(layers: list[Module], samples: int) -> tuple[int, ...] | None:
    """The shape of the trained layers' output for ``samples`` rows, where the layers say it:
    the last Dense sets the width and the activations after it keep it; None when a module
    of another kind could change it."""
    width = None
    for layer in layers:
        if isinstance(layer, Dense):
            width = layer.out_features
        elif isinstance(layer, Sequential) or layer.parameters():
            return None
    return None if width is None else (samples, width)


def _check_features(X: Array, name: str, like: Array | None, layers: list[Module]) -> None:
    """``X`` as the model's first layer takes it: a 2-D array of its dtype and library."""
    if not (isinstance(X, np.ndarray) or type(X).__module__.startswith("cupy")):
        raise TypeError(f"{name} must be a numpy.ndarray or a cupy.ndarray, got "
                        f"{_type_name(X)}; convert it with np.asarray({name}, "
                        f"dtype=np.float32)")
    if X.ndim != 2:
        hint = f": for one feature per sample use {name}.reshape(-1, 1)" if X.ndim == 1 else ""
        raise ValueError(f"{name} has shape {X.shape}, expected (samples, features){hint}")
    if like is None:
        return
    if type(X) is not type(like):
        move = (f"cupy.asnumpy({name}) or the model with .to('cuda')"
                if isinstance(like, np.ndarray) else
                f"cupy.asarray({name}) or the model with .to('cpu')")
        raise TypeError(f"{name} is a {_type_name(X)} but the model's parameters are "
                        f"{_type_name(like)} arrays; move the data with {move}")
    first = layers[0] if layers else None
    if isinstance(first, Dense) and X.shape[1] != first.in_features:
        raise ValueError(f"{name} has {X.shape[1]} features (shape {X.shape}) but the "
                         f"model's first Dense layer takes {first.in_features}")
    if X.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {X.dtype} but the model's parameters are "
                        f"{like.dtype}: convert it with {name}.astype(np.{like.dtype.name}) "
                        f"(or build the model with dtype=np.{X.dtype.name})")


def _check_data(model: Module, layers: list[Module], loss: _Loss, X: Array, Y: Array,
                names: tuple[str, str]) -> None:
    """X and Y checked against the model and the loss before the first step, each error
    saying how to fix it (instead of a layer's error deep inside the first batch)."""
    like = _model_arrays(model)
    _check_features(X, names[0], like, layers)
    if not (isinstance(Y, np.ndarray) or type(Y).__module__.startswith("cupy")):
        raise TypeError(f"{names[1]} must be a numpy.ndarray or a cupy.ndarray, got "
                        f"{_type_name(Y)}; convert it with np.asarray({names[1]}, "
                        f"dtype=np.float32)")
    if type(Y) is not type(X):
        raise TypeError(f"{names[0]} is a {_type_name(X)} but {names[1]} is a "
                        f"{_type_name(Y)}; both must be NumPy arrays or both CuPy arrays")
    if Y.ndim == 0 or len(X) != len(Y):
        count = "a 0-d array" if Y.ndim == 0 else f"{len(Y)}"
        raise ValueError(f"{names[0]} has {len(X)} samples but {names[1]} has {count}; "
                         "they must have one row per sample, in the same order")
    dtype = X.dtype if like is None else like.dtype
    loss.check_target(Y, _output_shape(layers, len(X)), dtype, names[1])


def _check_dask_data(model: Module, layers: list[Module], loss: _Loss, X: Any, Y: Any,
                     names: tuple[str, str] = ("X", "Y")) -> None:
    """Dask X and Y checked from their metadata (shape, dtype, the array type of their blocks)
    as _check_data checks arrays in memory, without computing anything."""
    for value, name in ((X, names[0]), (Y, names[1])):
        if not _is_dask(value):
            other = names[1] if name == names[0] else names[0]
            raise TypeError(f"{other} is a Dask array but {name} is a {_type_name(value)}; "
                            "both must be Dask arrays (dask.array.from_array) or both in memory")
        if any(math.isnan(size) for size in value.shape):
            raise ValueError(f"{name} has unknown chunk sizes {value.shape}; call "
                             f"{name}.compute_chunk_sizes() first")
    like = _model_arrays(model)
    meta = X._meta
    if like is not None and type(meta) is not type(like):
        raise TypeError(f"{names[0]} holds blocks of {_type_name(meta)} but the model's "
                        f"parameters are {_type_name(like)} arrays")
    if X.ndim != 2:
        raise ValueError(f"{names[0]} has shape {X.shape}, expected (samples, features)")
    first = layers[0] if layers else None
    if isinstance(first, Dense) and X.shape[1] != first.in_features:
        raise ValueError(f"{names[0]} has {X.shape[1]} features (shape {X.shape}) but the "
                         f"model's first Dense layer takes {first.in_features}")
    dtype = X.dtype if like is None else like.dtype
    if X.dtype != dtype:
        raise TypeError(f"{names[0]} has dtype {X.dtype} but the model's parameters are {dtype}: "
                        f"convert it with {names[0]}.astype(np.{dtype.name})")
    if Y.ndim == 0 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"{names[0]} has {X.shape[0]} samples but {names[1]} has "
                         f"{'a 0-d array' if Y.ndim == 0 else Y.shape[0]}; they must have one "
                         "row per sample, in the same order")
    loss.check_target(Y, _output_shape(layers, X.shape[0]), dtype, names[1])


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


def _first_nonfinite(values: list[Any]) -> int | None:
    """The index of the first non-finite loss among 0-d device arrays (one copy back)."""
    if not values:
        return None
    host = _array_module(values[0]).stack(values).get()
    bad = np.flatnonzero(~np.isfinite(host))
    return int(bad[0]) if bad.size else None


def _report_nonfinite(action: str, value: float, epoch: int, batch: int,
                      n_batches: int) -> None:
    """A non-finite batch loss: raises for 'raise', warns for 'warn'."""
    message = (f"the training loss is {value} at epoch {epoch}, batch {batch} of {n_batches}: "
               "training diverged (a smaller learning rate usually helps; or check the data "
               "for NaN and inf); fit(..., on_nonfinite='ignore') keeps going")
    if action == "raise":
        raise FloatingPointError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=_caller_stacklevel())


def fit(model: Module, X: Array, Y: Array, *, loss: _Loss, optimizer: Any, epochs: int,
        batch_size: int = 32, shuffle: bool = True,
        rng: int | np.random.Generator | None = None,
        validation_data: tuple[Array, Array] | None = None, progress: bool | None = None,
        callback: Callable[[int, dict[str, float]], Any] | None = None,
        on_nonfinite: str = "raise") -> dict[str, list[Any]]:
    """Trains ``model`` in place with mini-batch SGD and returns the per-epoch history.

    Args:
        model: a ``fastloss.nn`` module (usually ``Sequential``) whose parameters are in the
            array library of X and Y (NumPy, or CuPy after ``model.to('cuda')``).
        X, Y: ``(samples, features)`` and ``(samples, outputs)`` arrays of the model's dtype
            (``Y`` as the loss needs it: ``loss.check_target``; a 1-D ``Y`` of one target per
            sample is ``Y.reshape(-1, 1)``; for CrossEntropyLoss, ``(samples,)`` int64 class
            indices or probabilities of the output's shape). Both may be Dask arrays: the
            mini-batches then stream from one chunk of rows at a time
            (``fastloss.data.chunk_batches``), so data larger than memory trains; with
            shuffle=False the batches, hence the weights, are those of the same data in memory.
        loss: ``MSELoss``, ``BCELoss``, ``BCEWithLogitsLoss`` or ``CrossEntropyLoss`` (BCELoss
            after a final Sigmoid and CrossEntropyLoss after a final Softmax train through the
            logits, see ``TrainStep``; BCEWithLogitsLoss after a Sigmoid warns).
        optimizer: ``fastloss.optim.SGD`` over ``model.parameters()``.
        epochs, batch_size: counts; the last, smaller batch of an epoch is kept.
        shuffle, rng: a new order every epoch from ``rng`` (a seed or Generator); for Dask
            data the chunks in a random order, then the rows of each chunk (chunk_batches).
        validation_data: optional ``(X_val, Y_val)``; its loss is recorded every epoch
            (``evaluate``: for Dask arrays, computed chunk by chunk of rows).
        progress: show a progress bar on stderr (tqdm if installed); None means only when
            stderr is a terminal.
        callback: called as ``callback(epoch, record)`` after every epoch, with the record
            added to the history (e.g. to print it).
        on_nonfinite: what a NaN or infinite batch loss does: 'raise' (a FloatingPointError
            naming the epoch and the batch; on the GPU at the end of that epoch, as the losses
            are read back once an epoch), 'warn' (once, then keep going) or 'ignore'.
    Returns:
        ``{'epoch': [...], 'loss': [...]}`` (plus ``'val_loss'``), the loss of an epoch being the
        mean of its batch losses weighted by batch size (the sum for reduction='sum').
    Raises:
        TypeError, ValueError: before the first step, for X, Y or validation_data that do not
            fit the model and the loss (the message says how to fix it), or bad settings.
        FloatingPointError: a non-finite loss with ``on_nonfinite='raise'``.
    """
    if not isinstance(epochs, numbers.Integral) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if on_nonfinite not in _NONFINITE_ACTIONS:
        raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got "
                         f"{on_nonfinite!r}")
    step = TrainStep(model, loss, optimizer)
    streamed = _is_dask(X) or _is_dask(Y)
    if streamed:
        _check_dask_data(model, step.layers, loss, X, Y)
    else:
        _check_data(model, step.layers, loss, X, Y, ("X", "Y"))
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise TypeError("validation_data must be a pair (X_val, Y_val), got "
                            f"{_type_name(validation_data)}")
        names = ("validation_data[0]", "validation_data[1]")
        if any(_is_dask(part) for part in validation_data):
            _check_dask_data(model, step.layers, loss, *validation_data, names)
        else:
            _check_data(model, step.layers, loss, *validation_data, names)
    on_host = isinstance(X._meta if streamed else X, np.ndarray)
    epoch_batches = chunk_batches if streamed else batches
    checked = on_nonfinite  # becomes 'ignore' once a 'warn' has warned
    rng = np.random.default_rng(rng)
    history: dict[str, list[Any]] = {"epoch": [], "loss": []}
    if validation_data is not None:
        history["val_loss"] = []
    n_batches = batch_count(len(X), batch_size) if len(X) else 0
    bar = _progress_bar(epochs * n_batches, progress, "training")
    try:
        for epoch in range(1, epochs + 1):
            total: Any = 0.0
            device_values = []
            for batch, (X_batch, Y_batch) in enumerate(
                    epoch_batches(X, Y, batch_size, shuffle=shuffle, rng=rng), start=1):
                value = step(X_batch, Y_batch)
                weight = 1 if loss.reduction == "sum" else len(X_batch)
                # Summed in double; on the GPU kept there: one synchronisation per epoch.
                if on_host:
                    value = float(value)
                    if not (math.isfinite(value) or checked == "ignore"):
                        _report_nonfinite(checked, value, epoch, batch, n_batches)
                        checked = "ignore"  # warned once
                    total += value * weight
                else:
                    device_values.append(value.astype("float64"))
                    total = total + device_values[-1] * weight
                if bar is not None:
                    bar.update(1)
            total = float(total)  # on the GPU: the epoch's one synchronisation
            if not (on_host or math.isfinite(total) or checked == "ignore"):
                first = _first_nonfinite(device_values)
                if first is not None:
                    _report_nonfinite(checked, float(device_values[first]), epoch, first + 1,
                                      n_batches)
                    checked = "ignore"
            record = {"epoch": epoch,
                      "loss": total if loss.reduction == "sum" else _epoch_loss(total, len(X))}
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
    Softmax). For a Dask X, a Dask array of the outputs, chunk by chunk of rows (each chunk in
    batches of ``batch_size``), from a copy of the model as it is now."""
    if _is_dask(X):
        return _predict_chunks(model, X, batch_size)
    xp = _array_module(X)
    if batch_size is None or len(X) <= batch_size:
        return model.forward(X).copy()
    return xp.concatenate([model.forward(X[start:start + batch_size]).copy()
                           for start in range(0, len(X), batch_size)])


def _predict_block(model: Module, batch_size: int | None, block: Array) -> Array:
    import copy

    return predict(copy.deepcopy(model), block, batch_size=batch_size)  # as _forward_block


def _predict_chunks(model: Module, X: Any, batch_size: int | None) -> Any:
    import copy
    from functools import partial

    X = X.rechunk({1: -1}) if X.ndim == 2 else X
    frozen = copy.deepcopy(model)  # later training must not change a pending prediction
    width = predict(frozen, X[:1].compute()).shape[1:]
    return X.map_blocks(partial(_predict_block, frozen, batch_size), dtype=X.dtype,
                        chunks=(X.chunks[0],) + tuple((size,) for size in width))


def evaluate(model: Module, X: Array, Y: Array, *, loss: _Loss) -> float:
    """The loss of ``model`` on (X, Y) as a float (no parameter changes). Dask X and Y: the
    model's outputs chunk by chunk of rows and the loss of those Dask arrays, computed (on the
    default scheduler, or the distributed Client in use)."""
    layers, loss = _trained_layers(model, loss)
    evaluation = loss.fresh()
    if _is_dask(X) or _is_dask(Y):
        return _evaluate_chunks(layers, evaluation, X, Y)
    value = evaluation.forward(_run_forward(_fused_stages(layers), X), Y)
    return float(value.mean() if evaluation.reduction == "none" else value)


def _forward_block(layers: list[Module], block: Array) -> Array:
    import copy

    # each block on its own copy: the threaded scheduler runs blocks at once, and the layers
    # keep their forward's buffers (shared, they raced: a val_loss 7 % off, now and then)
    return _run_forward(_fused_stages(copy.deepcopy(layers)), block).copy()


def _evaluate_chunks(layers: list[Module], evaluation: _Loss, X: Any, Y: Any) -> float:
    import copy
    from functools import partial

    X = X.rechunk({1: -1}) if X.ndim == 2 else X
    frozen = copy.deepcopy(layers)  # the model as it is now, for the blocks (and the workers)
    width = _forward_block(frozen, X[:1].compute()).shape[1:]
    outputs = X.map_blocks(partial(_forward_block, frozen), dtype=X.dtype,
                           chunks=(X.chunks[0],) + tuple((size,) for size in width))
    value = evaluation.value(outputs, Y)
    if evaluation.reduction == "none":
        value = value.mean()
    return float(value.compute())
