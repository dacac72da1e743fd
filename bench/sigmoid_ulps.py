"""sigmoid on every float32 input: the largest error in ulps against the float64 reference, and
how many results are not the correctly rounded one (tests/test_term_accuracy.py checks a dense
stride of the same range in CI; this is the whole of it, about two minutes).

    python bench/sigmoid_ulps.py            fastloss (the build this CPU picks)
    python bench/sigmoid_ulps.py --torch    PyTorch's torch.sigmoid too, on the same inputs

FASTLOSS_ISA=baseline (or x86_64_v3) measures a narrower build. NaN inputs are skipped (their
results are NaN, tests/test_edge_values.py); the reference is 1 / (1 + exp(-x)) in float64,
whose own error (~1e-16 relative) is far below a float32 ulp.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fastloss
from fastloss import _cpu

CHUNK = 1 << 24


def reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of the float32 spacing at float32(exact)."""
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", action="store_true", help="measure torch.sigmoid too")
    args = parser.parse_args(argv)
    impls = {"fastloss": fastloss.sigmoid}
    if args.torch:
        import torch
        impls["torch"] = lambda x: torch.sigmoid(torch.from_numpy(x)).numpy()
    worst = dict.fromkeys(impls, (0.0, 0.0))
    over_half = dict.fromkeys(impls, 0)
    over_one = dict.fromkeys(impls, 0)
    count = 0
    for start in range(0, 1 << 32, CHUNK):
        bits = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        x = x[~np.isnan(x)]
        exact = reference(x)
        count += x.size
        for name, sigmoid in impls.items():
            u = ulps(sigmoid(x), exact)
            i = int(np.argmax(u))
            if u[i] > worst[name][0]:
                worst[name] = (float(u[i]), float(x[i]))
            over_half[name] += int(np.count_nonzero(u > 0.5))
            over_one[name] += int(np.count_nonzero(u > 1.0))
    print(f"sigmoid on all {count} non-NaN float32 inputs (fastloss isa "
          f"{_cpu.build_info()['isa']})")
    for name in impls:
        error, where = worst[name]
        print(f"{name:9s} max {error:.3f} ulp (at x = {where!r}); not correctly rounded: "
              f"{over_half[name]} ({100 * over_half[name] / count:.4f} %); over 1 ulp: "
              f"{over_one[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
