"""fastloss.torch.mse_loss forward + backward against torch.nn.functional.mse_loss, N = 1e7
float32, in interleaved rounds (one call of each per round, so a busy or quiet spell of the
machine falls on both), reporting every round's times and the per-round speed-up.

    python bench/torch_mse_rounds.py [rounds]

A round is what a training loop does each step: ``x.grad = None``, the loss, ``backward()``; so
each call allocates its outputs anew (the gradient autograd keeps as ``x.grad`` included). The
loss is checked once against the float64 mean before the rounds (the timed calls are not
checked: tests/test_torch_*.py and bench/test_bench_torch.py do that).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import fastloss.torch as ft

N = 10**7


def main(rounds):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=generator).requires_grad_()
    y = torch.randn(N, generator=generator)
    functions = {"fastloss": ft.mse_loss, "torch": torch.nn.functional.mse_loss}
    exact = torch.mean((x.detach().double() - y.double()) ** 2).item()
    assert abs(ft.mse_loss(x, y).item() - exact) <= 1e-6 * exact

    def step(function):
        x.grad = None
        start = time.perf_counter()
        function(x, y).backward()
        return time.perf_counter() - start

    for function in functions.values():  # warm up: imports, first-call setup
        step(function)
        step(function)
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            times[name].append(step(function))
    for name, values in times.items():
        print(f"{name:8s} median {1e3 * statistics.median(values):6.1f} ms, "
              f"min {1e3 * min(values):6.1f}, max {1e3 * max(values):6.1f}: "
              + " ".join(f"{1e3 * t:.0f}" for t in values))
    ratios = [theirs / ours for ours, theirs in zip(times["fastloss"], times["torch"])]
    print(f"speed-up per round: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
