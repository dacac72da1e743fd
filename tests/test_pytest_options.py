"""The root conftest.py's split of the suite: a plain ``pytest`` at the repository root collects
the tests (testpaths) and no benchmark; ``pytest --benchmark`` there collects bench/ alone."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _collected_files(*options):
    """The files of the test ids that ``pytest --collect-only`` at the root lists."""
    # Not as an xdist worker (CI runs the suite with -n 2): pytest-benchmark reads an inherited
    # PYTEST_XDIST_WORKER as "under xdist" and turns --benchmark-disable on, which
    # --benchmark-only then refuses; and without CI's PYTEST_ADDOPTS (-n 2: a collection by
    # xdist workers lists no test ids).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_XDIST") and k != "PYTEST_ADDOPTS"}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *options],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}


def test_plain_pytest_collects_the_tests_only():
    files = _collected_files()
    assert "tests/test_losses.py" in files
    assert all(name.startswith("tests/") for name in files), sorted(files)


def test_pytest_benchmark_collects_the_benchmarks_only():
    files = _collected_files("--benchmark")
    assert {"bench/test_bench_cpu.py", "bench/test_bench_stability.py"} <= files
    assert all(name.startswith("bench/") for name in files), sorted(files)


def test_a_path_given_is_kept():
    # a file that collects without the optional peers (the sanitizer job has no torch)
    assert _collected_files("--benchmark", "bench/test_bench_cpu.py") == {
        "bench/test_bench_cpu.py"}
