"""What a reader of ``python -m fastloss bench`` sees, on made-up results (no timing): a share
of the ceiling above 100 % is marked and explained under the table, the peers are named for
what they are, and the PNG has one legend for the figure, a labelled ceiling in each speed
panel and error panels that say their unit.

Not a benchmark: it runs with CI's ``--benchmark-disable`` and in a plain ``pytest bench``.
"""

import importlib.util

import pytest

from fastloss.bench import speed, stability
from fastloss.bench.cases import IMPLEMENTATIONS
from fastloss.bench.report import format_header

CEILINGS = {"read_gbs": 20.0, "copy_gbs": 16.0}


def _row(op, n, impl, fraction):
    ceiling = CEILINGS["copy_gbs" if op.endswith("grad") or op == "sigmoid" else "read_gbs"]
    return speed.Row(op, "float32", n, impl, 1e-3, fraction * ceiling, fraction, 1.0,
                     None if op == "sigmoid" else 0.5)


ROWS = [_row(op, n, impl, fraction)
        for op in ("mse_loss", "mse_loss_and_grad", "sigmoid")
        for n in (10**3, 10**5)
        for impl, fraction in (("fastloss", 0.8 if n < 10**5 else 1.3), ("numpy-out", 0.4),
                               ("torch", 0.3))]
ACCURACY = [stability.Accuracy(op, data, n, impl, 1.0 + ulps * 2**-23, 1.0)
            for op in stability.LOSSES
            for data, n in ((stability.RANDOM, 10**6), (stability.RANDOM, 10**7),
                            (stability.CLASSIC, 2**25))
            for impl, ulps in (("fastloss", 0.0), ("numpy-out", 40.0), ("torch", 2.0))]


def test_a_share_above_the_ceiling_is_marked_and_explained():
    table = speed.format_table(ROWS)
    assert "130%*" in table and "80%" in table and "80%*" not in table
    assert table.endswith(speed.ABOVE_CEILING_NOTE)
    assert "at this N part of the inputs still came from the cache" in table
    assert speed.ABOVE_CEILING_NOTE not in speed.format_table(
        [row for row in ROWS if row.ceiling_fraction <= 1.0])


def test_the_header_names_the_peers_and_the_marker():
    header = format_header(("float32",), CEILINGS, 25_000_000, (10**3,), 7)
    assert "* above 100 %, see under the table" in header
    assert "numpy-out NumPy at its fastest" in header and "add in float32" in header
    assert "numpy-out" in IMPLEMENTATIONS and "numpy-best" not in IMPLEMENTATIONS


def test_the_figure_has_one_legend_and_says_what_each_panel_shows():
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    from fastloss.bench.plot import make_figure
    figure = make_figure(ROWS, CEILINGS, ACCURACY)
    assert len(figure.legends) == 1
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert all(axis.get_legend() is None for axis in visible)
    speed_axes, error_axes = visible[:3], visible[3:]
    assert [axis.get_title() for axis in speed_axes] == [
        "mse_loss (float32)", "mse_loss_and_grad (float32)", "sigmoid (float32)"]
    for axis in speed_axes:
        assert axis.get_ylabel().startswith("GB/s") and axis.get_xscale() == "log"
        assert any("ceiling" in text.get_text() and "GB/s" in text.get_text()
                   for text in axis.texts)
    assert [axis.get_title() for axis in error_axes] == [
        f"{op}: error of the float32 mean" for op in stability.LOSSES]
    for axis in error_axes:
        assert "ulps from exact" in axis.get_ylabel()
        assert [label.get_text() for label in axis.get_xticklabels()] == [
            "fastloss", "numpy-out", "torch"]
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels[:3] == ["fastloss", "numpy-out", "torch"]
    assert "memory ceiling, probed in this run" in labels
    assert "error: random data, N = 1e6" in labels and "error: random data, N = 1e7" in labels
    assert any(label.startswith("error: 2^25 equal terms") for label in labels)
