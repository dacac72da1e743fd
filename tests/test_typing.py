"""What a type checker sees of the public functions (mypy on a snippet, a few seconds): NumPy
inputs give NumPy scalars and arrays of their float type, and what is no array (a list, a
number) is flagged before the code runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy")

SNIPPET = textwrap.dedent("""\
    from typing import Any, assert_type

    import numpy as np
    import numpy.typing as npt
    import fastloss

    x = np.ones(3, np.float32)
    y = np.ones(3, np.float64)
    h = np.ones(3, np.float16)
    assert_type(fastloss.mse_loss_and_grad(h, h), tuple[np.float16, npt.NDArray[np.float16]])
    assert_type(fastloss.mse_loss(x, x), np.float32)
    assert_type(fastloss.binary_cross_entropy(y, y, reduction="none"), npt.NDArray[np.float64])
    assert_type(fastloss.binary_cross_entropy_with_logits_and_grad(x, x),
                tuple[np.float32, npt.NDArray[np.float32]])
    assert_type(fastloss.mse_loss_grad(y, y, out=np.empty_like(y)), npt.NDArray[np.float64])
    assert_type(fastloss.sigmoid_backward(x, fastloss.sigmoid(x)), npt.NDArray[np.float32])
    reduction: str = "mean"
    assert_type(fastloss.mse_loss(x, x, reduction=reduction), Any)  # scalar or array
    fastloss.mse_loss([1.0], x)
    fastloss.binary_cross_entropy(x, [1.0, 0.0, 1.0])
    fastloss.sigmoid(1.5)
""")
FLAGGED = [19, 20, 21]  # the lines of the last three calls


def test_mypy_sees_numpy_results_and_flags_what_is_no_array(tmp_path):
    (tmp_path / "snippet.py").write_text(SNIPPET)
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary",
                             "--cache-dir", str(tmp_path / "cache"), "--config-file", "",
                             "snippet.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [int(line.split(":")[1]) for line in errors] == FLAGGED, result.stdout + result.stderr
    assert all('No overload variant of "' in line for line in errors), result.stdout
