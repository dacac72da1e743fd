"""GPU benchmark of fastloss (CuPy arrays) against CuPy expressions and PyTorch CUDA.

The inputs, the ops and every implementation's builders are ``fastloss.bench``'s, on CuPy
arrays (``Inputs(..., xp=cupy)``, ``fastloss.bench.cases.DEVICE_IMPLEMENTATIONS``: ``cupy`` is
the seeds' formulas of ``numpy-naive`` evaluated by CuPy), and the correctness checks are the
benchmarks' own (bench/result_checks.py); what is here is the GPU's: CUDA events, the L2 flush,
streams, device memory and facts, and the markdown report.

    python bench/gpu.py                        float32, N = 2^20, 2^22, ..., 2^30
    python bench/gpu.py --sizes 20,24,28 --dtype both --out
    python bench/gpu.py --out bench/results/gpu-run.md

Needs CuPy and a CUDA device (fastloss built and installed: ``pip install --no-build-isolation
--no-deps .``); PyTorch with CUDA is an optional peer. Sections, in order:

1. the device and versions (``fastloss._cuda.describe()``, CuPy, PyTorch);
2. copy bandwidth: a device-to-device copy of a 1 GiB buffer (``dst[...] = src``, and
   ``cudaMemcpyAsync`` for comparison), bytes = 2 x size, timed with CUDA events; the larger
   of the two is the ceiling every op is held against;
3. correctness at N = 2^20: each fastloss result (and, for information, each peer) checked as
   the benchmarks check it (bench/result_checks.py, against ``fastloss.reference`` on host
   copies), PASS/FAIL per op;
4. determinism: 100 calls of ``mse_loss`` at N = 2^26, compared bitwise;
5. small-N latency: host wall time per call at N = 2^10 (1000 calls, one sync at the end);
6. throughput per op and N: median of ``--repeats`` (>= 20) CUDA-event timings after a
   warm-up, the L2 cache emptied before each repeat by writing a 256 MiB buffer and then
   reading another (outside the timed region: ``L2Flush``); GB/s from the ideal bytes (each
   input read once, each output written once: ``fastloss.bench.ops.Op.bytes_moved``), % of the
   copy ceiling, and each peer's time divided by fastloss's (> 1: fastloss is faster).
   fastloss's binary_cross_entropy rows are marked: its time includes the host round trip of
   its [0, 1] range check (``HOST_ROUND_TRIP``).

One failing case (an exception, out of memory) prints its error and the run goes on. Sizes whose
arrays cannot fit in free device memory are skipped (reported). Exit status: 0 when every
fastloss correctness check passed, 1 when one failed, 2 when CuPy or a device is missing.

Run time with the defaults on an H100 (float32): the timed traffic is small. Per repeat, one N
moves about 500 bytes per element over all ops and implementations (fastloss ~ 8-12 B per op, the
CuPy/PyTorch chains 20-60 B); sum of N over 2^20..2^30 (even) = 1365 x 2^20 = 1.43e9 elements;
x 500 B x (20 repeats + 3 warm-up) = 1.6e13 B, about 7 s at 2.5 TB/s; the L2 clears add
~21 x 7 x 3 x 6 x 512 MiB = 1.4 TB (~0.6 s); the correctness, determinism and latency sections
take a few seconds. What dominates is one-time work: compiling fastloss's NVRTC modules and
CuPy's elementwise kernels (tens of seconds on a cold cache), importing PyTorch, and generating
inputs (4 arrays up to 4 GiB each, curand). Expect 1-3 minutes, well under 8; ``--dtype both``
roughly doubles the timed part.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import result_checks as checks

from fastloss.bench.cases import DEVICE_IMPLEMENTATIONS, builders
from fastloss.bench.inputs import Inputs
from fastloss.bench.ops import OPS

BENCH_OPS = (
    "mse_loss",
    "mse_loss_and_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_and_grad",
    "sigmoid",
    "sigmoid_backward",
)
DEFAULT_SIZES = (20, 22, 24, 26, 28, 30)  # exponents: N = 2^e
MIN_REPEATS = 20
WARMUP = 3
SCRATCH_BYTES = 256 * 2**20  # the L2 flush's buffers: over 5x the 50 MiB L2 of an H100
COPY_BYTES = 2**30  # the copy-bandwidth buffer
CHECK_N = 2**20
DETERMINISM_N = 2**26
DETERMINISM_CALLS = 100
LATENCY_N = 2**10
LATENCY_CALLS = 1000
# Peak device memory of one N, in arrays of N elements: 4 inputs (values, targets, probs,
# labels), 1 out= buffer and up to ~5 temporaries of the CuPy/PyTorch chains.
ARRAYS_PER_N = 10
MEMORY_MARGIN = 512 * 2**20
# fastloss ops that wait on the host inside the call, so that their CUDA-event time includes a
# device-to-host copy and the host's round trip before the end event is recorded (the peers
# have no such wait): their rows are marked and explained under each table.
_RANGE_CHECK = ("reads its [0, 1] range-check flag back to the host (to raise ValueError for "
                "inputs outside [0, 1], like the CPU path)")
HOST_ROUND_TRIP = {name: _RANGE_CHECK for name in (
    "binary_cross_entropy", "binary_cross_entropy_grad", "binary_cross_entropy_and_grad")}


class MissingGPU(Exception):
    """CuPy or a CUDA device is missing: the message says which."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- environment ---------------------------------------------------------------------------------

def require_cupy():
    """The cupy module, or MissingGPU with a clear message."""
    try:
        import cupy
    except ImportError as error:
        raise MissingGPU(
            f"CuPy is not installed ({error}); install the wheel matching the CUDA driver, "
            "e.g. pip install cupy-cuda12x (or cupy-cuda13x)") from None
    except Exception as error:  # a broken CUDA install can fail in other ways
        raise MissingGPU(f"CuPy could not be imported: {type(error).__name__}: {error}") from None
    try:
        available = bool(cupy.cuda.is_available())
        reason = "cupy.cuda.is_available() is False"
    except Exception as error:
        available, reason = False, f"{type(error).__name__}: {error}"
    if not available:
        raise MissingGPU(f"no CUDA device: {reason} (no GPU, or no working driver)")
    return cupy


def load_torch():
    """(torch, None) when PyTorch with CUDA is importable, else (None, reason)."""
    try:
        import torch
    except Exception as error:  # ImportError, or a warning turned into an error
        return None, f"PyTorch is not importable ({type(error).__name__}: {error})"
    try:
        if not torch.cuda.is_available():
            return None, f"PyTorch {torch.__version__} has no CUDA device (CPU build?)"
    except Exception as error:
        return None, f"torch.cuda failed: {type(error).__name__}: {error}"
    return torch, None


def free_memory(cp, torch=None) -> int:
    """Free device bytes after returning the cached blocks of CuPy's and PyTorch's pools."""
    cp.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()
    return int(cp.cuda.Device().mem_info[0])


def torch_stream(cp, torch):
    """PyTorch's current stream as a CuPy stream: events and L2 clears for PyTorch go there."""
    stream = torch.cuda.current_stream()
    ptr = int(stream.cuda_stream)
    if ptr == 0:
        return cp.cuda.Stream.null
    if ptr == 2 and hasattr(cp.cuda.Stream, "ptds"):
        return cp.cuda.Stream.ptds
    if hasattr(cp.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cp.cuda.Stream.from_external(stream)  # CuPy >= 14 deprecates ExternalStream
    return cp.cuda.ExternalStream(ptr)


# ---- implementations -----------------------------------------------------------------------------

class Implementations:
    """Which of fastloss.bench's DEVICE_IMPLEMENTATIONS run here (PyTorch needs its CUDA), and
    how to time and sync each."""

    def __init__(self, cp, use_torch=True):
        self.cp = cp
        self.missing = {}
        self.torch = None
        if use_torch:
            torch, reason = load_torch()
            if torch is None:
                self.missing["torch"] = reason
            else:
                try:
                    builders("torch")
                    self.torch = torch
                except Exception as error:  # Unavailable, or torch.nn failing to import
                    self.missing["torch"] = f"{type(error).__name__}: {error}"
        else:
            self.missing["torch"] = "disabled (--no-torch)"
        self.names = tuple(impl for impl in DEVICE_IMPLEMENTATIONS if impl not in self.missing)

    def case(self, impl, op_name, arrays):
        return builders(impl)[op_name](*arrays)

    def stream(self, impl):
        """The CuPy stream the implementation's kernels run on."""
        if impl == "torch":
            return torch_stream(self.cp, self.torch)
        return self.cp.cuda.get_current_stream()

    def synchronize(self, impl):
        if impl == "torch":
            self.torch.cuda.synchronize()
        else:
            self.cp.cuda.get_current_stream().synchronize()

    def free(self):
        return free_memory(self.cp, self.torch)


# ---- timing --------------------------------------------------------------------------------------

class L2Flush:
    """Empties the L2 cache of the timed case's lines and leaves no dirty line behind.

    Writing a buffer larger than L2 evicts the previous repeat's inputs and outputs but fills L2
    with dirty lines, whose write-back would then land in the timed region (at N = 2^20..2^22
    about as much traffic as the op's own). Reading a second buffer as large afterwards writes
    them back, untimed, and leaves only clean lines, which the timed case evicts for free.
    """

    def __init__(self, cp, nbytes=SCRATCH_BYTES):
        self.written = cp.empty(nbytes // 4, dtype=cp.float32)
        self.read = cp.ones(nbytes // 4, dtype=cp.float32)
        self.sink = cp.empty((), dtype=cp.float32)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        self.written.fill(self.calls % 7 + 1)
        self.read.sum(out=self.sink)


def time_events(cp, case, stream, flush_l2, repeats, warmup=WARMUP):
    """Median seconds of ``case`` over ``repeats`` CUDA-event timings on ``stream``.

    Before each repeat ``flush_l2`` (an ``L2Flush``) runs, untimed, so that nothing of the case
    is left in L2. Nothing waits on the host between repeats: while the GPU clears the L2
    (~0.2 ms), the host enqueues the next call, so the events measure GPU time, not Python's
    launch cost (except where the op itself waits on the host: ``HOST_ROUND_TRIP``).
    """
    with stream:
        for _ in range(warmup):
            case()
        stream.synchronize()
        events = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(repeats)]
        for start, end in events:
            flush_l2()
            start.record(stream)
            case()
            end.record(stream)
        events[-1][1].synchronize()
        stream.synchronize()
    return statistics.median(cp.cuda.get_elapsed_time(s, e) for s, e in events) * 1e-3


def measure_copy(cp, flush_l2, repeats):
    """Device-to-device copy bandwidth in GB/s (1e9 B/s) of a 1 GiB buffer: 2 x size per copy."""
    n = COPY_BYTES // 4
    src = cp.ones(n, dtype=cp.float32)
    dst = cp.zeros_like(src)
    stream = cp.cuda.get_current_stream()
    result = {}

    def assign():
        dst[...] = src

    def memcpy():
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, COPY_BYTES,
                                    cp.cuda.runtime.memcpyDeviceToDevice, stream.ptr)

    for name, case in (("dst[...] = src", assign), ("cudaMemcpyAsync", memcpy)):
        try:
            seconds = time_events(cp, case, stream, flush_l2, repeats)
            result[name] = 2 * COPY_BYTES / seconds / 1e9
        except Exception as error:
            log(f"error: copy bandwidth with {name}: {type(error).__name__}: {error}")
    return result


# ---- results -------------------------------------------------------------------------------------

def op_cell(op_name):
    """The op's name in a table row, marked when fastloss's time includes a host round trip."""
    return f"{op_name} (host sync)" if op_name in HOST_ROUND_TRIP else op_name


def host_round_trip_notes(op_names):
    """The lines under a table that explain its '(host sync)' rows."""
    return [f"- (host sync): fastloss's {name} {why}; its time includes that copy and the "
            "host's round trip, the peers' do not." for name, why in HOST_ROUND_TRIP.items()
            if name in op_names]


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if isinstance(seconds, str):
        return seconds
    us = seconds * 1e6
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def fmt_ratio(peer, mine):
    if not isinstance(peer, float) or not isinstance(mine, float) or mine <= 0:
        return "-"
    return f"{peer / mine:.2f}x"


class Report:
    """Markdown lines, printed as they come and rewritten to ``path`` after each section."""

    def __init__(self, path):
        self.path = Path(path) if path else None
        self.lines = []

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)
        self.lines.extend(lines)

    def save(self):
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        except OSError as error:
            log(f"error: cannot write {self.path}: {error}")


# ---- sections ------------------------------------------------------------------------------------

def header_section(report, cp, impls, args, dtypes):
    import fastloss
    from fastloss import _cuda
    info = _cuda.describe()
    report.add(f"# fastloss GPU benchmark, {datetime.date.today().isoformat()}", "")
    gib = 2**30
    report.add(
        f"- device: {info.get('device_name', '?')} (compute capability "
        f"{info.get('compute_capability', '?')}, {info.get('sm_count', '?')} SMs, "
        f"{info.get('memory_total_bytes', 0) / gib:.1f} GiB, "
        f"{info.get('memory_free_bytes', 0) / gib:.1f} GiB free)",
        f"- CUDA runtime {info.get('cuda_runtime')}, driver {info.get('cuda_driver')}, "
        f"NVRTC {info.get('nvrtc')}; CuPy {info.get('cupy')}",
    )
    torch = impls.torch
    if torch is not None:
        report.add(f"- PyTorch {torch.__version__} (CUDA {torch.version.cuda})")
    for impl, reason in impls.missing.items():
        report.add(f"- {impl}: not compared: {reason}")
    if info.get("error"):
        report.add(f"- describe() error: {info['error']}")
    report.add(
        f"- fastloss {fastloss.__version__}; Python {sys.version.split()[0]}, NumPy "
        f"{np.__version__}",
        f"- dtypes {', '.join(dtypes)}; N = 2^{', 2^'.join(str(e) for e in args.sizes)}; "
        f"median of {args.repeats} CUDA-event timings after {WARMUP} warm-up calls, L2 cleared "
        f"before each (a {SCRATCH_BYTES // 2**20} MiB write, then a {SCRATCH_BYTES // 2**20} MiB "
        "read that leaves no dirty line; untimed)",
        f"- command: `python {' '.join(sys.argv)}`", "")


def copy_section(report, cp, flush_l2, repeats):
    log("measuring copy bandwidth (1 GiB device-to-device)...")
    result = measure_copy(cp, flush_l2, repeats)
    report.add("## Copy bandwidth", "")
    for name, gbs in result.items():
        report.add(f"- `{name}`, 1 GiB: {gbs:.0f} GB/s (2 x 1 GiB per copy)")
    ceiling = max(result.values()) if result else None
    if ceiling:
        report.add(f"- ceiling used for '% copy' below: {ceiling:.0f} GB/s")
    else:
        report.add("- copy bandwidth could not be measured: '% copy' is left out")
    report.add("")
    report.save()
    return ceiling


def correctness_section(report, cp, impls, dtypes):
    """Each op at N = 2^20, checked as the benchmarks check it (bench/result_checks.py);
    returns False when fastloss failed."""
    log(f"correctness at N = 2^{CHECK_N.bit_length() - 1}...")
    report.add(f"## Correctness at N = 2^{CHECK_N.bit_length() - 1} (vs fastloss.reference, "
               "float64 on the host)", "",
               "As every benchmark result is checked (bench/result_checks.py): losses against "
               "the exact mean, fastloss's within its guarantee and each peer's within the "
               "error bound of the way it sums; arrays element by element on a fixed sample, "
               "|got - ref| <= atol + rtol |ref|. fastloss must pass; the peers are checked for "
               "information. Why a check failed goes to stderr.", "")
    all_passed = True
    rows = []
    for dtype in dtypes:
        inputs = Inputs(dtype, CHECK_N, xp=cp)
        for op_name in BENCH_OPS:
            op = OPS[op_name]
            try:
                expected = checks.expected_of(op, inputs.arrays(op),
                                              inputs.exact_loss(op) if op.reduces else None)
            except Exception as error:
                log(f"error: reference {op_name}: {type(error).__name__}: {error}")
                continue
            cells = []
            for impl in impls.names:
                try:
                    result = impls.case(impl, op_name, inputs.arrays(op))()
                    impls.synchronize(impl)
                    checks.assert_result(op, result, expected, dtype=dtype, impl=impl,
                                         summation=checks.GPU_SUMMATION.get(impl))
                    passed = True
                    cells.append("PASS")
                except AssertionError as failure:
                    passed = False
                    log(f"FAIL: correctness {op_name} {impl} {dtype}: {failure}")
                    cells.append("FAIL")
                except Exception as error:
                    passed = False
                    log(f"error: correctness {op_name} {impl} {dtype}: "
                        f"{type(error).__name__}: {error}")
                    cells.append("ERROR")
                if impl == "fastloss" and not passed:
                    all_passed = False
                print(f"  {dtype} {op_name} {impl}: {cells[-1]}", file=sys.stderr, flush=True)
            rows.append([op_name, dtype] + cells)
        del inputs
        impls.free()
    report.add(*markdown_table(["op", "dtype"] + list(impls.names), rows))
    report.add("", f"fastloss correctness: {'PASS' if all_passed else 'FAIL'}", "")
    report.save()
    return all_passed


def determinism_section(report, cp, dtypes):
    import fastloss
    log("determinism...")
    report.add(f"## Determinism: {DETERMINISM_CALLS} calls of mse_loss at N = "
               f"2^{DETERMINISM_N.bit_length() - 1}, compared bitwise", "")
    for dtype in dtypes:
        try:
            inputs = Inputs(dtype, DETERMINISM_N, xp=cp)
            x, y = inputs["values"], inputs["targets"]
            values = cp.stack([fastloss.mse_loss(x, y) for _ in range(DETERMINISM_CALLS)]).get()
            bits = values.view(np.uint32 if values.dtype == np.float32 else np.uint64)
            distinct = np.unique(bits)
            if distinct.size == 1:
                report.add(f"- {dtype}: deterministic: {DETERMINISM_CALLS}/{DETERMINISM_CALLS} "
                           f"identical bits ({values[0]!r})")
            else:
                report.add(f"- {dtype}: NOT deterministic: {distinct.size} distinct values "
                           f"(min {values.min()!r}, max {values.max()!r})")
            del inputs, x, y
        except Exception as error:
            log(f"error: determinism {dtype}: {type(error).__name__}: {error}")
            report.add(f"- {dtype}: ERROR {type(error).__name__}: {error}")
        cp.get_default_memory_pool().free_all_blocks()
    report.add("")
    report.save()


def latency_section(report, cp, impls, dtypes):
    log(f"latency at N = 2^{LATENCY_N.bit_length() - 1}...")
    report.add(f"## Small-N latency: N = 2^{LATENCY_N.bit_length() - 1}, microseconds per call",
               "", f"Host wall time of {LATENCY_CALLS} calls in a row, one synchronisation at "
               "the end, divided by the calls (launch and Python overhead, not GPU time).", "")
    rows = []
    for dtype in dtypes:
        inputs = Inputs(dtype, LATENCY_N, xp=cp)
        for op_name in BENCH_OPS:
            times = {}
            for impl in impls.names:
                try:
                    case = impls.case(impl, op_name, inputs.arrays(OPS[op_name]))
                    for _ in range(10):
                        case()
                    impls.synchronize(impl)
                    start = time.perf_counter()
                    for _ in range(LATENCY_CALLS):
                        case()
                    impls.synchronize(impl)
                    times[impl] = (time.perf_counter() - start) / LATENCY_CALLS
                except Exception as error:
                    log(f"error: latency {op_name} {impl} {dtype}: "
                        f"{type(error).__name__}: {error}")
                    times[impl] = "error"
            rows.append([op_cell(op_name), dtype]
                        + [fmt_time(times.get(i)) for i in impls.names]
                        + [fmt_ratio(times.get(i), times.get("fastloss"))
                           for i in impls.names if i != "fastloss"])
        del inputs
    peers = [i for i in impls.names if i != "fastloss"]
    report.add(*markdown_table(["op", "dtype"] + [f"{i} us" for i in impls.names]
                               + [f"{i}/fastloss" for i in peers], rows))
    notes = host_round_trip_notes(BENCH_OPS)
    report.add("", *notes)
    if notes:
        report.add("")
    report.save()


def throughput_section(report, cp, impls, dtypes, sizes, repeats, flush_l2, ceiling):
    peers = [i for i in impls.names if i != "fastloss"]
    report.add("## Throughput", "",
               "us: median GPU time per call; GB/s: ideal bytes (inputs read once, outputs "
               "written once) / time; % copy: of the copy ceiling above; peer/fastloss: the "
               "peer's time / fastloss's (> 1: fastloss faster). Peers' effective GB/s use the "
               "same ideal bytes.", "")
    header = (["op", "dtype", "N", "MB", "fastloss us", "GB/s", "% copy"]
              + [f"{i} us" for i in peers] + [f"{i} GB/s" for i in peers]
              + [f"{i}/fastloss" for i in peers])
    report.add(*markdown_table(header, []))
    skipped = []
    for dtype in dtypes:
        itemsize = np.dtype(dtype).itemsize
        for exponent in sizes:
            n = 2**exponent
            free = impls.free()
            need = ARRAYS_PER_N * n * itemsize + MEMORY_MARGIN
            if need > free:
                skipped.append(f"{dtype} N=2^{exponent} (needs ~{need / 2**30:.1f} GiB, "
                               f"{free / 2**30:.1f} GiB free)")
                log(f"skip {dtype} N=2^{exponent}: needs ~{need / 2**30:.1f} GiB, "
                    f"{free / 2**30:.1f} GiB free")
                continue
            log(f"throughput {dtype} N=2^{exponent}...")
            inputs = Inputs(dtype, n, xp=cp)
            for op_name in BENCH_OPS:
                op = OPS[op_name]
                nbytes = op.bytes_moved(n, itemsize)
                times = {}
                for impl in impls.names:
                    case = None
                    try:
                        case = impls.case(impl, op_name, inputs.arrays(op))
                        times[impl] = time_events(cp, case, impls.stream(impl), flush_l2,
                                                  repeats)
                    except Exception as error:
                        log(f"error: {op_name} {impl} {dtype} N=2^{exponent}: "
                            f"{type(error).__name__}: {error}")
                        times[impl] = "error"
                        case = None
                        try:
                            impls.free()
                        except Exception:
                            pass
                    case = None  # its out= buffer and tensors go before the next case's

                def gbs(impl):
                    t = times.get(impl)
                    return f"{nbytes / t / 1e9:.0f}" if isinstance(t, float) else "-"

                mine = times.get("fastloss")
                percent = (f"{100 * nbytes / mine / 1e9 / ceiling:.0f}%"
                           if isinstance(mine, float) and ceiling else "-")
                row = ([op_cell(op_name), dtype, f"2^{exponent}", f"{nbytes / 1e6:.0f}",
                        fmt_time(mine), gbs("fastloss"), percent]
                       + [fmt_time(times.get(i)) for i in peers] + [gbs(i) for i in peers]
                       + [fmt_ratio(times.get(i), mine) for i in peers])
                report.add("| " + " | ".join(row) + " |")
            del inputs
            report.save()
    notes = host_round_trip_notes(BENCH_OPS) + [f"- skipped (memory): {line}" for line in skipped]
    report.add("", *notes)
    if notes:
        report.add("")
    report.save()


# ---- main ----------------------------------------------------------------------------------------

def parse_sizes(text):
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes comma-separated exponents of 2, like 20,24,28; got {text!r}") from None
    if not sizes or any(not 10 <= e <= 31 for e in sizes):
        raise argparse.ArgumentTypeError(f"exponents must lie in 10..31; got {text!r}")
    return sizes


def default_out_path():
    return Path(__file__).resolve().parent / "results" / f"gpu-{datetime.date.today()}.md"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bench/gpu.py",
        description="Benchmark fastloss on a CUDA GPU (CuPy arrays) against CuPy expressions "
                    "and PyTorch CUDA; prints a markdown report.")
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, metavar="E,E,...",
                        help="exponents e of N = 2^e (default: 20,22,24,26,28,30); sizes that "
                             "do not fit in free device memory are skipped")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32",
                        help="default: %(default)s")
    parser.add_argument("--out", nargs="?", const="", default=None, metavar="PATH",
                        help="also write the markdown report to PATH (--out alone: "
                             "bench/results/gpu-<date>.md)")
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS,
                        help=f"timed repeats per case, at least {MIN_REPEATS} (default)")
    parser.add_argument("--ops", default=",".join(BENCH_OPS), metavar="OP,OP,...",
                        help="subset of: " + ", ".join(BENCH_OPS))
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--skip-latency", action="store_true",
                        help="leave out the small-N latency section")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < MIN_REPEATS:
        parser.error(f"--repeats must be at least {MIN_REPEATS}")
    ops = tuple(op.strip() for op in args.ops.split(",") if op.strip())
    unknown = [op for op in ops if op not in BENCH_OPS]
    if unknown or not ops:
        parser.error(f"unknown op(s) {unknown}; choose from {', '.join(BENCH_OPS)}")
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    out = args.out
    if out == "":
        out = default_out_path()

    try:
        cp = require_cupy()
    except MissingGPU as error:
        print(f"bench/gpu.py: {error}", file=sys.stderr)
        return 2
    try:
        importlib.import_module("fastloss._cuda")  # the installed package, with its CUDA sources
    except Exception as error:
        print(f"bench/gpu.py: fastloss is not importable ({type(error).__name__}: {error}); "
              "build it first: pip install --no-build-isolation --no-deps .", file=sys.stderr)
        return 2

    _select_ops(ops)
    started = time.perf_counter()
    report = Report(out)
    impls = Implementations(cp, use_torch=not args.no_torch)
    header_section(report, cp, impls, args, dtypes)
    report.save()

    flush_l2 = L2Flush(cp)
    ceiling = None
    try:
        ceiling = copy_section(report, cp, flush_l2, args.repeats)
    except Exception:
        log("error: copy bandwidth:\n" + traceback.format_exc())
    impls.free()

    passed = False
    for name, section in (
            ("correctness", lambda: correctness_section(report, cp, impls, dtypes)),
            ("determinism", lambda: determinism_section(report, cp, dtypes)),
            ("latency", None if args.skip_latency else
             (lambda: latency_section(report, cp, impls, dtypes))),
            ("throughput", lambda: throughput_section(report, cp, impls, dtypes, args.sizes,
                                                      args.repeats, flush_l2, ceiling))):
        if section is None:
            continue
        try:
            result = section()
            if name == "correctness":
                passed = result
        except Exception:
            log(f"error: section {name} failed:\n" + traceback.format_exc())
            report.add(f"({name}: failed, see stderr)", "")
        try:
            impls.free()
        except Exception:
            pass

    report.add(f"Total run time {time.perf_counter() - started:.0f} s; fastloss correctness "
               f"{'PASS' if passed else 'FAIL'}.")
    report.save()
    if report.path is not None:
        log(f"report written to {report.path}")
    return 0 if passed else 1


def _select_ops(ops):
    """Restricts every section to ``ops`` (--ops), keeping the canonical order."""
    global BENCH_OPS
    BENCH_OPS = tuple(op for op in BENCH_OPS if op in ops)


if __name__ == "__main__":
    sys.exit(main())
