"""The short-row cross-entropy path (class indices, no label smoothing, C <= 64 contiguous
classes: groups of rows that share one tile; the AVX-512 build has its own float32 kernel) at
its edges, against an exact row loss and fastloss.reference on fresh inputs: every C from 1 to
64 and past it, row counts that leave partial blocks of 8 rows and partial groups, gaps to the
target's logit around the general scan's threshold (other exps summing to 2^1000), logits of
any magnitude, NaN and -inf logits next to ordinary rows, weights, ignored rows, grad_output
arrays, the in-place gradient, and the narrower builds' short_rows (their row independence
too: tests/test_multiclass_dask.py checks this build's)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastloss
from _helpers import (
    assert_same_bits,
    check_cross_entropy_grad,
    check_cross_entropy_loss,
    python_env,
    run_python_json,
    seed_for,
    ulp_distance_f32,
)
from fastloss import reference as R

DTYPES = (np.float32, np.float64)
dtype_ids = lambda d: np.dtype(d).name  # noqa: E731
# the most rows a group takes is 1024 // (8 C) * 8 (1024 at C = 1, 96 at C = 10, 16 at C = 64)
ROW_COUNTS = (1, 7, 9, 97, 1025, 8193)


def accurate_row_losses(x, t, weight=None, ignore_index=-100):
    """Row losses in float64 without the reference's cancellation where a loss is small:
    w_y ((m - x_y) + log1p(sum over c != argmax of exp(x_c - m))), two non-negative terms; the
    reference's value for rows that are not all finite and for ignored rows."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        ref = np.asarray(R.cross_entropy(x, t, weight, ignore_index, reduction="none"), np.float64)
    out = ref.copy()
    n, classes = x.shape
    rows = np.flatnonzero(np.isfinite(x).all(axis=1) & (t != ignore_index))
    if rows.size:
        xr, yr = x[rows], np.asarray(t)[rows].astype(np.int64)
        top = np.argmax(xr, axis=1)
        m = xr[np.arange(rows.size), top]
        e = np.exp(xr - m[:, None])
        e[np.arange(rows.size), top] = 0.0
        loss = (m - xr[np.arange(rows.size), yr]) + np.log1p(e.sum(axis=1))
        w = np.ones(rows.size) if weight is None else np.asarray(weight, np.float64)[yr]
        out[rows] = np.where(w == 0, 0.0, w * loss)
    return out


def _check_none(loss, x, t, dtype, max_ulps=0.51, **kw):
    """'none' losses against accurate_row_losses: float32 within ``max_ulps`` (each row's double
    loss is exact to ~1e-10, so its float32 is correctly rounded but within ~1e-10 of a tie),
    float64 within 1e-13 relative."""
    ref = accurate_row_losses(x, t, **kw)
    loss = np.asarray(loss, dtype=np.float64)
    assert np.array_equal(np.isnan(loss), np.isnan(ref))
    assert np.array_equal(loss[np.isinf(ref)], ref[np.isinf(ref)])
    fine = np.isfinite(ref)
    if dtype == np.float32:
        worst = float(np.max(ulp_distance_f32(loss[fine].astype(np.float32), ref[fine]), initial=0))
        assert worst <= max_ulps, f"'none' loss {worst:.3f} float32 ulps from the exact value"
    else:
        err = np.abs(loss[fine] - ref[fine]) <= 1e-13 * np.abs(ref[fine])
        assert err.all(), f"'none' loss of row {np.flatnonzero(fine)[np.argmin(err)]} off"


def _check_all(x, t, dtype, **kw):
    for reduction in ("mean", "sum", "none"):
        loss, grad = fastloss.cross_entropy_and_grad(x, t, reduction=reduction, **kw)
        alone = fastloss.cross_entropy(x, t, reduction=reduction, **kw)
        if reduction == "none":
            _check_none(loss, x, t, dtype, **kw)
            _check_none(alone, x, t, dtype, **kw)
        else:
            check_cross_entropy_loss(loss, x, t, reduction=reduction, **kw)
            check_cross_entropy_loss(alone, x, t, reduction=reduction, what="loss alone", **kw)
        check_cross_entropy_grad(grad, x, t, reduction=reduction, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("classes", list(range(1, 66)))
def test_every_class_count(classes, dtype):
    rng = np.random.default_rng(seed_for("short", classes, np.dtype(dtype).name))
    n = int(rng.choice(ROW_COUNTS))
    x = np.asarray(rng.standard_normal((n, classes)) * 3, dtype=dtype)
    t = rng.integers(0, classes, n)
    if n >= 3:
        t[rng.integers(0, n, 2)] = -100
    _check_all(x, t, dtype)
    w = np.asarray(rng.uniform(0.25, 2.0, classes), dtype=dtype)
    w[rng.integers(0, classes)] = 0.0  # a class of weight 0 adds 0, its gradient is 0
    _check_all(x, t, dtype, weight=w)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", ROW_COUNTS)
@pytest.mark.parametrize("classes", [1, 2, 8, 10, 17, 64])
def test_row_counts_and_grad_output(n, classes, dtype):
    rng = np.random.default_rng(seed_for("short-n", n, classes, np.dtype(dtype).name))
    x = np.asarray(rng.standard_normal((n, classes)) * 4 + 2, dtype=dtype)
    t = rng.integers(0, classes, n).astype(np.int32)
    go = np.asarray(rng.standard_normal(n), dtype=dtype)
    loss, grad = fastloss.cross_entropy_and_grad(x, t, reduction="none", grad_output=go)
    _check_none(loss, x, t, dtype)
    check_cross_entropy_grad(grad, x, t, reduction="none", grad_output=go)
    for reduction in ("mean", "sum"):
        expected = fastloss.cross_entropy_grad(x, t, reduction=reduction, grad_output=-0.75)
        check_cross_entropy_grad(expected, x, t, reduction=reduction, grad_output=-0.75)
        in_place = x.copy()
        _, written = fastloss.cross_entropy_and_grad(in_place, t, reduction=reduction,
                                                     grad_output=-0.75, out=in_place)
        assert written is in_place
        assert_same_bits(in_place, expected, what="in place")


def _gap_rows(dtype, classes, gap):
    """Rows whose largest other logit sits ``gap`` above the target's (and rows below it), so
    that the other exps sum near 2^1000 = e^693.1, where a row leaves the short-row path for the
    general scan (a row-local rule)."""
    rows = 40
    rng = np.random.default_rng(seed_for("gap", classes, gap))
    x = np.asarray(rng.uniform(-2, 2, (rows, classes)), dtype=dtype)
    t = rng.integers(0, classes, rows)
    for r in range(0, rows, 2):
        x[r, t[r]] -= dtype(gap / 2)
        other = (t[r] + 1 + r) % classes
        if other != t[r]:
            x[r, other] += dtype(gap / 2 + rng.uniform(-0.5, 0.5))
    return x, t


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("gap", [60.0, 600.0, 692.5, 693.1, 693.6, 708.0, 745.0, 1000.0])
@pytest.mark.parametrize("classes", [2, 10, 33])
def test_gaps_near_the_general_scans_threshold(classes, gap, dtype):
    x, t = _gap_rows(dtype, classes, gap)
    _check_all(x, t, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("scale", [1000.0, 4000.0, 4100.0, 1e6, 1e30])
def test_large_logits(scale, dtype):
    """Logits far from 0 (the short rows take the gaps to the target's logit: any magnitude), and
    gaps past the exp's range in the same rows (the general scan)."""
    rng = np.random.default_rng(seed_for("large", scale))
    x = np.asarray(rng.standard_normal((300, 10)) * 3, dtype=dtype)
    x[::7] += dtype(scale)
    x[3::11] -= dtype(scale)
    t = rng.integers(0, 10, 300)
    _check_all(x, t, dtype)
    _check_all(x - dtype(scale), t, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_non_finite_logits_next_to_ordinary_rows(dtype):
    rng = np.random.default_rng(17)
    n, classes = 200, 10
    x = np.asarray(rng.standard_normal((n, classes)) * 3, dtype=dtype)
    t = rng.integers(0, classes, n)
    x[5, 3] = np.nan                      # a NaN beside the target
    x[9, t[9]] = np.nan                   # a NaN target logit
    x[20, :4] = -np.inf                   # masked classes
    x[21, t[21]] = -np.inf                # a masked target: inf
    x[30] = -np.inf                       # a row of -inf: NaN
    x[120, 2] = np.inf                    # a group with +inf
    t[40] = -100
    x[40, 0] = np.nan                     # ignored rows add 0 whatever they hold
    with np.errstate(all="ignore"):
        ref = R.cross_entropy(x, t, reduction="none")
    for reduction in ("none", "sum"):
        loss, grad = fastloss.cross_entropy_and_grad(x, t, reduction=reduction)
        check_cross_entropy_grad(grad, x, t, reduction=reduction)
    check_cross_entropy_loss(loss, x, t, reduction="sum")
    loss = fastloss.cross_entropy(x, t, reduction="none")
    assert np.isnan(loss[[5, 9, 30]]).all() and loss[21] == np.inf and loss[40] == 0
    assert np.isnan(loss[120:130]).sum() == np.isnan(ref[120:130]).sum()
    # the ordinary rows of the groups that hold the NaNs and -infs keep their accuracy
    _check_none(loss, x, t, dtype)


@pytest.mark.parametrize("classes", [1, 5, 10, 64])
def test_mean_of_equal_rows_within_one_ulp(classes):
    row = np.linspace(-3, 2, classes).astype(np.float32)
    for n in (1000, 30_001):
        x = np.broadcast_to(row, (n, classes)).copy()
        t = np.full(n, classes // 3)
        check_cross_entropy_loss(fastloss.cross_entropy(x, t), x, t)
        check_cross_entropy_loss(fastloss.cross_entropy(x, t, reduction="sum"), x, t,
                                 reduction="sum")


SHORT_BUILDS_CODE = r"""
import json, numpy as np, fastloss, fastloss._cpu
from fastloss import reference as R
rng = np.random.default_rng(31)
out = {"isa": fastloss._cpu.multiclass_isa, "worst": 0.0, "grad": 0.0}
for classes in (1, 3, 8, 10, 64):
    x = (rng.standard_normal((3001, classes)) * 3).astype(np.float32)
    t = rng.integers(0, classes, 3001)
    x[7, 0] = -np.inf
    loss, grad = fastloss.cross_entropy_and_grad(x, t, reduction="none")
    ref = R.cross_entropy(x, t, reduction="none")
    fine = np.isfinite(ref)
    ulps = np.abs(loss[fine] - ref[fine]) / np.spacing(np.abs(ref[fine]).astype(np.float32))
    out["worst"] = max(out["worst"], float(ulps.max()))
    out["grad"] = max(out["grad"], float(np.max(np.abs(grad - R.cross_entropy_grad(x, t, reduction="none")))))
    # a row's bits do not depend on the rows that share its call (test_multiclass_dask.py)
    x[11] += 60.0
    whole = fastloss.cross_entropy_and_grad(x, t, reduction="none")
    parts = np.split(np.arange(3001), [5, 700, 701, 2000])
    split = [fastloss.cross_entropy_and_grad(x[q], t[q], reduction="none") for q in parts]
    out["independent"] = out.get("independent", True) and bool(
        np.concatenate([a for a, _ in split]).tobytes() == whole[0].tobytes()
        and np.concatenate([b for _, b in split]).tobytes() == whole[1].tobytes())
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", ["baseline", "x86_64_v3"])
def test_narrower_builds_short_rows(isa):
    """The portable short_rows of the narrower builds (the AVX-512 build has its own kernel)."""
    got = run_python_json(SHORT_BUILDS_CODE, python_env(FASTLOSS_ISA=isa))
    if got["isa"] != isa:
        pytest.skip(f"{isa} is not this machine's build or a narrower one (got {got['isa']})")
    assert got["worst"] <= 0.51 and got["grad"] < 1e-6 and got["independent"], got


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_a_rows_bits_do_not_depend_on_its_place_in_the_tile(dtype):
    """As tests/test_multiclass_dask.py's check, in both dtypes: float64 rows take the portable
    short_rows in every build, and their outputs show a last-bit change of a row's sum that a
    float32 result rounds away."""
    rng = np.random.default_rng(seed_for("short-place", np.dtype(dtype).name))
    for classes in (5, 10, 33, 64):
        x = np.asarray(rng.standard_normal((2000, classes)) * 4, dtype=dtype)
        t = rng.integers(0, classes, 2000)
        whole = fastloss.cross_entropy_and_grad(x, t, reduction="none")
        for shift in (1, 2, 5):
            part = fastloss.cross_entropy_and_grad(x[shift:], t[shift:], reduction="none")
            assert_same_bits(part[0], whole[0][shift:], f"C={classes} loss, shifted by {shift}")
            assert_same_bits(part[1], whole[1][shift:], f"C={classes} grad, shifted by {shift}")
