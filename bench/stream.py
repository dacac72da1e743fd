"""STREAM-like memory bandwidth probe: the ceiling the benchmarks are measured against.

    python bench/stream.py            100 MB arrays (2.5e7 float32s)
    python bench/stream.py --big      400 MB arrays (1e8 float32s)

read: all threads sum one float32 array (4 bytes per element); copy: all threads copy it into
another (8 bytes per element: one read, one write). Both use fastloss's own OpenMP build
(fastloss._cpu.stream_read / stream_copy); the probe itself is
fastloss.bench.bandwidth.measure_bandwidth, shared with ``python -m fastloss bench`` and the
pytest benchmarks.
"""

import argparse

from fastloss.bench.bandwidth import STREAM_N, STREAM_N_BIG, measure_bandwidth

__all__ = ["measure_bandwidth"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", action="store_true", help="1e8 floats instead of 2.5e7")
    parser.add_argument("--n", type=int, help="array length in float32s (overrides --big)")
    parser.add_argument("--repeats", type=int, default=7, help="default: %(default)s")
    args = parser.parse_args(argv)
    n = args.n or (STREAM_N_BIG if args.big else STREAM_N)
    result = measure_bandwidth(n, args.repeats)
    print(f"array: {n} float32 ({4 * n / 1e6:.0f} MB), median of {args.repeats}")
    print(f"read:  {result['read_gbs']:.2f} GB/s")
    print(f"copy:  {result['copy_gbs']:.2f} GB/s")


if __name__ == "__main__":
    main()
