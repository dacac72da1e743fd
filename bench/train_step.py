"""One SGD step of a 30-64-64-1 MLP (ReLU, sigmoid output, BCE) at batch 32, float32:
fastloss.nn against hand-written NumPy and PyTorch CPU.

    python bench/train_step.py            a table of median microseconds per step
    pytest bench --benchmark -k train     the same steps under pytest-benchmark

Every implementation does the same work: forward, BCE and its gradient, backward, and an SGD
update with momentum 0.9 of all six parameters, starting from the same weights. Each builder
returns the step function with a ``parameters()`` attribute: copies of its current (weight,
bias) pairs as NumPy arrays, so that a test can check a step against an independent one.
"""

from __future__ import annotations

import statistics
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


def _with_parameters(step, current):
    """``step`` with ``step.parameters()``: copies of the (weight, bias) pairs ``current()``
    returns. An attribute, not a wrapper, so the timed call is the step itself."""
    step.parameters = lambda: [(np.array(weight), np.array(bias)) for weight, bias in current()]
    return step


STEPS = {"fastloss": fastloss_step, "numpy": numpy_step, "torch": torch_step}


def median_microseconds(step, repeats=9, calls=2000):
    for _ in range(200):  # warm-up: buffers, BLAS threads, torch's allocator
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times), min(times)


def main():
    print(f"one SGD step, {'-'.join(map(str, SIZES))} MLP, batch {BATCH}, float32 "
          f"(median of 9 x 2000 steps)")
    results = {}
    for name, build in STEPS.items():
        try:
            step = build()
        except ImportError as error:
            print(f"{name:9s} skipped ({error})")
            continue
        results[name] = median_microseconds(step)
        print(f"{name:9s} {results[name][0]:8.1f} us   (best {results[name][1]:.1f})",
              flush=True)
    if "fastloss" in results:
        for peer in ("numpy", "torch"):
            if peer in results:
                print(f"fastloss is {results[peer][0] / results['fastloss'][0]:.2f}x {peer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
