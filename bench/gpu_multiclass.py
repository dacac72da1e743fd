"""GPU timings of fastloss's multi-class kernels (cuda/multiclass.cu) against PyTorch CUDA.

    python bench/gpu_multiclass.py [--out PATH]

The issue's three shapes of float32 logits with int64 class-index targets: (4096, 1000),
(10^6, 10) and (64, 10^5). Rows per shape, each the median of CUDA-event timings with the L2
emptied before each repeat (bench/gpu.py's ``time_events`` and ``L2Flush``):

- fastloss ``cross_entropy`` (the mean alone: one read of the logits) on CuPy arrays;
- fastloss ``cross_entropy_and_grad(out=)`` (one read, one write of the gradient);
- ``torch.nn.functional.cross_entropy`` forward, and forward + backward
  (``torch.autograd.grad``, so no gradient accumulates between repeats);
- ``fastloss.torch.cross_entropy`` forward + backward on the same CUDA tensors (the custom op
  on torch's current stream).

GB/s counts the ideal bytes: logits read once (and, fused, the gradient written once) plus the
targets; '% copy' is of the device-to-device copy measured first. Before timing, each fastloss
result is checked against ``fastloss.reference`` on host copies (float64) and ten calls are
compared bitwise.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from gpu import L2Flush, measure_copy, time_events, torch_stream

import fastloss
import fastloss.reference as R

SHAPES = ((4096, 1000), (10**6, 10), (64, 10**5))
REPEATS = 30


def check(cp, x, t, loss, grad):
    """Loss within 1e-6 relative of the float64 reference, gradient within 1e-5 of its scale."""
    hx, ht = cp.asnumpy(x).astype(np.float64), cp.asnumpy(t)
    want_loss = R.cross_entropy(hx, ht)
    want_grad = R.cross_entropy_grad(hx, ht)
    loss_ok = abs(float(loss) - float(want_loss)) <= 1e-6 * abs(float(want_loss))
    grad_err = float(np.max(np.abs(cp.asnumpy(grad) - want_grad)))
    return loss_ok and grad_err <= 1e-5 * float(np.max(np.abs(want_grad))), grad_err


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, metavar="PATH", help="also write the table here")
    args = parser.parse_args(argv)
    import cupy as cp
    import torch
    import torch.nn.functional as F

    import fastloss.torch as ft

    flush = L2Flush(cp)
    copy = max(measure_copy(cp, flush, 10).values())
    lines = [f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}; "
             f"copy ceiling {copy:.0f} GB/s; float32 logits, int64 targets, reduction='mean'",
             "",
             "| shape | fastloss loss us | GB/s | % copy | fastloss fused us | GB/s | % copy "
             "| torch fwd us | torch fwd+bwd us | fastloss.torch fwd+bwd us "
             "| torch fwd / fastloss loss | torch fwd+bwd / fastloss fused | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = False
    rng = cp.random.default_rng(7)
    for n, c in SHAPES:
        x = (rng.standard_normal((n, c), dtype=cp.float32) * 3).astype(cp.float32)
        t = rng.integers(0, c, n).astype(cp.int64)
        grad = cp.empty_like(x)
        loss, _ = fastloss.cross_entropy_and_grad(x, t, out=grad)
        ok, grad_err = check(cp, x, t, loss, grad)
        same = all(bool(cp.asnumpy(fastloss.cross_entropy(x, t)) == cp.asnumpy(loss))
                   for _ in range(10))
        failed |= not (ok and same)
        stream = cp.cuda.get_current_stream()
        loss_s = time_events(cp, lambda: fastloss.cross_entropy(x, t), stream, flush, REPEATS)
        fused_s = time_events(cp, lambda: fastloss.cross_entropy_and_grad(x, t, out=grad),
                              stream, flush, REPEATS)
        xt = torch.as_tensor(x, device="cuda").requires_grad_()
        tt = torch.as_tensor(t, device="cuda")
        tstream = torch_stream(cp, torch)
        fwd_s = time_events(cp, lambda: F.cross_entropy(xt.detach(), tt), tstream, flush, REPEATS)
        both_s = time_events(cp, lambda: torch.autograd.grad(F.cross_entropy(xt, tt), xt),
                             tstream, flush, REPEATS)
        ours_s = time_events(cp, lambda: torch.autograd.grad(ft.cross_entropy(xt, tt), xt),
                             tstream, flush, REPEATS)
        read, fused_bytes = 4 * n * c + 8 * n, 8 * n * c + 8 * n
        lines.append(
            f"| ({n}, {c}) | {loss_s * 1e6:.1f} | {read / loss_s / 1e9:.0f} "
            f"| {read / loss_s / 1e9 / copy:.0%} | {fused_s * 1e6:.1f} "
            f"| {fused_bytes / fused_s / 1e9:.0f} | {fused_bytes / fused_s / 1e9 / copy:.0%} "
            f"| {fwd_s * 1e6:.1f} | {both_s * 1e6:.1f} | {ours_s * 1e6:.1f} "
            f"| {fwd_s / loss_s:.2f}x | {both_s / fused_s:.2f}x "
            f"| {'PASS' if ok and same else 'FAIL'} (grad err {grad_err:.1e}) |")
        print(lines[-1], flush=True)
        del x, t, grad, xt, tt
        cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
