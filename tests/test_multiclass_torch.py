"""fastloss.torch's multi-class functions against PyTorch: on PyTorch's own test samples
(OpInfo ``nn.functional.cross_entropy``, ``softmax``, ``log_softmax``; ModuleInfo
``nn.CrossEntropyLoss``; stored once in tests/data/torch_multiclass_samples.json, see
tests/data/make_torch_samples.py), values and gradients in float32 and float64; gradcheck;
errors; a torch model trained with the fastloss loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastloss.torch as ft  # noqa: E402  (needs torch)

SAMPLES = json.loads((Path(__file__).parent / "data" / "torch_multiclass_samples.json")
                     .read_text())["samples"]
DTYPES = [torch.float32, torch.float64]
# float32: fastloss's results are those of float64 math rounded once; PyTorch's carry its
# float32 arithmetic, a few ulps per element
TOLERANCES = {torch.float32: {"rtol": 2e-5, "atol": 2e-6}, torch.float64: {"rtol": 1e-10,
                                                                           "atol": 1e-12}}


def _decode(value, dtype):
    if isinstance(value, dict) and "tensor" in value:
        wanted = dtype if value["dtype"].startswith("float") else getattr(torch, value["dtype"])
        return torch.tensor(value["tensor"], dtype=wanted).reshape(value["shape"])
    if isinstance(value, dict) and "torch_dtype" in value:
        return dtype  # the with_dtype variants ask for the sample's own dtype
    return value


def _ids(samples):
    return [f"{i}-{s['source'].split()[-1]}-{s['function']}" for i, s in enumerate(samples)]


FUNCTIONS = [s for s in SAMPLES if s["function"] in ("cross_entropy", "softmax", "log_softmax")]
MODULES = [s for s in SAMPLES if s["function"] == "CrossEntropyLoss"]


def _compare(ours, theirs, dtype, what):
    torch.testing.assert_close(ours, theirs, **TOLERANCES[dtype], equal_nan=True, msg=what)


def _run(function, input, args, kwargs):
    leaf = input.detach().clone().requires_grad_()
    out = function(leaf, *args, **kwargs)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    if out.numel():
        (grad,) = torch.autograd.grad(out, leaf, upstream)
    else:
        grad = torch.zeros_like(leaf)
    return out.detach(), grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", FUNCTIONS, ids=_ids(FUNCTIONS))
def test_opinfo_samples(sample, dtype):
    input = _decode(sample["input"], dtype)
    args = [_decode(a, dtype) for a in sample["args"]]
    kwargs = {k: _decode(v, dtype) for k, v in sample["kwargs"].items()}
    name = sample["function"]
    ours_fn = getattr(ft, name)
    theirs_fn = getattr(torch.nn.functional, name)
    ours = _run(ours_fn, input, args, kwargs)
    theirs = _run(theirs_fn, input, args, kwargs)
    _compare(ours[0], theirs[0], dtype, f"{name} value")
    _compare(ours[1], theirs[1], dtype, f"{name} gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", MODULES, ids=_ids(MODULES))
def test_moduleinfo_samples(sample, dtype):
    constructor = {k: _decode(v, dtype) for k, v in sample["constructor"].items()}
    input, target = (_decode(a, dtype) for a in sample["args"])
    ours = _run(ft.CrossEntropyLoss(**constructor), input, (target,), {})
    theirs = _run(torch.nn.CrossEntropyLoss(**constructor), input, (target,), {})
    _compare(ours[0], theirs[0], dtype, "CrossEntropyLoss value")
    _compare(ours[1], theirs[1], dtype, "CrossEntropyLoss gradient")


GRADCHECK_CASES = {
    "indices": ((6, 4), lambda g: torch.randint(0, 4, (6,), generator=g), {}),
    "indices-weight-smoothing-ignore": (
        (6, 4, 3), lambda g: torch.tensor([[0, 1, -100], [3, 2, 1]] * 3),
        {"weight": torch.tensor([0.5, 2.0, 1.0, 1.5], dtype=torch.float64),
         "label_smoothing": 0.3}),
    "probabilities": ((5, 3), lambda g: torch.rand(5, 3, generator=g, dtype=torch.float64), {}),
    "one-row": ((4,), lambda g: torch.tensor(2), {"label_smoothing": 0.1}),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_cross_entropy_gradcheck(case, reduction):
    shape, make_target, kwargs = GRADCHECK_CASES[case]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    target = make_target(generator)
    assert torch.autograd.gradcheck(
        lambda z: ft.cross_entropy(z, target, reduction=reduction, **kwargs), (x,))


@pytest.mark.parametrize("function", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_gradcheck(function, dim):
    x = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: getattr(ft, function)(z, dim), (x,))


def test_large_class_counts_match_torch():
    generator = torch.Generator().manual_seed(2)
    for shape in ((3, 100_000), (4096, 10)):
        x = torch.randn(shape, generator=generator)
        target = torch.randint(0, shape[1], shape[:1], generator=generator)
        ours = _run(ft.cross_entropy, x, (target,), {})
        theirs = _run(torch.nn.functional.cross_entropy, x, (target,), {})
        _compare(ours[0], theirs[0], torch.float32, "loss")
        _compare(ours[1], theirs[1], torch.float32, "gradient")


def test_errors():
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="class index 3"):
        ft.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="target.detach"):
        ft.cross_entropy(x, torch.rand(4, 3, requires_grad=True))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ft.cross_entropy(x, [0, 1, 2, 0])
    with pytest.raises(ValueError, match="deprecated"):
        ft.CrossEntropyLoss(size_average=True)
    with pytest.raises(ValueError, match="dim"):
        ft.softmax(x, 2)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        ft.softmax(x)  # as torch.nn.functional.softmax: deprecated, dim 1 for 2-D


def test_torch_model_trains_the_same_with_fastloss_cross_entropy():
    def train(criterion):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 5)).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(64, 8, dtype=torch.float64)
        y = torch.randint(0, 5, (64,))
        losses = []
        for _ in range(20):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]

    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5], dtype=torch.float64)
    ours = train(ft.CrossEntropyLoss(weight=weight, label_smoothing=0.1))
    theirs = train(torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-10)
    for a, b in zip(ours[1], theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
