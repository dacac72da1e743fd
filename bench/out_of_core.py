"""mse_loss over two float32 arrays larger than the machine's memory, read from files through
Dask: fastloss's Dask family against the Dask expression ((x - y) ** 2).mean().

    python bench/out_of_core.py DIR [--gb 14] [--chunk 67108864] [--keep]

Writes DIR/x.f32 and DIR/y.f32 (GB gigabytes each, standard normal, seeded; reused when they
exist with the right size), then runs three passes on Dask's threaded scheduler, each from a
cold start (the files together exceed the page cache, so every pass reads the disk):
1. fastloss.mse_loss(X, Y), timed;
2. ((X - Y) ** 2).mean(), Dask's float32 expression, timed (1 and 2 alternated for --rounds
   rounds, the best of each reported);
3. untimed, in one read of the files: fastloss.mse_loss at a ragged chunking (0.7 CHUNK + 13
   elements), which must give pass 1's bits, and the float64 reference
   ((X64 - Y64) ** 2).mean() (Dask's float64 sums: relative error about 1e-16, far below a
   float32 ulp) for the errors.
Prints one line per pass and a Markdown table for bench/NOTES.md. Deletes the files unless
--keep.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

WRITE_BLOCK = 1 << 26  # elements generated and written at a time


def _write(path: Path, n: int, seed: int) -> None:
    if path.exists() and path.stat().st_size == 4 * n:
        return
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, n, WRITE_BLOCK):
            f.write(rng.standard_normal(min(WRITE_BLOCK, n - start), dtype=np.float32).data)
        f.flush()
        os.fsync(f.fileno())


class _File:
    """A float32 file as an array Dask slices lazily, each block read from the file when a
    task needs it (one sequential read, as a zarr or HDF5 chunk is: Dask copies a NumPy array
    given to from_array, an np.memmap too, into its graph's chunks, which would read the whole
    file into memory; and a memory map read by page faults from several threads at once,
    inside the kernels, halved the disk's throughput here)."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.shape, self.dtype, self.ndim = path, (n,), np.dtype(np.float32), 1

    def __getitem__(self, index):
        (index,) = index if isinstance(index, tuple) else (index,)
        start, stop, _ = index.indices(self.shape[0])
        return np.fromfile(self.path, dtype=np.float32, count=stop - start, offset=4 * start)


def _drop_cache(paths) -> None:
    """Asks the kernel to forget the files' pages (POSIX_FADV_DONTNEED), so each pass starts
    cold whatever the previous one left."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--gb", type=float, default=14.0, help="gigabytes per array")
    parser.add_argument("--chunk", type=int, default=1 << 26, help="elements per Dask block")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (the best counts)")
    args = parser.parse_args()

    import dask
    import dask.array as da

    import fastloss

    n = int(args.gb * 1e9) // 4
    args.dir.mkdir(parents=True, exist_ok=True)
    paths = [args.dir / "x.f32", args.dir / "y.f32"]
    started = time.perf_counter()
    for seed, path in enumerate(paths):
        _write(path, n, seed)
    print(f"files: 2 x {4 * n / 1e9:.1f} GB float32 ({n} elements) in {args.dir}, written in "
          f"{time.perf_counter() - started:.0f} s; memory "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB")
    files = [_File(path, n) for path in paths]

    def arrays(chunk):
        return [da.from_array(f, chunks=chunk, name=f"{f.path.name}-{chunk}") for f in files]

    ragged = int(args.chunk * 0.7) + 13
    timed = {
        "fastloss.mse_loss(X, Y)": lambda: fastloss.mse_loss(*arrays(args.chunk)),
        "((X - Y) ** 2).mean() (Dask, float32)": lambda: (
            (lambda x, y: ((x - y) ** 2).mean())(*arrays(args.chunk))),
    }
    results = {}
    with dask.config.set(scheduler="threads"):
        small = [da.from_array(np.asarray(f[: 1 << 22]), chunks=1 << 20) for f in files]
        dask.compute(fastloss.mse_loss(*small), ((small[0] - small[1]) ** 2).mean())  # warm up
        for _ in range(args.rounds):  # alternated, each pass from a cold cache
            for name, build in timed.items():
                _drop_cache(paths)
                started = time.perf_counter()
                value = build().compute()
                seconds = time.perf_counter() - started
                best = results.get(name, (math.inf, None))[0]
                results[name] = (min(best, seconds), value)
                print(f"{name}: {seconds:.1f} s, {8 * n / seconds / 1e9:.2f} GB/s, {value!r}",
                      flush=True)
        _drop_cache(paths)
        x, y = arrays(ragged)
        ragged_value, reference = dask.compute(
            fastloss.mse_loss(x, y),
            ((x.astype(np.float64) - y.astype(np.float64)) ** 2).mean())
    reference = float(reference)
    ulp = float(np.spacing(np.float32(reference)))
    first = results["fastloss.mse_loss(X, Y)"][1]
    same = np.asarray(first).tobytes() == np.asarray(ragged_value).tobytes()
    print(f"\nfastloss at chunks {args.chunk} and {ragged}: "
          f"{'the same bits' if same else 'DIFFERENT bits'}; float64 reference {reference!r}, "
          f"its float32 rounding {np.float32(reference)!r}\n")
    print(f"| pass (2 x {4 * n / 1e9:.0f} GB float32 files, chunks of {args.chunk}) "
          "| time | GB/s | result | error (float32 ulps) |")
    print("|---|---|---|---|---|")
    for name, (seconds, value) in results.items():
        error = abs(float(value) - reference) / ulp
        print(f"| {name} | {seconds:.1f} s | {8 * n / seconds / 1e9:.2f} | {float(value)!r} | "
              f"{error:.2f} |")
    if not args.keep:
        for path in paths:
            path.unlink()


if __name__ == "__main__":
    main()
