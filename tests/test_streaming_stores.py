"""Outputs of 32 MiB and more are written with non-temporal stores (csrc/kernels.cpp,
streams_into: float32 and float64, the AVX2 and AVX-512 builds, an output 16-byte aligned that
is none of the inputs). Each elementwise output of such a call must hold the bits the same
call gives through ordinary stores: the same call on each half of the arrays (16 MiB, below
the threshold), into an output offset by one element (not 16-byte aligned), and in place. Run
in each build this CPU can run, in a fresh interpreter (FASTLOSS_ISA is read at import)."""

from __future__ import annotations

import pytest
from _helpers import python_env, run_python_json

SIZES = {"float32": 2**23 + 37, "float64": 2**22 + 37}  # just over 32 MiB each

CODE = r"""
import json, sys
import numpy as np
import fastloss
n, dtype = int(sys.argv[1]), np.dtype(sys.argv[2])
bits = np.uint32 if dtype.itemsize == 4 else np.uint64
rng = np.random.default_rng(2024)
x = (rng.standard_normal(n) * 4).astype(dtype)
p = rng.random(n).astype(dtype)
y = (rng.random(n) < 0.5).astype(dtype)
g = rng.standard_normal(n).astype(dtype)
w = rng.random(n).astype(dtype) + 0.5

def fresh():
    return np.empty(n, dtype)

def offset():  # a view one element past a 16-byte aligned start: never streamed
    return np.empty(n + 1, dtype)[1:]

def in_pieces(call):
    out = fresh()
    h = n // 2
    call(out[:h], slice(None, h))
    call(out[h:], slice(h, None))
    return out

cases = {
    "mse_loss_grad": lambda out, s=slice(None): fastloss.mse_loss_grad(x[s], g[s], reduction="sum", out=out),
    "mse_loss_and_grad": lambda out, s=slice(None): fastloss.mse_loss_and_grad(
        x[s], g[s], reduction="sum", out=out)[1],
    "logits_and_grad": lambda out, s=slice(None): fastloss.binary_cross_entropy_with_logits_and_grad(
        x[s], y[s], weight=w[s], reduction="sum", out=out)[1],
    "bce_grad": lambda out, s=slice(None): fastloss.binary_cross_entropy_grad(p[s], y[s], reduction="sum", out=out),
    "sigmoid": lambda out, s=slice(None): fastloss.sigmoid(x[s], out=out),
    "sigmoid_backward": lambda out, s=slice(None): fastloss.sigmoid_backward(g[s], p[s], out=out),
}
mismatches = {}
for name, call in cases.items():
    whole = fresh()
    call(whole)
    shifted = offset()
    call(shifted)
    bad = []
    if not np.array_equal(whole.view(bits), in_pieces(call).view(bits)):
        bad.append("pieces")
    if not np.array_equal(whole.view(bits), shifted.view(bits)):
        bad.append("offset")
    mismatches[name] = bad
# the losses of reduction='none' (an elementwise loss output, a fresh array)
h = n // 2
for name, fn, a in (("mse none", fastloss.mse_loss, g), ("logits none",
                    fastloss.binary_cross_entropy_with_logits, y)):
    whole = fn(x, a, reduction="none")
    halves = np.concatenate([fn(x[:h], a[:h], reduction="none"), fn(x[h:], a[h:], reduction="none")])
    mismatches[name] = [] if np.array_equal(whole.view(bits), halves.view(bits)) else ["pieces"]
inplace = x.copy()
fastloss.sigmoid(inplace, out=inplace)
mismatches["sigmoid in place"] = [] if np.array_equal(inplace, fastloss.sigmoid(x)) else ["in place"]
print(json.dumps({"isa": fastloss._cpu.build_info()["isa"], "mismatches": mismatches}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", sorted(SIZES))
@pytest.mark.parametrize("isa", [None, "x86_64_v3", "baseline"], ids=str)
def test_streamed_outputs_hold_the_bits_of_ordinary_stores(isa, dtype):
    env = python_env() if isa is None else python_env(FASTLOSS_ISA=isa)
    out = run_python_json(CODE, env, str(SIZES[dtype]), dtype)
    if isa is not None and out["isa"] != isa:
        pytest.skip(f"this CPU does not run the {isa} build")
    bad = {name: how for name, how in out["mismatches"].items() if how}
    assert not bad, f"{out['isa']}, {dtype}: {bad}"
