"""pytest configuration for the fastloss suite.

The shared helpers live in ``_helpers.py`` beside this file; this directory is put on sys.path so
``from _helpers import ...`` works under any ``--import-mode``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

try:
    from hypothesis import settings
except ImportError:  # test_properties.py skips itself
    pass
else:
    # 'ci' (the default): the same examples on every run, so a failure is reproducible and CI
    # time is fixed. 'explore' (--hypothesis-profile=explore): fresh random examples, more of them.
    settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                              database=None, print_blob=True)
    settings.register_profile("explore", max_examples=2000, deadline=None)
    settings.load_profile("ci")


def pytest_report_header(config):
    import fastloss
    import fastloss._cpu

    info = fastloss._cpu.build_info()
    return (f"fastloss {fastloss.__version__} from {Path(fastloss.__file__).parent}: "
            f"isa={info['isa']} openmp={info['openmp']} max_threads={info['max_threads']} "
            f"chunk_size={info['chunk_size']} parallel_threshold={info['parallel_threshold']} "
            f"compiler={info['compiler']!r}")


@pytest.fixture(scope="module")
def cluster():
    """A real dask.distributed cluster of two worker processes on this machine (the Dask
    tests), started and stopped once per test module; its Client is not the default one."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None, silence_logs=50) as local, \
            distributed.Client(local, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="session")
def cp():
    """The cupy module, for tests that need a GPU: skips without CuPy or a CUDA device."""
    from _helpers import import_cupy_or_skip
    cupy = import_cupy_or_skip()
    try:
        available = cupy.cuda.is_available()
    except Exception:  # a broken driver install
        available = False
    if not available:
        pytest.skip("no CUDA device (cupy.cuda.is_available() is False)")
    return cupy
