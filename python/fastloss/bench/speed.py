"""The speed track of ``python -m fastloss bench``: every (op, N, implementation) timed on the
same inputs, as GB/s, share of the ceiling, speed-up on the best peer and error in ulps, and
its table."""

from __future__ import annotations

from dataclasses import dataclass

from fastloss.bench.cases import runnable_cases
from fastloss.bench.errors import loss_value, ulps
from fastloss.bench.inputs import Inputs
from fastloss.bench.ops import OPS
from fastloss.bench.report import format_seconds, size_label
from fastloss.bench.timing import make_timed_case, time_case

# The quick run takes about a minute (27-45 s on 2 Zen 5 cores, 99 s on an older 2-core
# machine): at 1e7 the slowest peers would take ~0.5 s a call.
QUICK_SIZES = (10**3, 10**5, 10**6)
FULL_SIZES = QUICK_SIZES + (10**7, 10**8)


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


# Under the table when a share of the ceiling exceeds 100 %.
ABOVE_CEILING_NOTE = (
    "* above 100 % of the ceiling: faster than the probe, which streams 100 MB arrays from "
    "memory;\n  at this N part of the inputs still came from the cache, or the probe ran while "
    "other processes held a core")


def format_ceiling_share(fraction: float) -> str:
    """'83%', or '130%*' for a share above the ceiling (explained by ABOVE_CEILING_NOTE)."""
    return f"{100 * fraction:.0f}%" + ("*" if fraction > 1.0 else "")


def format_table(rows) -> str:
    header = ("op", "N", "impl", "time", "GB/s", "% ceil", "vs best peer", "err (ulp)")
    lines = [header]
    for row in rows:
        lines.append((
            row.op, size_label(row.n), row.impl, format_seconds(row.seconds),
            f"{row.gbs:.2f}", format_ceiling_share(row.ceiling_fraction),
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
    if any(row.ceiling_fraction > 1.0 for row in rows):
        out += ["", ABOVE_CEILING_NOTE]
    return "\n".join(out)
