"""Two builds of fastloss, A and B, timed in alternation: mse_loss on float32 at N = 1e8 (all
threads) and at N = 16 (one call, warm). Each round runs one fresh interpreter per build, so
that the machine's drift falls on both alike; the figure of a build is its minimum over rounds.

    python bench/ab_builds.py A_SITE B_SITE [--rounds 5]

A_SITE and B_SITE are directories holding an installed fastloss package (a wheel unpacked), or
'-' for the fastloss the running interpreter imports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import os, sys
if os.environ.get("FASTLOSS_AB_SITE"):
    # an editable install's import hook outranks sys.path: drop it to import the other build
    sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
    sys.path.insert(0, os.environ["FASTLOSS_AB_SITE"])
import json, time, numpy as np, fastloss
rng = np.random.default_rng(1)
out = {"file": fastloss.__file__}
x = rng.standard_normal(10**8, dtype=np.float32); y = rng.standard_normal(10**8, dtype=np.float32)
fastloss.mse_loss(x, y)
best = min((lambda t: (fastloss.mse_loss(x, y), time.perf_counter() - t)[1])(time.perf_counter())
           for _ in range(7))
out["large_ms"] = best * 1e3
out["large_gbs"] = 2 * x.nbytes / best / 1e9
del x, y
a = rng.standard_normal(16).astype(np.float32); b = rng.standard_normal(16).astype(np.float32)
f = fastloss.mse_loss
for _ in range(10000): f(a, b)
runs = []
for _ in range(20):
    t = time.perf_counter()
    for _ in range(20000): f(a, b)
    runs.append((time.perf_counter() - t) / 20000)
out["small_ns"] = min(runs) * 1e9
print(json.dumps(out))
"""


def run(site: str) -> dict:
    env = dict(os.environ)
    env.pop("FASTLOSS_AB_SITE", None)
    if site != "-":
        env["FASTLOSS_AB_SITE"] = site
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, check=True, cwd="/")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"A": [], "B": []}
    for _ in range(args.rounds):
        for name, site in (("A", args.a), ("B", args.b)):
            results[name].append(run(site))
    for name in ("A", "B"):
        rows = results[name]
        print(f"{name} {rows[0]['file']}: mse_loss 1e8 float32 "
              f"{min(r['large_ms'] for r in rows):.1f} ms "
              f"({max(r['large_gbs'] for r in rows):.1f} GB/s), 16 elements "
              f"{min(r['small_ns'] for r in rows):.1f} ns")


if __name__ == "__main__":
    main()
