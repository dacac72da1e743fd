"""How far a result is from the exact value: ulps and relative errors of a loss, one relative
error for a whole array. (What a result must meet, the tolerances, is the test suite's: the
source tree's bench/result_checks.py.)"""

from __future__ import annotations

import numpy as np


def loss_value(result) -> float:
    """The loss out of what a case returns: a scalar (NumPy or 0-d tensor) or (loss, grad)."""
    if isinstance(result, tuple):
        result = result[0]
    return float(result)


def ulps(value: float, exact: float, dtype) -> float:
    """|value - exact| in units in the last place of ``exact`` rounded to ``dtype``."""
    return abs(value - exact) / float(np.spacing(np.abs(np.dtype(dtype).type(exact))))


def relative_error(value: float, exact: float) -> float:
    """|value - exact| / |exact| (absolute when exact is 0)."""
    return abs(value - exact) / abs(exact) if exact else abs(value)


def array_relative_error(got, expected) -> float:
    """max |got - expected| / max |expected|: one figure for a whole gradient or sigmoid."""
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    worst = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    return worst / scale if scale else worst


def result_errors(op, inputs, result) -> dict:
    """Relative errors of a case's result against ``fastloss.reference`` (``inputs``: an
    ``Inputs``): ``rel_error`` of the loss (against its exact value) or, for an op returning
    only an array, of that array; ``array_rel_error`` too for a fused (loss, grad) result."""
    if not op.writes_array:
        return {"rel_error": relative_error(loss_value(result), inputs.exact_loss(op))}
    expected = inputs.expected(op)
    if not op.reduces:
        return {"rel_error": array_relative_error(result, expected)}
    return {"rel_error": relative_error(loss_value(result), inputs.exact_loss(op)),
            "array_rel_error": array_relative_error(result[1], expected[1])}
