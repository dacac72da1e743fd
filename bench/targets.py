"""The speed targets of issue 14, each measured as it asks: interleaved rounds, minimums, the
ceilings and the peers in the same rounds.

    python bench/targets.py large    N = 1e8, all threads: each op's GB/s against the read or
                                     copy ceiling measured in the same rounds; torch and jax
    python bench/targets.py small    N = 16, 1e3, 1e4, warm, in cache, one thread: fastloss
                                     against Numba's serial loop, NumPy, PyTorch (and JAX)

Options: --dtype float32|float64, --rounds, --ops a,b. Quote figures from a quiet machine
(``uptime``); the header says what else ran. Implementations come from fastloss.bench (the
same builders as ``python -m fastloss bench`` and the pytest-benchmark suite).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from fastloss import _cpu
from fastloss._machine import cpu_family, cpu_model
from fastloss.bench.cases import make_case
from fastloss.bench.inputs import Inputs
from fastloss.bench.load import OtherLoad
from fastloss.bench.ops import OPS
from fastloss.bench.peers import Unavailable
from fastloss.bench.report import size_label
from fastloss.bench.timing import interleaved_minimums

LARGE_OPS = ("mse_loss", "mse_loss_and_grad", "binary_cross_entropy",
             "binary_cross_entropy_and_grad", "binary_cross_entropy_with_logits",
             "binary_cross_entropy_with_logits_and_grad", "sigmoid", "sigmoid_backward")
LARGE_PEERS = ("torch", "jax")
SMALL_PEERS = ("numba", "numpy-naive", "numpy-out", "torch", "jax")
SMALL_SIZES = (16, 10**3, 10**4)
# the pause before each 1e8 sample (timing.interleaved_minimums: a JAX call's work after it
# returns slowed the next sample by 30-40 %); none between the small in-cache loops, which
# a pause would leave to a cooled cache
LARGE_SETTLE_S = 0.3


def cases_of(op_name, inputs, impls, missing):
    cases = {}
    for impl in impls:
        try:
            cases[impl] = make_case(impl, OPS[op_name], inputs)
        except Unavailable as reason:
            missing.setdefault(impl, str(reason))
    return cases


def large(args):
    n = 10**8
    inputs = Inputs(args.dtype, n)
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros_like(src)
    ceiling_cases = {"read": lambda: _cpu.stream_read(src), "copy": lambda: _cpu.stream_copy(src, dst)}
    itemsize = inputs.dtype.itemsize
    print(f"N = 1e8 {inputs.dtype.name}, {_cpu.build_info()['max_threads']} threads; "
          f"minimum of {args.rounds} interleaved rounds; ceilings in the same rounds")
    print(f"{'op':44s} {'impl':9s} {'ms':>8s} {'GB/s':>7s} {'ceiling':>8s} {'vs torch':>9s}")
    missing: dict = {}
    for op_name in args.ops or LARGE_OPS:
        op = OPS[op_name]
        cases = cases_of(op_name, inputs, ("fastloss",) + LARGE_PEERS, missing)
        cases.update({f"ceiling:{k}": v for k, v in ceiling_cases.items()})
        times = interleaved_minimums(cases, rounds=args.rounds, min_sample_s=0.0, settle_s=LARGE_SETTLE_S)
        ceiling = {"read_gbs": 4 * n / times["ceiling:read"] / 1e9,
                   "copy_gbs": 8 * n / times["ceiling:copy"] / 1e9}[op.ceiling]
        for impl in ("fastloss",) + LARGE_PEERS:
            if impl not in times:
                continue
            gbs = op.bytes_moved(n, itemsize) / times[impl] / 1e9
            vs = times["torch"] / times[impl] if "torch" in times else float("nan")
            print(f"{op_name:44s} {impl:9s} {times[impl] * 1e3:8.2f} {gbs:7.2f} "
                  f"{100 * gbs / ceiling:7.0f}% {vs:8.2f}x", flush=True)
        print(f"{'':44s} ({op.ceiling[:4]} ceiling {ceiling:.2f} GB/s)")
        del cases
    return missing


def small(args):
    print(f"{inputs_dtype(args)} in cache, one thread (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
          f"minimum of {args.rounds} interleaved rounds of >= 2 ms loops; microseconds per call")
    header = f"{'op':44s} {'N':>5s} " + " ".join(f"{impl:>11s}" for impl in ("fastloss",) + SMALL_PEERS)
    print(header + "  fastloss / best peer")
    missing: dict = {}
    for n in SMALL_SIZES:
        inputs = Inputs(args.dtype, n)
        for op_name in args.ops or tuple(OPS):
            cases = cases_of(op_name, inputs, ("fastloss",) + SMALL_PEERS, missing)
            times = interleaved_minimums(cases, rounds=args.rounds)
            peers = {impl: t for impl, t in times.items() if impl != "fastloss"}
            best = min(peers, key=peers.get)
            cells = " ".join(f"{times[impl] * 1e6:11.3f}" if impl in times else f"{'-':>11s}"
                             for impl in ("fastloss",) + SMALL_PEERS)
            print(f"{op_name:44s} {size_label(n):>5s} {cells}  {times['fastloss'] / peers[best]:.2f} "
                  f"({best})", flush=True)
    return missing


def inputs_dtype(args):
    return np.dtype(args.dtype).name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("track", choices=("large", "small"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--ops", type=lambda text: tuple(text.split(",")))
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 7 if args.track == "large" else 15
    load = OtherLoad()
    print(f"{cpu_model()} ({cpu_family()}), {os.cpu_count()} CPUs, isa {_cpu.build_info()['isa']}, "
          f"load average {os.getloadavg()[0]:.2f}")
    missing = large(args) if args.track == "large" else small(args)
    for impl, reason in missing.items():
        print(f"note: {impl} skipped: {reason}")
    warning = load.warning()
    if warning:
        print(warning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
