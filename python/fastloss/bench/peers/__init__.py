"""The peers fastloss is compared with, a module each; every one is imported only when a
benchmark asks for it, and a missing one raises ``Unavailable`` with the reason and the
install command (the benchmark then skips it: ``fastloss.bench.cases``).

A builder takes the op's input arrays and returns a zero-argument callable that runs the op
once. Anything that need not be timed (output buffers, tensors wrapping the arrays) is made by
the builder, outside the callable.

    numpy_formulas   the seeds' NumPy formulas (also on CuPy arrays), and NumPy at its fastest
    numba_loops      the seeds' formulas in Numba loops, serial and parallel
    torch_calls      PyTorch's functions and backward kernels, on CPU or CUDA tensors
    jax_calls        jax.jit of jnp, optax and jax.nn, and their jax.grad (optional)
    crysx_nn_calls   crysx_nn's loss and activation functions
"""

INSTALL_HINT = 'pip install ".[bench]" in the fastloss source tree'


class Unavailable(Exception):
    """An implementation that cannot run here (a peer not installed); the message says why."""
