"""A training step with a fastloss loss, compiled (torch.compile(fullgraph=True) over the
model's forward and the loss) against the same step eager, in interleaved rounds (one step of
each per round, so a busy or quiet spell of the machine falls on both).

    python bench/torch_compiled_step.py [rounds] [--dtype float32|bfloat16] [--loss fastloss|torch]

The model is Linear(64, 256), ReLU, Linear(256, 256) on a batch of 4096, the loss
``fastloss.torch.BCEWithLogitsLoss`` against 0/1 labels, SGD(lr=0.01); backward and the
optimizer step run eager in both. ``--dtype bfloat16`` runs the forward under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (bfloat16 matmuls, the loss in float32, as
torch's own losses autocast). ``--loss torch`` runs the same steps with
``torch.nn.BCEWithLogitsLoss``: the control that tells what compiling does to the model and
torch itself from what it does to fastloss's operator. Both models start from the same weights; after the rounds the
two losses of the last round are printed (the compiled step must compute the eager one's:
tests/test_torch_pt2.py checks that, not this script). A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import fastloss.torch as ft


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rounds", nargs="?", type=int, default=30)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--loss", default="fastloss", choices=["fastloss", "torch"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
    models = {"eager": model, "compiled": copy.deepcopy(model)}
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 64, generator=generator)
    labels = (torch.rand(4096, 256, generator=generator) < 0.5).float()
    loss_fn = ft.BCEWithLogitsLoss() if args.loss == "fastloss" else torch.nn.BCEWithLogitsLoss()
    autocast = args.dtype == "bfloat16"

    def forward_and_loss(net, inputs, targets):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return loss_fn(net(inputs), targets)

    steps = {}
    for name, net in models.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        forward = forward_and_loss if name == "eager" else torch.compile(forward_and_loss, fullgraph=True)

        def step(net=net, optimizer=optimizer, forward=forward):
            optimizer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = forward(net, x, labels)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start, loss.item()

        steps[name] = step
    for step in steps.values():  # warm up: compilation, first-call setup
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    last = {}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds, last[name] = step()
            times[name].append(seconds)
    for name, values in times.items():
        print(f"{name:8s} median {1e3 * statistics.median(values):6.1f} ms, "
              f"min {1e3 * min(values):6.1f}, max {1e3 * max(values):6.1f}")
    ratios = [eager / compiled for eager, compiled in zip(times["eager"], times["compiled"])]
    print(f"eager / compiled per round: median {statistics.median(ratios):.2f}, "
          f"min {min(ratios):.2f}, max {max(ratios):.2f}")
    print(f"last round's losses: eager {last['eager']!r}, compiled {last['compiled']!r}")


if __name__ == "__main__":
    main()
