"""Same bits for any OMP_NUM_THREADS, for repeated calls, and a correct portable (baseline) build.

Each thread count runs in a fresh interpreter (OpenMP reads OMP_NUM_THREADS once, at start-up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastloss
from _helpers import (
    DTYPES,
    OPS,
    assert_elementwise_close,
    assert_loss_matches,
    assert_same_bits,
    make_inputs,
    make_weight,
    python_env,
    run_python,
    run_python_json,
    seed_for,
)
from fastloss import reference as R

TESTS_DIR = Path(__file__).resolve().parent

# Computes the results whose bits must not depend on the thread count; prints them as JSON.
DETERMINISM_CODE = r"""
import hashlib, json
import numpy as np
import fastloss
import fastloss._cpu

def compute():
    n = 3_000_001
    rng = np.random.default_rng(20240611)
    out = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        x = rng.standard_normal(n).astype(dtype)
        y = rng.standard_normal(n).astype(dtype)
        z = (rng.standard_normal(n) * 3).astype(dtype)
        t = rng.random(n).astype(dtype)
        p = rng.random(n).astype(dtype)
        pw = rng.uniform(0.5, 2, size=1000).astype(dtype)
        bits = lambda v: np.asarray(v).tobytes().hex()
        digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
        out[f"mse_mean_{name}"] = bits(fastloss.mse_loss(x, y))
        out[f"mse_sum_{name}"] = bits(fastloss.mse_loss(x, y, reduction="sum"))
        out[f"logits_mean_{name}"] = bits(fastloss.binary_cross_entropy_with_logits(z, t))
        out[f"logits_pw_sum_{name}"] = bits(fastloss.binary_cross_entropy_with_logits(
            z[:3_000_000].reshape(3000, 1000), t[:3_000_000].reshape(3000, 1000), pos_weight=pw,
            reduction="sum"))
        out[f"bce_mean_{name}"] = bits(fastloss.binary_cross_entropy(p, t))
        loss, grad = fastloss.mse_loss_and_grad(x, y)
        out[f"mse_and_grad_loss_{name}"] = bits(loss)
        out[f"mse_and_grad_grad_{name}"] = digest(grad)
        out[f"logits_grad_{name}"] = digest(fastloss.binary_cross_entropy_with_logits_grad(z, t))
        out[f"sigmoid_{name}"] = digest(fastloss.sigmoid(z))
    return out

if __name__ == "__main__":
    info = fastloss._cpu.build_info()
    print(json.dumps({"results": compute(), "max_threads": info["max_threads"],
                      "isa": info["isa"]}))
"""


@pytest.fixture(scope="module")
def per_thread_count():
    return {k: run_python_json(DETERMINISM_CODE, python_env(OMP_NUM_THREADS=str(k)))
            for k in (1, 2, 3, 4)}


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_omp_num_threads_is_honoured(per_thread_count, k):
    assert per_thread_count[k]["max_threads"] == k


@pytest.mark.parametrize("k", [2, 3, 4])
def test_same_bits_for_any_thread_count(per_thread_count, k):
    one = per_thread_count[1]["results"]
    other = per_thread_count[k]["results"]
    assert one.keys() == other.keys()
    differing = [key for key in one if one[key] != other[key]]
    assert not differing, f"OMP_NUM_THREADS=1 vs {k}: different bits for {differing}"


def test_same_bits_in_this_process(per_thread_count):
    """The pytest process itself (default thread count) agrees with the subprocesses."""
    namespace = {}
    exec(compile(DETERMINISM_CODE, "<determinism>", "exec"), namespace)
    here = namespace["compute"]()
    assert here == per_thread_count[1]["results"]


def test_subprocess_results_are_meaningful(per_thread_count):
    """Guards the comparison above: the printed bits decode to the reference values."""
    rng = np.random.default_rng(20240611)
    n = 3_000_001
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    got = np.frombuffer(bytes.fromhex(per_thread_count[1]["results"]["mse_mean_float32"]),
                        dtype=np.float32)[0]
    assert_loss_matches(np.float32(got), R.mse_loss(x, y), np.float32, "mean")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_repeated_calls_give_identical_bits(dtype):
    rng = np.random.default_rng(99)
    n = 3_000_001
    x = rng.standard_normal(n).astype(dtype)
    y = rng.random(n).astype(dtype)
    w = rng.uniform(0.5, 2, size=1001).astype(dtype)
    first = (fastloss.mse_loss(x, y), fastloss.binary_cross_entropy_with_logits(x, y),
             fastloss.mse_loss_and_grad(x, y), fastloss.binary_cross_entropy(y, y, reduction="sum"),
             fastloss.binary_cross_entropy_with_logits(x[:3_000_000].reshape(-1, 1000),
                                                       y[:3_000_000].reshape(-1, 1000),
                                                       pos_weight=w[:1000], reduction="sum"))
    for _ in range(4):
        again = (fastloss.mse_loss(x, y), fastloss.binary_cross_entropy_with_logits(x, y),
                 fastloss.mse_loss_and_grad(x, y),
                 fastloss.binary_cross_entropy(y, y, reduction="sum"),
                 fastloss.binary_cross_entropy_with_logits(x[:3_000_000].reshape(-1, 1000),
                                                           y[:3_000_000].reshape(-1, 1000),
                                                           pos_weight=w[:1000], reduction="sum"))
        assert_same_bits(again[0], first[0])
        assert_same_bits(again[1], first[1])
        assert_same_bits(again[2][0], first[2][0])
        assert_same_bits(again[2][1], first[2][1])
        assert_same_bits(again[3], first[3])
        assert_same_bits(again[4], first[4])


# ---- the other builds (FASTLOSS_ISA=baseline, FASTLOSS_ISA=x86_64_v3) -------------------------
# The process picks the widest build its CPU runs (x86_64_v4 on AVX-512 machines), which every
# other test checks; FASTLOSS_ISA caps the choice, so each narrower build is checked here in a
# fresh interpreter. Serial and parallel sizes (the threshold is 32768), one chunk and a ragged
# tail past it (chunks of 8192), and a 2-D shape whose trailing weights cross chunks at odd
# places.
FORCED_ISAS = ("baseline", "x86_64_v3")
BASELINE_SHAPES = [(1000,), (8193,), (32_769,), (100_003,), (97, 1031)]
SIGMOID_SIZES = (1001, 100_001)


def baseline_cases():
    """Deterministic (key, op, x, y, weight, pos_weight, reduction) cases for the forced-build
    runs, each unweighted and weighted (full-shape weights for 1-D, trailing ones for 2-D)."""
    for op in OPS:
        for dtype in DTYPES:
            for shape in BASELINE_SHAPES:
                for weighted in (False, True):
                    for reduction in ("mean", "sum", "none"):
                        shape_id = "x".join(map(str, shape))
                        key = (f"{op.name}-{np.dtype(dtype).name}-{shape_id}-{reduction}"
                               f"-{'weighted' if weighted else 'plain'}")
                        rng = np.random.default_rng(seed_for("baseline", key))
                        x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
                        kind = ("trailing" if len(shape) > 1 else "full") if weighted else None
                        w = make_weight(kind, shape, dtype, rng)
                        pw = (make_weight(kind, shape, dtype, rng)
                              if op.has_pos_weight and weighted else None)
                        yield key, op, x, y, w, pw, reduction


BASELINE_CODE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import fastloss, fastloss._cpu
import test_determinism as td

results = {}
for key, op, x, y, w, pw, reduction in td.baseline_cases():
    results[key + "|loss"] = np.asarray(op.call_loss(x, y, w, pw, reduction))
    results[key + "|grad"] = op.call_grad(x, y, w, pw, reduction, grad_output=0.625)
    loss, grad = op.call_and_grad(x, y, w, pw, reduction, grad_output=0.625)
    results[key + "|fused_loss"] = np.asarray(loss)
    results[key + "|fused_grad"] = grad
for dtype in (np.float32, np.float64):
    for n in td.SIGMOID_SIZES:
        s = np.linspace(-120, 120, n).astype(dtype)
        name = f"{np.dtype(dtype).name}-{n}"
        results["sigmoid-" + name] = fastloss.sigmoid(s)
        results["sigmoid_backward-" + name] = fastloss.sigmoid_backward(s, fastloss.sigmoid(s))
np.savez(sys.argv[2], **results)
print(fastloss._cpu.build_info()["isa"], fastloss._cpu.build_info()["max_threads"])
"""


@pytest.fixture(scope="module", params=FORCED_ISAS)
def forced_isa_results(request, tmp_path_factory):
    """{threads: {key: result}} of the build FASTLOSS_ISA=request.param, with 1 and 3 threads."""
    isa = request.param
    directory = tmp_path_factory.mktemp(isa)
    runs = {}
    for k in (1, 3):
        path = directory / f"{isa}_{k}.npz"
        printed = run_python(BASELINE_CODE, python_env(FASTLOSS_ISA=isa, OMP_NUM_THREADS=str(k)),
                             str(TESTS_DIR), str(path))
        got, threads = printed.split()[-2:]
        if got != isa and isa != "baseline":
            pytest.skip(f"this CPU does not run the {isa} build (FASTLOSS_ISA={isa} gave {got})")
        assert got == isa, f"FASTLOSS_ISA={isa} gave isa {got!r}"
        assert int(threads) == k
        with np.load(path) as data:
            runs[k] = {key: data[key] for key in data.files}
    return isa, runs


def test_forced_isa_matches_reference(forced_isa_results):
    isa, runs = forced_isa_results
    results = runs[1]
    checked = 0
    for key, op, x, y, w, pw, reduction in baseline_cases():
        dtype = x.dtype
        for name in ("loss", "fused_loss"):
            got = results[f"{key}|{name}"]
            if reduction != "none":
                got = dtype.type(got[()])
            op.check_loss(got, x, y, w, pw, reduction, what=f"{isa} {key} {name}")
        for name in ("grad", "fused_grad"):
            op.check_grad(results[f"{key}|{name}"], x, y, w, pw, reduction, 0.625,
                          what=f"{isa} {key} {name}")
        checked += 1
    assert checked == len(OPS) * len(DTYPES) * len(BASELINE_SHAPES) * 2 * 3
    for dtype in DTYPES:
        for n in SIGMOID_SIZES:
            name = f"{np.dtype(dtype).name}-{n}"
            s = np.linspace(-120, 120, n).astype(dtype)
            assert_elementwise_close(results[f"sigmoid-{name}"], R.sigmoid(s), dtype,
                                     what=f"{isa} sigmoid {name}")
            assert_elementwise_close(results[f"sigmoid_backward-{name}"],
                                     R.sigmoid_backward(s, results[f"sigmoid-{name}"]), dtype,
                                     what=f"{isa} sigmoid_backward {name}")


def test_forced_isa_same_bits_for_any_thread_count(forced_isa_results):
    isa, runs = forced_isa_results
    one, three = runs[1], runs[3]
    assert one.keys() == three.keys()
    for key in one:
        assert_same_bits(one[key], three[key], what=f"{isa} {key}, 1 vs 3 threads")


def test_default_isa_reported():
    info = fastloss._cpu.build_info()
    assert info["isa"] in ("baseline", "x86_64_v3", "x86_64_v4")
