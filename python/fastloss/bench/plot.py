"""The benchmark's PNG, readable without the README: GB/s against N for each op (the memory
ceiling of the same run drawn and labelled in each panel), then each loss's float32 error in
ulps for every implementation and data set; one legend for the whole figure."""

from __future__ import annotations

import math

import fastloss
from fastloss._machine import cpu_model
from fastloss.bench.ops import OPS
from fastloss.bench.report import size_label
from fastloss.bench.stability import CLASSIC, RANDOM

COLUMNS = 3
EXACT_FLOOR = 1e-2  # a log axis has no zero: an exact result is drawn here
RANDOM_MARKERS = "osD^v"  # one per N of the random data, in order
CLASSIC_MARKER = "X"
CEILING_NAMES = {"read_gbs": "read", "copy_gbs": "copy"}


def _grid_rows(count: int) -> int:
    return math.ceil(count / COLUMNS)


def plot(rows, ceilings, path, accuracy=()) -> None:
    """Writes the PNG of ``make_figure`` to ``path``."""
    make_figure(rows, ceilings, accuracy).savefig(path, dpi=110)


def make_figure(rows, ceilings, accuracy=()):
    """The figure of the speed rows (``fastloss.bench.speed.Row``) and the stability track's
    results (``fastloss.bench.stability.Accuracy``): a matplotlib Figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.lines import Line2D

    impls = list(dict.fromkeys([row.impl for row in rows] + [a.impl for a in accuracy]))
    colour = {impl: f"C{index % 10}" for index, impl in enumerate(impls)}
    panels = list(dict.fromkeys((row.op, row.dtype) for row in rows))
    losses = list(dict.fromkeys(a.op for a in accuracy))
    random_sizes = sorted({a.n for a in accuracy if a.data == RANDOM})
    marker = {n: RANDOM_MARKERS[index % len(RANDOM_MARKERS)]
              for index, n in enumerate(random_sizes)}

    speed_rows, error_rows = _grid_rows(len(panels)), _grid_rows(len(losses))
    figure = Figure(figsize=(5.2 * COLUMNS, 3.5 * (speed_rows + error_rows) + 1.6),
                    layout="constrained")
    axes = list(figure.subplots(max(1, speed_rows + error_rows), COLUMNS,
                                squeeze=False).ravel())
    speed_axes = axes[:len(panels)]
    error_axes = axes[speed_rows * COLUMNS:][:len(losses)]

    for axis, (op_name, dtype) in zip(speed_axes, panels):
        mine = [row for row in rows if (row.op, row.dtype) == (op_name, dtype)]
        for impl in dict.fromkeys(row.impl for row in mine):
            points = sorted((row.n, row.gbs) for row in mine if row.impl == impl)
            axis.plot(*zip(*points), marker="o", markersize=4, color=colour[impl],
                      linewidth=2.2 if impl == "fastloss" else 1.2)
        ceiling = OPS[op_name].ceiling
        axis.axhline(ceilings[ceiling], linestyle="--", color="grey", linewidth=1)
        axis.annotate(f"{CEILING_NAMES[ceiling]} ceiling {ceilings[ceiling]:.1f} GB/s",
                      (0.02, ceilings[ceiling]), xycoords=("axes fraction", "data"),
                      xytext=(0, 3), textcoords="offset points", fontsize="small",
                      color="dimgrey")
        axis.set(xscale="log", yscale="log", title=f"{op_name} ({dtype})",
                 xlabel="N (elements)", ylabel="GB/s (higher is better)")

    for axis, op_name in zip(error_axes, losses):
        mine = [a for a in accuracy if a.op == op_name]
        shown = [impl for impl in impls if any(a.impl == impl for a in mine)]
        data_sets = [(RANDOM, n) for n in random_sizes] + [(CLASSIC, None)]
        for position, impl in enumerate(shown):
            for offset, (data, n) in enumerate(data_sets):
                for a in mine:
                    if a.impl == impl and a.data == data and (n is None or a.n == n):
                        # side by side within the implementation's column
                        x = position + 0.5 * (offset / max(1, len(data_sets) - 1) - 0.5)
                        axis.plot(x, max(a.ulps, EXACT_FLOOR), linestyle="none",
                                  marker=CLASSIC_MARKER if data == CLASSIC else marker[a.n],
                                  markersize=7, color=colour[impl])
        axis.axhline(1.0, linestyle="--", color="grey", linewidth=1)
        axis.annotate("1 ulp", (1.0, 1.0), xycoords=("axes fraction", "data"),
                      xytext=(-3, 3), textcoords="offset points", ha="right",
                      fontsize="small", color="dimgrey")
        axis.set_yscale("log")
        axis.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize="small")
        for label in axis.get_xticklabels():
            label.set_color(colour[label.get_text()])
        axis.set_ylim(bottom=EXACT_FLOOR / 2)
        axis.set(title=f"{op_name}: error of the float32 mean", xlim=(-0.6, len(shown) - 0.4),
                 ylabel=f"ulps from exact (lower is better;\n{EXACT_FLOOR:g} = exact)")

    used = set(map(id, speed_axes + error_axes))
    for axis in axes:
        if id(axis) not in used:
            axis.set_visible(False)

    handles = [Line2D([], [], color=colour[impl], marker="o", markersize=4,
                      linewidth=2.2 if impl == "fastloss" else 1.2, label=impl)
               for impl in impls]
    handles.append(Line2D([], [], color="grey", linestyle="--",
                          label="memory ceiling, probed in this run"))
    if accuracy:
        handles += [Line2D([], [], color="black", marker=marker[n], linestyle="none",
                           label=f"error: random data, N = {size_label(n)}")
                    for n in random_sizes]
        classic_n = next((a.n for a in accuracy if a.data == CLASSIC), None)
        if classic_n is not None:
            handles.append(Line2D([], [], color="black", marker=CLASSIC_MARKER,
                                  linestyle="none",
                                  label=f"error: {size_label(classic_n)} equal terms of ~0.1 "
                                        "(a float32 running sum stalls)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(5, len(handles)),
                  fontsize="small", frameon=False)
    figure.suptitle(f"fastloss {fastloss.__version__} and its peers on {cpu_model()}\n"
                    "speed of one pass (GB/s of the bytes an ideal pass moves) and the float32 "
                    "error of each mean loss against the exact value")
    return figure
