"""The README's code blocks under "Use it in your training code" run as written (so they
cannot go stale) and compute what they say: NumPy always, PyTorch when installed, CuPy when a GPU
is there. Values are checked against fastloss.reference (NumPy, CuPy) and against the same loop
with torch.nn's loss (PyTorch)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from fastloss import reference as R

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


def _block(needed):
    (block,) = [block for block in _blocks() if _needs(block) == needed]
    return block


def _run(block, before=None):
    """Runs ``block`` statement by statement in a fresh namespace; ``before(statement,
    namespace)`` sees each statement before it runs. Returns the namespace."""
    namespace: dict = {}
    for statement in ast.parse(block).body:
        if before is not None:
            before(statement, namespace)
        exec(compile(ast.Module([statement], type_ignores=[]), str(README), "exec"), namespace)
    return namespace


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


def _assert_loss_and_grad(loss, grad, logits, labels):
    """The fused BCE-with-logits pass of a float32 (256, 10) batch against the reference: the
    loss within fastloss's bound for 2560 elements (4 float32 ulps), the gradient (a mean's:
    ~1/2560 per element) element by element."""
    assert type(loss) is np.float32 and grad.dtype == np.float32
    exact = R.binary_cross_entropy_with_logits(logits, labels)
    assert abs(float(loss) - exact) <= 4 * float(np.spacing(np.float32(exact)))
    np.testing.assert_allclose(grad, R.binary_cross_entropy_with_logits_grad(logits, labels),
                               rtol=2e-6, atol=1e-6 / logits.size)


def test_readme_numpy_example_computes_the_reference_loss_and_gradient_and_steps():
    """The block's one pass against the reference on the logits it was given (kept just before
    the statement that computes the loss), and its step: logits - 0.1 * grad."""
    kept = {}

    def keep_inputs(statement, namespace):
        targets = [node for target in getattr(statement, "targets", ())
                   for node in ast.walk(target)]
        if any(isinstance(node, ast.Name) and node.id == "loss" for node in targets):
            kept.update(logits=namespace["logits"].copy(), labels=namespace["labels"].copy())

    namespace = _run(_block(None), keep_inputs)
    assert kept, "no statement of the NumPy block assigns `loss`"
    _assert_loss_and_grad(namespace["loss"], namespace["grad"], kept["logits"], kept["labels"])
    np.testing.assert_array_equal(namespace["logits"],
                                  kept["logits"] - np.float32(0.1) * namespace["grad"])


def test_readme_cupy_example_computes_the_reference_loss_and_gradient(cp):
    namespace = _run(_block("cupy"))
    loss, grad = namespace["loss"], namespace["grad"]
    assert type(loss) is cp.ndarray and loss.ndim == 0 and type(grad) is cp.ndarray
    _assert_loss_and_grad(np.float32(loss.get()), cp.asnumpy(grad),
                          cp.asnumpy(namespace["logits"]), cp.asnumpy(namespace["labels"]))


def test_readme_torch_example_trains_as_with_torch_nn_loss():
    """The block, and the block with ``ft.BCEWithLogitsLoss`` replaced by torch.nn's, from the
    same torch seed: the same last loss and the same weights after the 5 steps (float32: a few
    ulps per step, compounded)."""
    torch = pytest.importorskip("torch")
    block = _block("torch")
    assert block.count("ft.BCEWithLogitsLoss(") == 1
    results = []
    for source in (block, block.replace("ft.BCEWithLogitsLoss(", "torch.nn.BCEWithLogitsLoss(")):
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            results.append(_run(source))
    ours, theirs = results
    assert type(ours["criterion"]).__module__ == "fastloss.torch"
    assert type(theirs["criterion"]) is torch.nn.BCEWithLogitsLoss
    torch.testing.assert_close(ours["x"], theirs["x"], rtol=0, atol=0)
    torch.testing.assert_close(ours["loss"], theirs["loss"], rtol=1e-5, atol=0)
    for name, value in theirs["model"].state_dict().items():
        torch.testing.assert_close(ours["model"].state_dict()[name], value, rtol=1e-5,
                                   atol=1e-6, msg=lambda message, name=name: f"{name}: {message}")
