"""Mini-batches for training: ``batches(X, Y, batch_size)``."""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np

from ._arrays import Array, array_module as _array_module

__all__ = ["batches", "batch_count", "chunk_batches"]


def batch_count(n_samples: int, batch_size: int) -> int:
    """Number of batches of one epoch (the last, ragged one included)."""
    return -(-n_samples // batch_size)


def batches(X: Array, Y: Array, batch_size: int, *, shuffle: bool = True,
            rng: int | np.random.Generator | None = None) -> Iterator[tuple[Array, Array]]:
    """Yields ``(X_batch, Y_batch)`` over the first axis, one epoch.

    Args:
        X, Y: arrays (NumPy or CuPy, the same library) with the same first dimension.
        batch_size: positive int. The last batch holds the remainder; it is kept, not dropped.
        shuffle: draw a fresh order with ``rng`` (on the host, so a seed gives the same order
            for NumPy and CuPy data); False keeps the data order.
        rng: a seed or ``numpy.random.Generator``, used only when shuffling. Pass the same
            Generator every epoch for a new, reproducible order each epoch.
    Yields:
        Fresh arrays when shuffling (a gather), views of X and Y otherwise.
    """
    xp = _array_module(X)
    if _array_module(Y) is not xp:
        raise TypeError("X and Y must both be NumPy arrays or both CuPy arrays")
    if X.ndim == 0 or Y.ndim == 0:
        raise ValueError("X and Y must have a first (sample) axis; got a 0-d array")
    if len(X) != len(Y):
        raise ValueError(f"X has {len(X)} samples but Y has {len(Y)}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(X)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield X[start:start + batch_size], Y[start:start + batch_size]
        return
    order = np.random.default_rng(rng).permutation(n)
    if xp is not np:
        order = xp.asarray(order)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        yield xp.take(X, rows, axis=0), xp.take(Y, rows, axis=0)


def chunk_batches(X: Array, Y: Array, batch_size: int, *, shuffle: bool = True,
                  rng: int | np.random.Generator | None = None
                  ) -> Iterator[tuple[Array, Array]]:
    """``batches`` for Dask arrays: one epoch of ``(X_batch, Y_batch)`` in memory, computing
    one chunk of rows of X and Y at a time (so data larger than memory streams through).

    Without shuffling the batches are exactly those of ``batches`` on the whole data: a batch
    that straddles two chunks takes the first chunk's tail and the next chunk's head. With
    shuffling, the epoch visits the chunks in an order drawn from ``rng`` and, as each chunk
    arrives, the rows of that chunk in an order drawn next from ``rng``: a shuffle within
    chunks (and of the chunk order), reproducible from the seed, not a global permutation
    (which would read the data in random order). Y is rechunked to X's chunks of rows; the
    other axes of each are taken whole.
    """
    import dask

    if X.ndim == 0 or Y.ndim == 0:
        raise ValueError("X and Y must have a first (sample) axis; got a 0-d array")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but Y has {Y.shape[0]}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    rows = X.chunks[0]
    X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    Y = Y.rechunk({0: rows, **{axis: -1 for axis in range(1, Y.ndim)}})
    generator = np.random.default_rng(rng) if shuffle else None
    order = generator.permutation(len(rows)) if generator is not None else range(len(rows))
    tail_x = tail_y = None
    for block in order:
        xb, yb = dask.compute(X.blocks[int(block)], Y.blocks[int(block)])
        xp = _array_module(xb)
        if generator is not None:
            chosen = generator.permutation(len(xb))
            if xp is not np:
                chosen = xp.asarray(chosen)
            xb, yb = xp.take(xb, chosen, axis=0), xp.take(yb, chosen, axis=0)
        if tail_x is not None:
            xb, yb = xp.concatenate([tail_x, xb]), xp.concatenate([tail_y, yb])
        whole = len(xb) - len(xb) % batch_size
        for start in range(0, whole, batch_size):
            yield xb[start:start + batch_size], yb[start:start + batch_size]
        tail_x, tail_y = (xb[whole:], yb[whole:]) if whole < len(xb) else (None, None)
    if tail_x is not None:
        yield tail_x, tail_y
