"""``python -m fastloss bench``: its options, its progress on stderr, and ``main``, which runs
the speed track and the stability track and prints the report."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

from fastloss.bench import speed, stability
from fastloss.bench.bandwidth import STREAM_N, STREAM_N_BIG, measure_bandwidth
from fastloss.bench.cases import IMPLEMENTATIONS, PEERS
from fastloss.bench.load import OtherLoad
from fastloss.bench.ops import CLI_OPS, OPS
from fastloss.bench.plot import plot
from fastloss.bench.report import format_header, write_markdown

DEFAULT_PLOT = "fastloss-bench.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="scale", action="store_const", const="quick",
                      help="the default: timings at N = 1e3, 1e5, 1e6, stability at 1e6 and "
                           "2^25 (about a minute on 2 cores: 27-45 s on Zen 5, 99 s on an "
                           "older machine)")
    size.add_argument("--full", dest="scale", action="store_const", const="full",
                      help="timings also at N = 1e7 and 1e8, stability at 1e6, 1e7, 1e8 and "
                           "2^25 (several GB of memory, tens of minutes)")
    size.add_argument("--big", dest="scale", action="store_const", const="big",
                      help="--full, and stability also at N = 4e8 (about 12 GB of memory; "
                           "with --dtype both --all-ops 42 minutes on 2 Zen 1 cores)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32",
                        help="dtype of the timings (the stability track is float32); "
                             "default: %(default)s")
    parser.add_argument("--all-ops", action="store_true",
                        help=f"time every op, not only {', '.join(CLI_OPS)}")
    parser.add_argument("--impls", type=lambda text: text.split(","), default=IMPLEMENTATIONS,
                        metavar="A,B,...",
                        help=f"implementations to compare (default: all of {','.join(PEERS)} "
                             "that are installed, and fastloss)")
    parser.add_argument("--sizes", type=lambda text: tuple(int(float(v)) for v in text.split(",")),
                        help=argparse.SUPPRESS)  # tests: tiny sizes
    parser.add_argument("--plot", metavar="PATH", default=DEFAULT_PLOT,
                        help="where the PNG goes (when matplotlib is installed); "
                             "default: %(default)s")
    parser.add_argument("--no-plot", dest="plot", action="store_const", const=None,
                        help="write no plot")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the report as a markdown results file")
    parser.add_argument("--multiclass", action="store_true",
                        help="run the multi-class track instead: softmax cross-entropy at "
                             "(4096, 1000), (1e6, 10), (64, 1e5) float32 against PyTorch, JAX "
                             "and NumPy, and its stability row (fastloss.bench.multiclass)")
    parser.set_defaults(scale="quick")


class Progress:
    """Progress on stderr: a tqdm bar on a terminal (when tqdm is installed), else a line per
    step, so that a log or CI shows where a long run is."""

    def __init__(self, total: int, stream=sys.stderr):
        self._stream = stream
        self._total = total
        self._done = 0
        self._start = time.perf_counter()
        self._bar = None
        if stream.isatty() and importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm
            self._bar = tqdm(total=total, file=stream, unit="step", dynamic_ncols=True)

    def step(self, message: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(message, refresh=False)
            self._bar.update()
        else:
            elapsed = time.perf_counter() - self._start
            print(f"[{self._done}/{self._total}, {elapsed:.0f} s] {message}", file=self._stream,
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _sizes(args):
    """N of the timings, of the stability track, of the determinism check, of the classic
    failure."""
    if args.sizes:  # the CLI's test: tiny sizes everywhere
        return args.sizes, args.sizes, min(args.sizes), 2**11
    timing = speed.FULL_SIZES if args.scale in ("full", "big") else speed.QUICK_SIZES
    accuracy = {"quick": stability.QUICK_SIZES, "full": stability.FULL_SIZES,
                "big": stability.BIG_SIZES}[args.scale]
    determinism_n = 10**7 if args.scale in ("full", "big") else 10**6
    return timing, accuracy, determinism_n, stability.CLASSIC_N


def command_line(args) -> str:
    """The command that reproduces this run."""
    words = ["python -m fastloss bench", f"--{args.scale}"]
    if args.dtype != "float32":
        words.append(f"--dtype {args.dtype}")
    if args.all_ops:
        words.append("--all-ops")
    if tuple(args.impls) != IMPLEMENTATIONS:
        words.append(f"--impls {','.join(args.impls)}")
    return " ".join(words)


def multiclass_main(args: argparse.Namespace) -> int:
    """The multi-class track alone: its ceilings, its table and its stability row."""
    from fastloss.bench import multiclass
    other_load = OtherLoad()
    ceilings = measure_bandwidth(STREAM_N, 7)
    shapes = multiclass.SHAPES if not args.sizes else tuple((n, 10) for n in args.sizes)
    rows, missing = multiclass.run(shapes, ceilings=ceilings,
                                   step=lambda message: print(message, file=sys.stderr))
    header = format_header(("float32",), ceilings, STREAM_N, (), 5, other_load).splitlines()
    warning = [other_load.warning()] if other_load.warning() else []
    sections = ["\n".join(warning + [line for line in header
                                      if line.startswith(("machine:", "versions:", "ceilings:"))]),
                "\n".join(f"note: {impl} skipped: {reason}" for impl, reason in missing.items()),
                "multi-class track: softmax cross-entropy, int64 class indices, the minimum of 5 "
                "interleaved rounds; bytes: logits + targets read once (+ the gradient written "
                "once)\n\n" + multiclass.format_table(rows),
                "stability: float32 mean over equal rows\n\n"
                + multiclass.format_stability(multiclass.stability(
                    row_counts=(1000,) if args.sizes else multiclass.STABILITY_ROWS))]
    report = "\n\n".join(section for section in sections if section)
    print(report)
    if args.markdown:
        write_markdown(args.markdown, report, "python -m fastloss bench --multiclass", None)
        print(f"results written to {args.markdown}")
    return 0


def main(args: argparse.Namespace) -> int:
    if getattr(args, "multiclass", False):
        return multiclass_main(args)
    unknown = sorted(set(args.impls) - set(IMPLEMENTATIONS))
    if unknown:
        print(f"unknown implementation(s) {', '.join(unknown)}; known: "
              f"{', '.join(IMPLEMENTATIONS)}", file=sys.stderr)
        return 2
    impls = [impl for impl in IMPLEMENTATIONS if impl in args.impls]
    repeats = 7
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    ops = tuple(OPS) if args.all_ops else CLI_OPS
    timing_sizes, accuracy_sizes, determinism_n, classic_n = _sizes(args)
    other_load = OtherLoad()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    stream_n = STREAM_N_BIG if max(timing_sizes) >= STREAM_N_BIG else STREAM_N
    steps = (len(dtypes) * len(timing_sizes) * len(ops)
             + len(stability.datasets(accuracy_sizes)) * len(stability.LOSSES) + 2)
    progress = Progress(steps)
    ceilings = measure_bandwidth(stream_n, repeats)
    progress.step(f"ceilings: read {ceilings['read_gbs']:.1f} GB/s, "
                  f"copy {ceilings['copy_gbs']:.1f} GB/s")
    rows, missing = [], {}
    for dtype in dtypes:
        more_rows, more_missing = speed.run_benchmarks(ops, timing_sizes, impls, dtype, ceilings,
                                                       repeats, progress.step)
        rows += more_rows
        missing.update(more_missing)
    # The determinism runs are not timed: they share the machine with the stability track.
    running = stability.Determinism([impl for impl in impls if impl not in missing],
                                    determinism_n)
    accuracy, more_missing = stability.run_stability(accuracy_sizes, impls, progress.step,
                                                     classic_n)
    missing.update(more_missing)
    outcome = running.result()
    progress.step("determinism: 1 and 2 threads")
    progress.close()

    sections = [format_header(dtypes, ceilings, stream_n, timing_sizes, repeats, other_load)]
    sections += ["\n".join(f"note: {impl} skipped: {reason}" for impl, reason in missing.items())]
    for dtype in dtypes:
        sections += [f"{dtype}:\n\n"
                     + speed.format_table([row for row in rows if row.dtype == dtype])]
    sections += ["stability track: float32 mean losses against the exact value (math.fsum of "
                 "float64 terms)\n\n" + stability.format_stability(accuracy),
                 stability.format_determinism(outcome, determinism_n)]
    report = "\n\n".join(section for section in sections if section)
    print(report)
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            print(f"\nnote: matplotlib is not installed: no plot written to {args.plot}")
        else:
            plot(rows, ceilings, args.plot, accuracy)
            print(f"\nplot written to {args.plot}")
    if args.markdown:
        write_markdown(args.markdown, report, command_line(args), load_before)
        print(f"results written to {args.markdown}")
    return 0
