"""pytest configuration for the fastloss suite.

The shared helpers live in ``_helpers.py`` beside this file; this directory is put on sys.path so
``from _helpers import ...`` works under any ``--import-mode``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def pytest_report_header(config):
    import fastloss
    import fastloss._cpu

    info = fastloss._cpu.build_info()
    return (f"fastloss {fastloss.__version__} from {Path(fastloss.__file__).parent}: "
            f"isa={info['isa']} openmp={info['openmp']} max_threads={info['max_threads']} "
            f"chunk_size={info['chunk_size']} parallel_threshold={info['parallel_threshold']} "
            f"compiler={info['compiler']!r}")
