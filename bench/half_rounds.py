"""float16 / bfloat16 mse_loss and mse_loss_and_grad at large N against the memory ceilings,
measured in the same interleaved rounds (a benchmark, not a test: prints, asserts nothing).

    python bench/half_rounds.py [--n 100000000] [--rounds 7] [--dtype float16|bfloat16]

Per round, in turn: the read ceiling (fastloss._cpu.stream_read over the two 16-bit inputs'
own bytes, viewed as float32 words), mse_loss (reads 4 bytes per element: input and target),
the copy ceiling (stream_read of the input's bytes, then stream_copy of the target's bytes into
the gradient's: the same 6 bytes per element, on the same pages, as the fused pass's two reads
and one write), and mse_loss_and_grad(out=) into that gradient, allocated once and reused.
The same two probes over other arrays of the same sizes follow ("... elsewhere"): on this
project's VMs the memory speed has been seen to differ 1.6x between two probes of one run, and a
ceiling measured on the kernel's own pages cannot be flattered by that. Reports the minimum and
the median of each; the ratios are taken against the own-bytes ceilings, from the minima (the
least-disturbed run of each on a shared machine), and per round as well.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastloss
from fastloss import _cpu


def _dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args(argv)
    n, dtype = args.n, _dtype(args.dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32).astype(dtype)
    y = rng.standard_normal(n, dtype=np.float32).astype(dtype)
    grad = np.empty_like(x)
    # Whole float32 words over the 16-bit arrays: n is even for the probes (one 16-bit tail
    # element left out of a ceiling changes nothing measurable).
    words = 2 * (n // 2)
    x_words, y_words = x[:words].view(np.float32), y[:words].view(np.float32)
    grad_words = grad[:words].view(np.float32)
    read_src = np.ones(n, np.float32)  # 4n bytes elsewhere: what mse_loss reads
    copy_src = np.ones(n // 2, np.float32)  # with read_src[:n // 2]: 6n bytes moved elsewhere
    copy_dst = np.empty_like(copy_src)
    cases = {
        "read ceiling": (lambda: (_cpu.stream_read(x_words), _cpu.stream_read(y_words)), 4 * n),
        "mse_loss": (lambda: fastloss.mse_loss(x, y), 4 * n),
        "copy ceiling": (lambda: (_cpu.stream_read(x_words),
                                  _cpu.stream_copy(y_words, grad_words)), 6 * n),
        "mse_loss_and_grad": (lambda: fastloss.mse_loss_and_grad(x, y, out=grad), 6 * n),
        "read elsewhere": (lambda: _cpu.stream_read(read_src), 4 * n),
        "copy elsewhere": (lambda: (_cpu.stream_read(read_src[: n // 2]),
                                    _cpu.stream_copy(copy_src, copy_dst)), 6 * n),
    }
    for fn, _ in cases.values():  # warm-up: page faults, thread pool
        fn()
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, _) in cases.items():
            times[name].append(_timed(fn))
    print(f"N = {n} {dtype.name}, {args.rounds} interleaved rounds, "
          f"{_cpu.build_info()['isa']}, {_cpu.build_info()['max_threads']} threads")
    for name, (_, nbytes) in cases.items():
        best, median = min(times[name]), statistics.median(times[name])
        print(f"  {name:18s} min {1e3 * best:8.1f} ms ({nbytes / best / 1e9:6.2f} GB/s)  "
              f"median {1e3 * median:8.1f} ms ({nbytes / median / 1e9:6.2f} GB/s)")
    for ours, ceiling in (("mse_loss", "read ceiling"), ("mse_loss_and_grad", "copy ceiling")):
        per_round = sorted(c / o for o, c in zip(times[ours], times[ceiling]))
        print(f"  {ours} / {ceiling}: {100 * min(times[ceiling]) / min(times[ours]):.0f} % "
              f"(minima); per round median {100 * statistics.median(per_round):.0f} %, "
              f"range {100 * per_round[0]:.0f}-{100 * per_round[-1]:.0f} %")


if __name__ == "__main__":
    main()
