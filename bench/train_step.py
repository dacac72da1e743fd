"""One SGD step of a 30-64-64-1 MLP (ReLU, sigmoid output, BCE) at batch 32, float32:
fastloss.nn against hand-written NumPy, PyTorch CPU and a jax.jit step (when JAX is installed).

    python bench/train_step.py            a table of median microseconds per step, each
                                          implementation in a fresh process, rounds interleaved
    pytest bench --benchmark -k train     the same steps under pytest-benchmark

Every implementation does the same work: forward, BCE and its gradient, backward, and an SGD
update with momentum 0.9 of all six parameters, starting from the same weights. Each builder
returns the step function with a ``parameters()`` attribute: copies of its current (weight,
bias) pairs as NumPy arrays, so that a test can check a step against an independent one, and
a ``finish()`` attribute that waits for the steps still queued (JAX dispatches asynchronously,
as a training loop runs it: the timed loop waits once, at its end).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH, SIZES = 32, (30, 64, 64, 1)
LR, MOMENTUM = 0.01, 0.9


def problem(seed=0):
    """A batch, its targets and the initial (weight, bias) pairs, float32."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    Y = (rng.random((BATCH, 1)) < 0.5).astype(np.float32)
    params = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        bound = 1 / np.sqrt(fan_in)
        params.append((rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                       rng.uniform(-bound, bound, fan_out).astype(np.float32)))
    return X, Y, params


def fastloss_step(seed=0):
    from fastloss import nn
    from fastloss.optim import SGD
    from fastloss.training import TrainStep
    X, Y, params = problem(seed)
    layers = []
    for index, (weight, bias) in enumerate(params):
        dense = nn.Dense(weight.shape[1], weight.shape[0])
        dense.weight.data[...], dense.bias.data[...] = weight, bias
        layers += [dense, nn.ReLU() if index < len(params) - 1 else nn.Sigmoid()]
    model = nn.Sequential(*layers)
    step = TrainStep(model, nn.BCELoss(), SGD(model.parameters(), lr=LR, momentum=MOMENTUM))
    run = lambda: step(X, Y)  # noqa: E731  (an attribute goes on it below)
    return _with_parameters(run, lambda: [(layer.weight.data, layer.bias.data)
                                          for layer in model.layers
                                          if isinstance(layer, nn.Dense)])


def numpy_step(seed=0):
    """The step as a NumPy user writes it: plain expressions, a clipped BCE."""
    X, Y, params = problem(seed)
    weights = [[w.copy(), b.copy()] for w, b in params]
    velocity = [[np.zeros_like(w), np.zeros_like(b)] for w, b in params]
    lr, momentum = np.float32(LR), np.float32(MOMENTUM)

    def step():
        activations, pre = [X], []
        for index, (w, b) in enumerate(weights):
            z = activations[-1] @ w.T + b
            pre.append(z)
            activations.append(np.maximum(z, 0) if index < len(weights) - 1
                               else 1 / (1 + np.exp(-z)))
        p = np.clip(activations[-1], 1e-7, 1 - 1e-7)
        loss = -np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p))
        grad = (activations[-1] - Y) / len(X)  # d BCE / d logits
        for index in range(len(weights) - 1, -1, -1):
            w, b = weights[index]
            grad_w, grad_b = grad.T @ activations[index], grad.sum(axis=0)
            if index > 0:
                grad = (grad @ w) * (pre[index - 1] > 0)
            for slot, (param, g) in enumerate(((w, grad_w), (b, grad_b))):
                v = velocity[index][slot]
                v *= momentum
                v += g
                param -= lr * v
        return loss
    return _with_parameters(step, lambda: weights)


def torch_step(seed=0):
    import torch
    X, Y, params = problem(seed)
    layers = []
    for index, (weight, bias) in enumerate(params):
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        layers.append(linear)
        if index < len(params) - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    criterion = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    inputs, targets = torch.from_numpy(X), torch.from_numpy(Y)

    def step():
        optimizer.zero_grad()
        loss = criterion(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss.detach()
    linears = [layer for layer in model if isinstance(layer, torch.nn.Linear)]
    return _with_parameters(step, lambda: [(linear.weight.detach().numpy(),
                                            linear.bias.detach().numpy()) for linear in linears])


def jax_step(seed=0):
    """``jax.value_and_grad`` of the MLP's BCE on logits (optax.sigmoid_binary_cross_entropy)
    and ``optax.sgd`` with momentum, one ``jax.jit`` of the whole step; weights laid out as
    PyTorch's, (out, in)."""
    import jax
    import jax.numpy as jnp
    import optax
    X, Y, initial = problem(seed)
    inputs, targets = jnp.asarray(X), jnp.asarray(Y)
    optimizer = optax.sgd(learning_rate=LR, momentum=MOMENTUM)

    def loss_of(params, x, y):
        for index, (weight, bias) in enumerate(params):
            x = x @ weight.T + bias
            if index < len(params) - 1:
                x = jax.nn.relu(x)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(x, y))

    @jax.jit
    def update(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in initial]
    state = {"params": params, "opt_state": optimizer.init(params)}

    def step():
        state["params"], state["opt_state"], loss = update(state["params"], state["opt_state"],
                                                           inputs, targets)
        return loss
    step.finish = lambda: jax.block_until_ready(state["params"])
    return _with_parameters(step, lambda: state["params"])


def _with_parameters(step, current):
    """``step`` with ``step.parameters()``: copies of the (weight, bias) pairs ``current()``
    returns. An attribute, not a wrapper, so the timed call is the step itself."""
    step.parameters = lambda: [(np.array(weight), np.array(bias)) for weight, bias in current()]
    if not hasattr(step, "finish"):
        step.finish = lambda: None
    return step


STEPS = {"fastloss": fastloss_step, "numpy": numpy_step, "torch": torch_step, "jax": jax_step}


def median_microseconds(step, repeats=9, calls=2000):
    for _ in range(200):  # warm-up: buffers, BLAS threads, torch's allocator, JAX's compile
        step()
    step.finish()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        step.finish()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times), min(times)


def _one(name):
    """Times one implementation in this process; prints {"median": us, "best": us} or why not."""
    try:
        step = STEPS[name]()
    except ImportError as error:
        print(json.dumps({"skipped": str(error)}))
        return 0
    median, best = median_microseconds(step)
    print(json.dumps({"median": median, "best": best}))
    return 0


def main(argv=None):
    """Each implementation in a fresh process (no warm caches, allocators or thread pools left by
    another), ``rounds`` times, the rounds interleaved; the least median of each is kept."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one"]:
        return _one(argv[1])
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 3
    print(f"one SGD step, {'-'.join(map(str, SIZES))} MLP, batch {BATCH}, float32 (median of 9 x "
          f"2000 steps, each implementation in a fresh process; least of {rounds} rounds; load "
          f"average {os.getloadavg()[0]:.2f})")
    results: dict = {}
    skipped: dict = {}
    for _ in range(rounds):
        for name in STEPS:
            if name in skipped:
                continue
            out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            if "skipped" in result:
                skipped[name] = result["skipped"]
                continue
            best = results.get(name)
            if best is None or result["median"] < best["median"]:
                results[name] = result
    for name, result in results.items():
        print(f"{name:9s} {result['median']:8.1f} us   (best single run {result['best']:.1f})")
    for name, reason in skipped.items():
        print(f"{name:9s} skipped ({reason})")
    if "fastloss" in results:
        for peer in ("numpy", "torch", "jax"):
            if peer in results:
                print(f"fastloss is {results[peer]['median'] / results['fastloss']['median']:.2f}x "
                      f"{peer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
