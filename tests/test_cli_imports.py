"""``python -m fastloss info`` and ``import fastloss`` leave the benchmark (``fastloss.bench``)
unimported: only ``python -m fastloss bench`` and the source tree's bench/ import it. Each
command runs in a fresh interpreter whose every import ``python -X importtime`` reports."""

import subprocess
import sys


def _imports(*arguments):
    """(the modules a fresh ``python -X importtime ARGUMENTS`` imported, its stdout)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *arguments],
                            capture_output=True, text=True, check=True)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:")}
    return modules, result.stdout


def _bench_modules(modules):
    return sorted(name for name in modules if name.split(".")[:2] == ["fastloss", "bench"])


def test_info_does_not_import_the_benchmark():
    modules, stdout = _imports("-m", "fastloss", "info")
    assert "openmp" in stdout and "fastloss._machine" in modules
    assert _bench_modules(modules) == []


def test_import_fastloss_does_not_import_the_benchmark():
    modules, _ = _imports("-c", "import fastloss")
    assert "fastloss.functional" in modules
    assert _bench_modules(modules) == []


def test_the_bench_command_is_seen_importing_it():
    """The check above can see the benchmark's imports: ``bench --help`` makes them."""
    modules, stdout = _imports("-m", "fastloss", "bench", "--help")
    assert "--all-ops" in stdout
    assert "fastloss.bench.cli" in _bench_modules(modules)
