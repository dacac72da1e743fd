"""JAX on the CPU (XLA, ``jax.jit``): what many users would pick instead, and on fused
elementwise work the strongest CPU peer. Each op is one jitted function, as a JAX user writes
it: ``jnp.mean((x - t) ** 2)``, ``optax.sigmoid_binary_cross_entropy``, ``jax.nn.sigmoid``,
PyTorch's clamped BCE on probabilities in ``jnp``, and ``jax.grad`` / ``jax.value_and_grad`` of
the losses for the gradients. XLA fuses each into one loop (its own exp/log, its own threads).

The arrays are copied into JAX buffers when the case is built, and the first call (the
compile) happens there too; a timed call runs the jitted function and waits for its result
(``block_until_ready``). JAX has no ``out=``: every call returns new arrays. float64 cases need
``jax_enable_x64``, which this module turns on (it changes no float32 computation).
"""

from __future__ import annotations

import functools

from fastloss.bench.peers import Unavailable

INSTALL_HINT = "pip install 'fastloss[jax]'"


@functools.cache
def _builders():
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as error:
        raise Unavailable(f"JAX is not installed ({error}; {INSTALL_HINT})") from None
    jax.config.update("jax_enable_x64", True)

    def mse(x, t):
        return jnp.mean((x - t) ** 2)

    def bce(p, t):  # PyTorch's definition: each log clamped at -100
        return -jnp.mean(t * jnp.maximum(jnp.log(p), -100.0)
                         + (1 - t) * jnp.maximum(jnp.log1p(-p), -100.0))

    def bce_logits(z, t):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(z, t))

    def sigmoid_backward(g, s):
        return g * s * (1 - s)

    def build(function):
        compiled = jax.jit(function)

        def make(*arrays):
            on_jax = [jnp.asarray(a) for a in arrays]
            jax.block_until_ready(compiled(*on_jax))  # the compile, outside any timed call
            return lambda: jax.block_until_ready(compiled(*on_jax))
        return make

    table = {}
    for name, loss in (("mse_loss", mse), ("binary_cross_entropy", bce),
                       ("binary_cross_entropy_with_logits", bce_logits)):
        table[name] = build(loss)
        table[f"{name}_grad"] = build(jax.grad(loss))
        table[f"{name}_and_grad"] = build(jax.value_and_grad(loss))
    table["sigmoid"] = build(jax.nn.sigmoid)
    table["sigmoid_backward"] = build(sigmoid_backward)
    return table


def builders() -> dict:
    """op name -> build(*arrays) -> run(); Unavailable when JAX is not installed."""
    return _builders()
