"""The report's words: sizes and times as text, aligned grids, the header that says what ran
where and how, and the markdown results file."""

from __future__ import annotations

import datetime
import os
import platform

import numpy as np

import fastloss
from fastloss import _cpu
from fastloss._machine import cpu_family, cpu_model, memory_description, package_version
from fastloss.bench.timing import rotation_bytes

PEER_PACKAGES = {"torch": "PyTorch", "jax": "JAX", "numba": "Numba", "crysx-nn": "crysx_nn"}


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


def grid(header, rows, left=3) -> list[str]:
    """Aligned columns: the first ``left`` to the left, the numbers to the right."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = []
    for row in [header] + rows:
        lines.append("  ".join(cell.ljust(width) if i < left else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


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
        "array); * above 100 %, see under the table",
        f"inputs:    below {rotation_bytes() / 2**20:.0f} MiB per call (2x the last-level "
        "cache) the calls cycle through copies, so no call",
        "           finds its inputs cached by the previous one",
        "vs best peer: the fastest peer's time / time (fastloss's row: its speed-up on the best "
        "peer)",
        "peers:     numpy-naive the seeds' NumPy formulas; numpy-out NumPy at its fastest (out= "
        "buffers, BLAS dot",
        "           products for the sums, which add in float32: their error grows with N); "
        "numba one thread,",
        "           numba-parallel prange; torch PyTorch CPU; crysx_nn its loss functions",
        "err (ulp): |loss - exact| in ulps of the exact loss rounded to the dtype;",
        "           exact: fastloss.reference (float64 terms, math.fsum)",
    ])


def write_markdown(path, report, command, load_before) -> None:
    """The results file: what ran where, how to run it again, the report verbatim."""
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
