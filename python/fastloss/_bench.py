"""Benchmarks of fastloss against NumPy, Numba, PyTorch and crysx_nn, and the machine's bandwidth.

Used by ``python -m fastloss bench`` (``main`` below) and by the pytest-benchmark harness in
``bench/`` of the source tree, so that the bandwidth probe, the test data and every compared
implementation exist once.

The kernels are memory-bound for large N, so each timing is also given as bandwidth: the bytes
an ideal single pass moves (each input read once, each output written once) divided by the
time, next to a STREAM-like ceiling measured in the same run (the ceiling of a shared VM drifts
between runs, so a figure from another run would not compare).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastloss
from fastloss import _cpu
from fastloss._machine import (cpu_family, cpu_model, last_level_cache_bytes,
                               memory_description, package_version)
# Some of these only pass on to _bench_stability and bench/, until they import fastloss.bench.
from fastloss.bench.bandwidth import STREAM_N, STREAM_N_BIG, measure_bandwidth
from fastloss.bench.cases import IMPLEMENTATIONS, PEERS, make_case, runnable_cases
from fastloss.bench.errors import loss_value, relative_error, result_errors, ulps
from fastloss.bench.inputs import Inputs, exact_mean
from fastloss.bench.load import OtherLoad
from fastloss.bench.ops import CLI_OPS, OPS, Op
from fastloss.bench.peers import Unavailable


# ---- inputs rotated through memory ----------------------------------------------------------------
ROTATION_BYTES = 2 * last_level_cache_bytes()


def rotation_count(op: Op, inputs: Inputs) -> int:
    """How many copies of the op's inputs (and outputs) the timed calls cycle through: enough
    to fill twice the last-level cache, so that no call finds its data still cached from the
    previous one (as a training step finds fresh activations). 1 from there on."""
    footprint = op.bytes_moved(inputs.n, inputs.dtype.itemsize)
    return max(1, math.ceil(ROTATION_BYTES / footprint))


def make_timed_case(impl: str, op: Op, inputs: Inputs) -> Callable:
    """``make_case`` cycling through ``rotation_count`` copies of the inputs. The copies hold
    the same values, so every call returns the same result."""
    first = make_case(impl, op, inputs)
    copies = rotation_count(op, inputs)
    if copies == 1:
        return first
    cases = [first] + [make_case(impl, op, inputs, tuple(a.copy() for a in inputs.arrays(op)))
                       for _ in range(copies - 1)]
    cycle = itertools.cycle(cases)
    return lambda: next(cycle)()


# ---- timing --------------------------------------------------------------------------------------
def time_case(case: Callable, repeats: int = 7, min_sample_s: float = 1e-3):
    """(median seconds per call, result of a call): median of ``repeats`` samples.

    A warm-up call first (page faults on fresh outputs, thread pools, lazy imports). A call on
    a small N takes microseconds, near the timer's own cost, so each sample times a loop of
    calls lasting at least ``min_sample_s``, sized by a second, timed warm-up call.
    """
    start = time.perf_counter()
    result = case()
    one_call = time.perf_counter() - start
    if one_call < min_sample_s:  # the first call's time may be mostly warm-up: time another
        start = time.perf_counter()
        case()
        one_call = time.perf_counter() - start
    loops = max(1, math.ceil(min_sample_s / max(one_call, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            case()
        samples.append((time.perf_counter() - start) / loops)
    return statistics.median(samples), result


# ---- python -m fastloss bench --------------------------------------------------------------------
# The quick run stays in the tens of seconds: at 1e7 the slowest peers take ~0.5 s a call.
QUICK_SIZES = (10**3, 10**5, 10**6)
FULL_SIZES = QUICK_SIZES + (10**7, 10**8)


def size_label(n: int) -> str:
    """1e7, 4e8, 2^25: how the sizes are named in the issue and the notes."""
    exponent = len(str(n)) - 1
    leading, rest = divmod(n, 10**exponent)
    if rest == 0:
        return f"{leading}e{exponent}"
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def format_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


@dataclass
class Row:
    op: str
    dtype: str
    n: int
    impl: str
    seconds: float
    gbs: float
    ceiling_fraction: float
    vs_best_peer: float | None  # the fastest peer's time / this time
    error_ulps: float | None  # reductions only


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


def run_benchmarks(ops, sizes, impls, dtype, ceilings, repeats=7, step=lambda message: None):
    """Times every (op, size, impl); returns Rows and the implementations that were missing."""
    rows, missing = [], {}
    for n in sizes:
        inputs = Inputs(dtype, n)  # once per size: every op and implementation reads the same
        for op_name in ops:
            op = OPS[op_name]
            timed = {}
            for impl, case in runnable_cases(impls, op, inputs, missing, make_timed_case):
                seconds, result = time_case(case, repeats)
                # Keep the loss only: the case and its result hold output buffers of size N.
                timed[impl] = seconds, loss_value(result) if op.reduces else None
                del case, result
            exact = inputs.exact_loss(op) if op.reduces else None
            peers = [seconds for impl, (seconds, _) in timed.items() if impl != "fastloss"]
            for impl, (seconds, loss) in timed.items():
                gbs = op.bytes_moved(n, inputs.dtype.itemsize) / seconds / 1e9
                rows.append(Row(
                    op_name, inputs.dtype.name, n, impl, seconds, gbs,
                    gbs / ceilings[op.ceiling], min(peers) / seconds if peers else None,
                    ulps(loss, exact, dtype) if op.reduces else None))
            step(f"{op_name} {inputs.dtype.name} N={size_label(n)}: " + ", ".join(
                f"{impl} {format_seconds(seconds)}" for impl, (seconds, _) in timed.items()))
        del inputs
    return rows, missing


def format_table(rows) -> str:
    header = ("op", "N", "impl", "time", "GB/s", "% ceil", "vs best peer", "err (ulp)")
    lines = [header]
    for row in rows:
        lines.append((
            row.op, size_label(row.n), row.impl, format_seconds(row.seconds),
            f"{row.gbs:.2f}", f"{100 * row.ceiling_fraction:.0f}%",
            f"{row.vs_best_peer:.2f}x" if row.vs_best_peer is not None else "-",
            f"{row.error_ulps:.1f}" if row.error_ulps is not None else "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left_aligned = 3  # op, N, impl; numbers right-aligned
    out = []
    for index, line in enumerate(lines):
        group = line[:2]
        if index > 1 and group == lines[index - 1][:2]:
            line = ("", "") + line[2:]  # op and N once per group: the table reads at a glance
        elif index > 1:
            out.append("")
        cells = [cell.ljust(width) if i < left_aligned else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("-" * len(out[-1]))
    return "\n".join(out)


PEER_PACKAGES = {"torch": "PyTorch", "numba": "Numba", "crysx-nn": "crysx_nn"}


def format_header(dtypes, ceilings, stream_n, sizes, repeats, other_load=None) -> str:
    info = _cpu.build_info()
    python = platform.python_version()
    if platform.python_implementation() != "CPython":
        python = f"{platform.python_implementation()} {python}"
    peers = ", ".join(f"{label} {package_version(package) or 'not installed'}"
                      for package, label in PEER_PACKAGES.items())
    warning = other_load.warning() if other_load else None
    return "\n".join(([warning] if warning else []) + [
        f"fastloss {fastloss.__version__} benchmark, {', '.join(dtypes)}, "
        f"N = {', '.join(size_label(n) for n in sizes)}, median of {repeats} after warm-up",
        f"machine:   {cpu_model()}, {os.cpu_count()} logical cores, {memory_description()}; "
        f"fastloss uses {info['max_threads']} threads, ISA {info['isa']}, {info['compiler']}",
        f"versions:  Python {python}, NumPy {np.__version__}, {peers}",
        f"ceilings:  read {ceilings['read_gbs']:.1f} GB/s, copy {ceilings['copy_gbs']:.1f} GB/s "
        f"(STREAM-like, {4 * stream_n / 1e6:.0f} MB arrays, measured in this run)",
        "GB/s:      bytes of an ideal pass (each input read once, each output written once) "
        "/ time",
        "% ceil:    share of the read ceiling (losses) or of the copy ceiling (ops writing an "
        "array)",
        f"inputs:    below {ROTATION_BYTES / 2**20:.0f} MiB per call (2x the last-level cache) "
        "the calls cycle through copies, so no call",
        "           finds its inputs cached by the previous one",
        "vs best peer: the fastest peer's time / time (fastloss's row: its speed-up on the best "
        "peer)",
        "err (ulp): |loss - exact| in ulps of the exact loss rounded to the dtype;",
        "           exact: fastloss.reference (float64 terms, math.fsum)",
    ])


def plot(rows, ceilings, path, accuracy=()) -> None:
    """GB/s against N, a line per implementation, one subplot per op and dtype (the ceiling
    dashed); then the stability track's error in ulps against N, one subplot per loss."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    from fastloss._bench_stability import CLASSIC, RANDOM

    panels = list(dict.fromkeys((row.op, row.dtype) for row in rows))
    losses = list(dict.fromkeys(a.op for a in accuracy))
    columns = 3
    rows_of_plots = math.ceil(len(panels) / columns) + math.ceil(len(losses) / columns)
    figure = Figure(figsize=(5 * columns, 3.6 * rows_of_plots), layout="constrained")
    axes = list(figure.subplots(rows_of_plots, columns, squeeze=False).ravel())
    speed_axes = axes[:len(panels)]
    error_axes = axes[math.ceil(len(panels) / columns) * columns:][:len(losses)]
    for axis, (op_name, dtype) in zip(speed_axes, panels):
        mine = [row for row in rows if (row.op, row.dtype) == (op_name, dtype)]
        for impl in dict.fromkeys(row.impl for row in mine):
            axis.plot(*zip(*[(row.n, row.gbs) for row in mine if row.impl == impl]),
                      marker="o", label=impl)
        ceiling = OPS[op_name].ceiling
        axis.axhline(ceilings[ceiling], linestyle="--", color="grey",
                     label=ceiling.replace("_gbs", " ceiling"))
        axis.set(xscale="log", yscale="log", title=f"{op_name} ({dtype})", xlabel="N",
                 ylabel="GB/s")
        axis.legend(fontsize="small")
    for axis, op_name in zip(error_axes, losses):
        mine = [a for a in accuracy if a.op == op_name]
        for impl in dict.fromkeys(a.impl for a in mine):
            # An exact result is drawn at 0.01 ulp: a log axis has no zero.
            points = {data: [(a.n, max(a.ulps, 1e-2)) for a in mine
                             if a.impl == impl and a.data == data]
                      for data in (RANDOM, CLASSIC)}
            (line,) = axis.plot(*zip(*points[RANDOM]), marker="o", label=impl)
            if points[CLASSIC]:  # the classic failure: crosses in the line's colour
                axis.plot(*zip(*points[CLASSIC]), marker="x", markersize=9,
                          linestyle="none", color=line.get_color())
        axis.axhline(1.0, linestyle="--", color="grey", label="1 ulp")
        axis.set(xscale="log", yscale="log",
                 title=f"{op_name}\nfloat32 error (o random data, x {CLASSIC})",
                 xlabel="N", ylabel="|error| in ulps")
        axis.legend(fontsize="small")
    used = set(map(id, speed_axes + error_axes))
    for axis in axes:
        if id(axis) not in used:
            axis.set_visible(False)
    figure.suptitle(f"fastloss {fastloss.__version__}, {cpu_model()}")
    figure.savefig(path, dpi=110)


DEFAULT_PLOT = "fastloss-bench.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="scale", action="store_const", const="quick",
                      help="the default: timings at N = 1e3, 1e5, 1e6, stability at 1e6 and "
                           "2^25 (tens of seconds)")
    size.add_argument("--full", dest="scale", action="store_const", const="full",
                      help="timings also at N = 1e7 and 1e8, stability at 1e6, 1e7, 1e8 and "
                           "2^25 (several GB of memory, many minutes)")
    size.add_argument("--big", dest="scale", action="store_const", const="big",
                      help="--full, and stability also at N = 4e8 (about 12 GB of memory)")
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
    parser.set_defaults(scale="quick")


def _sizes(args):
    """N of the timings, of the stability track, of the determinism check, of the classic
    failure."""
    from fastloss import _bench_stability as stability
    if args.sizes:  # the CLI's test: tiny sizes everywhere
        return args.sizes, args.sizes, min(args.sizes), 2**11
    timing = FULL_SIZES if args.scale in ("full", "big") else QUICK_SIZES
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


def main(args: argparse.Namespace) -> int:
    from fastloss import _bench_stability as stability
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
        more_rows, more_missing = run_benchmarks(ops, timing_sizes, impls, dtype, ceilings,
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
        sections += [f"{dtype}:\n\n" + format_table([row for row in rows if row.dtype == dtype])]
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


def write_markdown(path, report, command, load_before) -> None:
    """The results file: what ran where, how to run it again, the report verbatim."""
    import datetime
    load = (f"load average {load_before[0]:.2f} at the start"
            if load_before is not None else "load unknown")
    lines = [
        f"# CPU benchmark, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {cpu_model()} ({cpu_family() or 'family unknown'}), {os.cpu_count()} "
        f"logical cores, {memory_description()}, "
        f"{platform.system()} {platform.release()}; {load}.",
        "",
        f"Reproduce: `pip install \".[bench]\" && pip install --no-deps crysx-nn && {command}`",
        "(the method is in bench/NOTES.md; ceilings drift between runs on a shared machine: "
        "compare fractions of the ceiling, not GB/s, across runs).",
        "",
        "```",
        report,
        "```",
        "",
    ]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
