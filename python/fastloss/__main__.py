"""Command line: ``python -m fastloss info``, ``bench`` and ``train``.

Also the ``fastloss`` console script (``main``). Neither command needs PyTorch, Numba, crysx_nn
or CuPy: they are reported, and compared against, only when installed. ``fastloss.bench`` is
imported for the ``bench`` command alone (its options too), so ``info`` starts without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys

import numpy as np

import fastloss
from fastloss import _cpu, _machine, _train_cli


def _cuda_status() -> str:
    """One line on CuPy, CUDA and the device, from fastloss._cuda.describe()."""
    if importlib.util.find_spec("cupy") is None:
        return f"cupy not installed (for GPUs: {_train_cli.INSTALL_CUDA})"
    try:
        from fastloss import _cuda
        facts = _cuda.describe()
    except Exception as error:  # a broken CUDA install fails in many ways; report, don't crash
        return f"cupy installed but unusable ({type(error).__name__}: {error})"
    versions = (f"cupy {facts['cupy']}, CUDA runtime {facts.get('cuda_runtime')}, "
                f"driver {facts.get('cuda_driver')}, NVRTC {facts.get('nvrtc')}")
    if not facts["available"]:
        return f"{versions}; no usable GPU" + (f" ({facts['error']})" if "error" in facts else "")
    if "device_name" not in facts:
        return f"{versions}; device query failed ({facts.get('error')})"
    return (f"{versions}; GPU {facts['device_id']} of {facts['device_count']}: "
            f"{facts['device_name']} (sm_{facts['compute_capability'].replace('.', '')}, "
            f"{facts['sm_count']} SMs, {facts['memory_total_bytes'] / 2**30:.0f} GiB)")


def info(args: argparse.Namespace) -> int:
    build = _cpu.build_info()
    fields = [
        ("fastloss", f"{fastloss.__version__} ({fastloss.__path__[0]})"),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}, "
                   f"{sys.executable})"),
        ("numpy", np.__version__),
        ("compiler", build["compiler"]),
        ("isa", f"{build['isa']} (chosen at run time for this CPU)"),
        ("openmp", _machine.openmp_description(build)),
        ("max threads", f"{build['max_threads']} " + ("(a forked child: kernels run serially)"
                                                      if build["forked_child"]
                                                      else "(OMP_NUM_THREADS changes it)")),
        ("chunk size", f"{build['chunk_size']} elements (fixed: sums are the same bits "
                       "for any thread count)"),
        ("parallel from", f"{build['parallel_threshold']} elements"),
        ("cpu", _machine.cpu_model()),
        ("torch", _machine.package_version("torch") or "not installed"),
        ("cuda", _cuda_status()),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from fastloss.bench import cli as bench_cli
    return bench_cli.main(args)


def train(args: argparse.Namespace) -> int:
    return _train_cli.run(args)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; the options of ``bench`` only when ``command`` is "bench"
    (they come from fastloss.bench, which the other commands do not import)."""
    # Named as it was run: the console script, or the module (whose argv[0] is __main__.py).
    run_as_module = os.path.basename(sys.argv[0]) == "__main__.py"
    parser = argparse.ArgumentParser(
        prog="python -m fastloss" if run_as_module else "fastloss",
        description="fastloss: build information, benchmarks against NumPy, Numba, PyTorch "
                    "and crysx_nn, and a small network trained with fastloss.nn.")
    parser.add_argument("--version", action="version", version=f"fastloss {fastloss.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{info,bench,train}",
                                     required=True)
    commands.add_parser(
        "info", help="versions, compiler, ISA, OpenMP and threads of this build",
        description="Print versions, the compiler, the chosen ISA, OpenMP, threads, "
                    "chunking and the CUDA status (via CuPy, if installed).",
    ).set_defaults(handler=info)
    bench_parser = commands.add_parser(
        "bench", help="fastloss against its peers: speed, float32 error, determinism",
        description="Measure the machine's memory bandwidth, then time fastloss and each "
                    "installed peer (NumPy as the seeds wrote it and at its fastest, Numba serial "
                    "and parallel, PyTorch, crysx_nn) on each op and size: time, GB/s, share "
                    "of the bandwidth ceiling, ratio to the best peer, error in ulps. Then the "
                    "stability track: each one's float32 error against the exact value as N "
                    "grows and on 2^25 terms of 0.1, and its bits with 1 and 2 threads. "
                    "Progress goes to stderr, the report to stdout, the plot to a PNG.")
    bench_parser.set_defaults(handler=bench)
    if command == "bench":
        from fastloss.bench import cli as bench_cli
        bench_cli.add_arguments(bench_parser)
    train_parser = commands.add_parser(
        "train", help="train an MLP on a scikit-learn data set with fastloss.nn",
        description="Train a dense network with mini-batch SGD on breast_cancer (BCE), "
                    "diabetes (MSE) or digits (softmax cross-entropy, 10 classes) from "
                    "scikit-learn: the loss of every epoch, then the test metric; optionally "
                    "a loss-curve PNG.")
    train_parser.set_defaults(handler=train)
    _train_cli.add_arguments(train_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The command is the first word that is no option: the top level has no option with a value.
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except _train_cli.CommandError as error:  # worded for this line: no traceback
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
