"""Options shared by tests/ and bench/: which of them runs is decided here.

pytest-benchmark runs benchmarks alongside ordinary tests unless told otherwise; here they are
opt-in, so a plain ``pytest`` never spends minutes timing:

    pytest                          tests/ only (testpaths); benchmarks, if any, are skipped
    pytest --benchmark              bench/ only, the benchmarks timed (N up to 1e7): at the
                                    repository root, with no paths, bench/ takes the place of
                                    testpaths (pytest bench --benchmark is the same)
    pytest --benchmark --full       ... and N = 1e8 (timings and the stability track)
    pytest --benchmark --big        ... and the stability track at N = 4e8 too
    pytest bench --benchmark-disable
                                    each benchmark run once, untimed: the CI smoke run
    pytest tests --largemem         also the tests marked largemem (N = 2**31 + 5: ~10 GB;
                                    the CUDA one ~21 GiB of GPU memory)

--full and --big are the sizes of ``python -m fastloss bench --full / --big``.

Any explicit pytest-benchmark mode (--benchmark-only/-skip/-disable/-enable) is left alone.
"""

import pytest

_BENCHMARK_MODES = ("benchmark_only", "benchmark_skip", "benchmark_disable", "benchmark_enable")


def pytest_addoption(parser):
    group = parser.getgroup("fastloss")
    group.addoption("--benchmark", action="store_true", default=False,
                    help="run only the benchmarks, timed (pytest-benchmark's --benchmark-only); "
                         "with no paths given at the root, those of bench/")
    group.addoption("--full", action="store_true", default=False,
                    help="benchmarks also at N = 1e8 (several GB of memory, many minutes)")
    group.addoption("--big", action="store_true", default=False,
                    help="--full, and the stability track also at N = 4e8 (about 12 GB)")
    group.addoption("--largemem", action="store_true", default=False,
                    help="also run the tests marked largemem (about 10 GB of memory)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("largemem"):
        return
    skip = pytest.mark.skip(reason="needs about 10 GB of memory (21 GiB on a GPU): run with "
                                   "--largemem")
    for item in items:
        if "largemem" in item.keywords:
            item.add_marker(skip)


# tryfirst: pytest-benchmark reads these options in its own pytest_configure (trylast).
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.option.big:
        config.option.full = True
    if not hasattr(config.option, "benchmark_skip"):
        return  # pytest-benchmark is not installed (or disabled with -p no:benchmark)
    if config.option.benchmark:
        if config.option.benchmark_disable and not config.option.benchmark_enable:
            raise pytest.UsageError(
                "--benchmark (timed runs) and --benchmark-disable (untimed runs) contradict "
                "each other; pass one of them")
        config.option.benchmark_only = True
        if not config.option.file_or_dir and config.invocation_params.dir == config.rootpath:
            # testpaths holds tests/ alone, so that a plain `pytest` never times anything;
            # the benchmarks the user asked for are in bench/.
            config.args = [str(config.rootpath / "bench")]
    elif not any(getattr(config.option, mode) for mode in _BENCHMARK_MODES):
        config.option.benchmark_skip = True
