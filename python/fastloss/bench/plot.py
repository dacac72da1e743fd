"""The benchmark's PNG: GB/s against N per op, and the stability track's errors against N."""

from __future__ import annotations

import math

import fastloss
from fastloss._machine import cpu_model
from fastloss.bench.ops import OPS
from fastloss.bench.stability import CLASSIC, RANDOM


def plot(rows, ceilings, path, accuracy=()) -> None:
    """GB/s against N, a line per implementation, one subplot per op and dtype (the ceiling
    dashed); then the stability track's error in ulps against N, one subplot per loss."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    panels = list(dict.fromkeys((row.op, row.dtype) for row in rows))
    losses = list(dict.fromkeys(a.op for a in accuracy))
    columns = 3
    rows_of_plots = math.ceil(len(panels) / columns) + math.ceil(len(losses) / columns)
    figure = Figure(figsize=(5 * columns, 3.6 * rows_of_plots), layout="constrained")
    axes = list(figure.subplots(rows_of_plots, columns, squeeze=False).ravel())
    speed_axes = axes[:len(panels)]
    error_axes = axes[math.ceil(len(panels) / columns) * columns:][:len(losses)]
    for axis, (op_name, dtype) in zip(speed_axes, panels):
        mine = [row for row in rows if (row.op, row.dtype) == (op_name, dtype)]
        for impl in dict.fromkeys(row.impl for row in mine):
            axis.plot(*zip(*[(row.n, row.gbs) for row in mine if row.impl == impl]),
                      marker="o", label=impl)
        ceiling = OPS[op_name].ceiling
        axis.axhline(ceilings[ceiling], linestyle="--", color="grey",
                     label=ceiling.replace("_gbs", " ceiling"))
        axis.set(xscale="log", yscale="log", title=f"{op_name} ({dtype})", xlabel="N",
                 ylabel="GB/s")
        axis.legend(fontsize="small")
    for axis, op_name in zip(error_axes, losses):
        mine = [a for a in accuracy if a.op == op_name]
        for impl in dict.fromkeys(a.impl for a in mine):
            # An exact result is drawn at 0.01 ulp: a log axis has no zero.
            points = {data: [(a.n, max(a.ulps, 1e-2)) for a in mine
                             if a.impl == impl and a.data == data]
                      for data in (RANDOM, CLASSIC)}
            (line,) = axis.plot(*zip(*points[RANDOM]), marker="o", label=impl)
            if points[CLASSIC]:  # the classic failure: crosses in the line's colour
                axis.plot(*zip(*points[CLASSIC]), marker="x", markersize=9,
                          linestyle="none", color=line.get_color())
        axis.axhline(1.0, linestyle="--", color="grey", label="1 ulp")
        axis.set(xscale="log", yscale="log",
                 title=f"{op_name}\nfloat32 error (o random data, x {CLASSIC})",
                 xlabel="N", ylabel="|error| in ulps")
        axis.legend(fontsize="small")
    used = set(map(id, speed_axes + error_axes))
    for axis in axes:
        if id(axis) not in used:
            axis.set_visible(False)
    figure.suptitle(f"fastloss {fastloss.__version__}, {cpu_model()}")
    figure.savefig(path, dpi=110)
