"""mse_loss over two float32 arrays larger than the machine's memory, read from memory-mapped
files through Dask: fastloss's Dask family against the Dask expression ((x - y) ** 2).mean().

    python bench/out_of_core.py DIR [--gb 14] [--chunk 67108864] [--keep]

Writes DIR/x.f32 and DIR/y.f32 (GB gigabytes each, standard normal, seeded; reused when they
exist with the right size), then times, on Dask's threaded scheduler, each once from a cold
start (the files together exceed the page cache, so every pass reads the disk):
- fastloss.mse_loss(X, Y) at two chunkings (CHUNK and a ragged 0.7 CHUNK), which must give the
  same bits;
- ((X - Y) ** 2).mean(), Dask's float32 expression;
- the float64 reference ((X64 - Y64) ** 2).mean(), Dask's float64 sums (relative error about
  1e-16, far below a float32 ulp), for the errors.
Prints one line per pass (seconds, GB/s of the inputs read, the result, its error in float32
ulps of the reference) and a Markdown table for bench/NOTES.md. Deletes the files unless --keep.
"""

from __future__ import annotations

import argparse
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
    maps = [np.memmap(path, dtype=np.float32, mode="r", shape=(n,)) for path in paths]

    def arrays(chunk):
        return [da.from_array(m, chunks=chunk, asarray=True) for m in maps]

    ragged = int(args.chunk * 0.7) + 13
    passes = {
        f"fastloss.mse_loss, chunks {args.chunk}": lambda: fastloss.mse_loss(*arrays(args.chunk)),
        f"fastloss.mse_loss, chunks {ragged}": lambda: fastloss.mse_loss(*arrays(ragged)),
        "((x - y) ** 2).mean() (Dask, float32)": lambda: (
            (lambda x, y: ((x - y) ** 2).mean())(*arrays(args.chunk))),
        "float64 reference": lambda: (lambda x, y: ((x.astype(np.float64)
                                                     - y.astype(np.float64)) ** 2).mean())(
            *arrays(args.chunk)),
    }
    results = {}
    with dask.config.set(scheduler="threads"):
        for name, build in passes.items():
            _drop_cache(paths)
            started = time.perf_counter()
            value = build().compute()
            seconds = time.perf_counter() - started
            results[name] = (seconds, value)
            print(f"{name}: {seconds:.1f} s, {8 * n / seconds / 1e9:.2f} GB/s, {value!r}",
                  flush=True)
    reference = float(results["float64 reference"][1])
    ulp = float(np.spacing(np.float32(reference)))
    names = list(passes)
    same = np.asarray(results[names[0]][1]).tobytes() == np.asarray(results[names[1]][1]).tobytes()
    print(f"\nfastloss at both chunkings: {'the same bits' if same else 'DIFFERENT bits'}; "
          f"float32 of the reference: {np.float32(reference)!r}\n")
    print("| pass | time | GB/s | result | error (float32 ulps) |")
    print("|---|---|---|---|---|")
    for name in names:
        seconds, value = results[name]
        error = abs(float(value) - reference) / ulp
        print(f"| {name} | {seconds:.1f} s | {8 * n / seconds / 1e9:.2f} | {float(value)!r} | "
              f"{error:.2f} |")
    if not args.keep:
        for path in paths:
            path.unlink()


if __name__ == "__main__":
    main()
