"""JAX (CPU) in the multi-class track: ``optax.softmax_cross_entropy_with_integer_labels``,
its mean under ``jax.jit``, and ``jax.value_and_grad`` of it for the fused op. Optional: an
absent JAX or optax raises Unavailable (pip install jax optax). The JIT compile happens when
the case is built, never in a timed call; results are made ready (block_until_ready) inside the
call, so the time is JAX's work and not its asynchronous dispatch."""

from __future__ import annotations

import functools

from fastloss.bench.peers import Unavailable


@functools.cache
def _functions():
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None

    def mean_loss(x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))
    return jax, jax.jit(mean_loss), jax.jit(jax.value_and_grad(mean_loss))


def multiclass_builders() -> dict:
    """op name -> build(logits, labels) -> run(); Unavailable without jax and optax."""
    functions = _functions()
    if functions is None:
        raise Unavailable("JAX is not installed (pip install jax optax)")
    jax, loss, loss_and_grad = functions

    def build(function):
        def make(x, y):
            x, y = jax.device_put(x), jax.device_put(y)
            jax.block_until_ready(function(x, y))  # compiles for these shapes
            return lambda: jax.block_until_ready(function(x, y))
        return make
    return {"cross_entropy": build(loss), "cross_entropy_and_grad": build(loss_and_grad)}
