"""The README's code blocks under "Use it in your training code" run as written (so they
cannot go stale): NumPy always, PyTorch when installed, CuPy when a GPU is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    text = README.read_text()
    section = text.split("## Use it in your training code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _needs(block):
    if "import cupy" in block:
        return "cupy"
    if "import torch" in block:
        return "torch"
    return None


def test_the_section_has_numpy_cupy_and_torch_examples():
    assert sorted(str(_needs(block)) for block in _blocks()) == ["None", "cupy", "torch"]


@pytest.mark.parametrize("block", _blocks(), ids=lambda block: str(_needs(block) or "numpy"))
def test_readme_example_runs(block):
    needed = _needs(block)
    if needed:
        module = pytest.importorskip(needed)
        if needed == "cupy" and not module.cuda.is_available():
            pytest.skip("no CUDA device")
    namespace = {}
    exec(compile(block, str(README), "exec"), namespace)
    if needed is None:
        assert namespace["grad"].shape == (256, 10) and float(namespace["loss"]) > 0
    if needed == "torch":
        assert namespace["loss"].item() > 0
