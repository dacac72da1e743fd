"""``python -m fastloss bench`` end to end at a tiny size: every section of the report, the plot
and the markdown results file, so that the command the README opens with cannot rot.

Not a benchmark (no timing is read): it runs with CI's ``--benchmark-disable`` and in a plain
``pytest bench``, and is skipped by ``--benchmark``.
"""

import importlib.util

from fastloss import __main__ as cli
from fastloss.bench.cases import IMPLEMENTATIONS


def test_bench_command_writes_report_plot_and_markdown(tmp_path, capsys):
    plot, markdown = tmp_path / "bench.png", tmp_path / "cpu-results.md"
    status = cli.main(["bench", "--sizes", "2000", "--plot", str(plot),
                       "--markdown", str(markdown)])
    report = capsys.readouterr().out
    assert status == 0
    for section in ("ceilings:", "vs best peer", "stability track", "2^25 x 0.1  2^11",
                    "threads (N = 2e3"):
        assert section in report
    for impl in IMPLEMENTATIONS:  # in the tables, or named in a note saying why not
        assert impl in report
    assert "fastloss " in report.split("with 1 and 2 threads")[1]
    assert plot.exists() == (importlib.util.find_spec("matplotlib") is not None)
    text = markdown.read_text(encoding="utf-8")
    assert "Reproduce: `" in text and "python -m fastloss bench" in text
    assert "vs best peer" in text and "stability track" in text


def test_unknown_implementation_is_refused(capsys):
    assert cli.main(["bench", "--impls", "fastloss,nonesuch", "--no-plot"]) == 2
    assert "nonesuch" in capsys.readouterr().err
