"""Every Python block of the README runs as written (so none can go stale) and computes what it
says: the five-line example under the title, "Use", the blocks of "Use it in your training
code" (NumPy always, PyTorch when installed, CuPy when a GPU is there) and "Train a network"
(with scikit-learn). Values are checked against fastloss.reference (NumPy, CuPy) and against
the same loop with torch.nn's loss (PyTorch). The README's first lines are its two commands,
and CI (.ci/run) runs the second one verbatim."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from fastloss import reference as R
from _helpers import reduction_ulp_bound

README = Path(__file__).resolve().parents[1] / "README.md"


CI = README.parent / ".ci" / "run"
PYTHON_BLOCK = r"```python\n(.*?)```"


def _section(heading):
    """The README's text under ``heading`` (a '## ' line, or '# fastloss' for the part under
    the title), up to the next '## ' heading."""
    return README.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def _section_blocks(heading):
    return re.findall(PYTHON_BLOCK, _section(heading), flags=re.S)


def _blocks():
    return _section_blocks("## Use it in your training code")


# "## Multi-class" is run by tests/test_multiclass.py (test_readme_multiclass_example_...)
TESTED_SECTIONS = ("# fastloss", "## Use", "## Use it in your training code",
                   "## Train a network", "## Multi-class", "## Beyond one machine")


def test_every_python_block_is_run_by_a_test_here():
    every = re.findall(PYTHON_BLOCK, README.read_text(), flags=re.S)
    tested = [block for heading in TESTED_SECTIONS for block in _section_blocks(heading)]
    assert sorted(every) == sorted(tested)


def test_the_first_lines_are_the_two_commands_and_ci_runs_the_second_verbatim():
    """Line 1 installs and runs the benchmark, line 2 installs the test extras and runs the
    tests; both with the tested versions. .ci/run runs line 2 as it is."""
    lines = README.read_text().splitlines()
    assert lines[0] == "```bash" and lines[3] == "```"
    main_job, tests = lines[1], lines[2]
    assert main_job.endswith("&& python -m fastloss bench")
    assert tests.endswith("&& python -m pytest tests bench --benchmark-disable")
    for command in (main_job, tests):
        assert command.startswith('pip install ".[') and "-c constraints.txt" in command
    assert tests in CI.read_text().splitlines()
    assert (README.parent / "constraints.txt").exists()


def test_the_title_is_followed_by_pip_install_and_a_five_line_example():
    under_title = _section("# fastloss")
    assert under_title.lstrip().startswith("```bash\npip install .\n```")
    (example,) = _section_blocks("# fastloss")
    assert len(example.strip().splitlines()) == 5
    namespace = _run(example)
    p, y, loss, grad = (namespace[name] for name in ("p", "y", "loss", "grad"))
    assert type(loss) is np.float32 and grad.dtype == np.float32 and grad.shape == (1000,)
    exact = R.binary_cross_entropy(p, y)
    bound = reduction_ulp_bound("bce", p.size) * float(np.spacing(np.float32(exact)))
    assert abs(float(loss) - exact) <= bound
    np.testing.assert_allclose(grad, R.binary_cross_entropy_grad(p, y), rtol=1e-5, atol=1e-9)


def test_use_block_computes_what_its_comments_say():
    """Its first loss (kept before the fused call replaces it), the fused MSE pass into the
    buffer it keeps, and the per-element BCE with logits, against the reference."""
    (block,) = _section_blocks("## Use")
    losses = []

    def keep_losses(statement, namespace):
        if "loss" in namespace and not losses:
            losses.append(namespace["loss"])

    namespace = _run(block, keep_losses)
    x, y = namespace["x"], namespace["y"]
    (bce,) = losses
    assert type(bce) is np.float32
    exact = R.binary_cross_entropy(x, y)
    bound = reduction_ulp_bound("bce", x.size) * float(np.spacing(np.float32(exact)))
    assert abs(float(bce) - exact) <= bound
    loss, grad = namespace["loss"], namespace["grad"]
    assert type(loss) is np.float32 and grad.dtype == np.float32
    exact = R.mse_loss(x, y)
    bound = reduction_ulp_bound("mse", x.size) * float(np.spacing(np.float32(exact)))
    assert abs(float(loss) - exact) <= bound
    np.testing.assert_allclose(grad, R.mse_loss_grad(x, y), rtol=1e-6, atol=1e-14)
    per_element = namespace["per_element"]
    assert per_element.shape == x.shape and per_element.dtype == np.float32
    np.testing.assert_allclose(per_element,
                               R.binary_cross_entropy_with_logits(x, y, pos_weight=2.0,
                                                                  reduction="none"),
                               rtol=1e-5)


def test_train_a_network_block_trains_a_classifier(tmp_path, monkeypatch, capsys):
    """The block as written, in a scratch directory (it saves model.npz): 30 epochs on the
    breast cancer data, a falling loss and a test accuracy of 95 % or more, the parameters
    written, and the accuracy it prints is the one of its predictions."""
    pytest.importorskip("sklearn")
    (block,) = _section_blocks("## Train a network")
    monkeypatch.chdir(tmp_path)
    namespace = _run(block)
    history, Y_test = namespace["history"], namespace["Y_test"]
    assert history["epoch"] == list(range(1, 31)) and len(history["val_loss"]) == 30
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    probabilities = namespace["probabilities"]
    assert probabilities.shape == Y_test.shape == (114, 1)
    accuracy = float(np.mean((probabilities > 0.5) == (Y_test > 0.5)))
    assert accuracy >= 0.95
    assert capsys.readouterr().out == f"test accuracy {accuracy:.3f}\n"
    assert sorted(np.load(tmp_path / "model.npz").files) == [
        "0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]


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
    same torch seed: the same loss and the same weights after the 5 eager float32 steps (a few
    ulps per step, compounded), and again after the 5 compiled bfloat16 steps (within bfloat16
    roundings: the float32 losses differ by ulps, which now and then round a bfloat16 gradient
    the other way). The compiled function is one graph (fullgraph) and its loss float32."""
    torch = pytest.importorskip("torch")
    block = _block("torch")
    assert block.count("ft.BCEWithLogitsLoss(") == 1
    assert "torch.compile(fullgraph=True)" in block and "torch.bfloat16" in block
    results = []
    for source in (block, block.replace("ft.BCEWithLogitsLoss(", "torch.nn.BCEWithLogitsLoss(")):
        eager = {}

        def keep_eager(statement, namespace, eager=eager):
            if isinstance(statement, ast.FunctionDef) and not eager:
                eager.update(loss=namespace["loss"].detach().clone(), state={
                    name: value.clone() for name, value in namespace["model"].state_dict().items()})
        torch._dynamo.reset()
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            results.append((eager, _run(source, keep_eager)))
    (ours_eager, ours), (theirs_eager, theirs) = results
    assert type(ours["criterion"]).__module__ == "fastloss.torch"
    assert type(theirs["criterion"]) is torch.nn.BCEWithLogitsLoss
    torch.testing.assert_close(ours["x"], theirs["x"], rtol=0, atol=0)
    torch.testing.assert_close(ours_eager["loss"], theirs_eager["loss"], rtol=1e-5, atol=0)
    for name, value in theirs_eager["state"].items():
        torch.testing.assert_close(ours_eager["state"][name], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda message, name=name: f"{name}: {message}")
    assert ours["loss"].dtype == theirs["loss"].dtype == torch.float32
    assert type(ours["loss"].grad_fn).__name__ == "CompiledFunctionBackward"
    # one bfloat16 gradient rounded the other way moves a weight by about lr * |grad| / 256
    torch.testing.assert_close(ours["loss"], theirs["loss"], rtol=1e-3, atol=0)
    for name, value in theirs["model"].state_dict().items():
        torch.testing.assert_close(ours["model"].state_dict()[name], value, rtol=1e-3,
                                   atol=1e-4, msg=lambda message, name=name: f"{name}: {message}")
