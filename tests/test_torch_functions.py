"""fastloss.torch: autograd functions and loss modules inside PyTorch code (gradcheck, values
against torch.nn.functional, a torch.nn model trained with them, errors)."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastloss.torch as ft  # noqa: E402  (needs torch)

REDUCTIONS = ["mean", "sum", "none"]


def _inputs(kind, shape=(5, 3), dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "probability":
        x = torch.rand(shape, generator=generator, dtype=dtype) * 0.9 + 0.05
    else:
        x = torch.randn(shape, generator=generator, dtype=dtype)
    target = torch.rand(shape, generator=generator, dtype=dtype)
    return x.requires_grad_(), target


CASES = {
    "mse": (ft.mse_loss, torch.nn.functional.mse_loss, "real", {}),
    "bce": (ft.binary_cross_entropy, torch.nn.functional.binary_cross_entropy, "probability",
            {}),
    "bce_weight": (ft.binary_cross_entropy, torch.nn.functional.binary_cross_entropy,
                   "probability", {"weight": torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)}),
    "bce_logits": (ft.binary_cross_entropy_with_logits,
                   torch.nn.functional.binary_cross_entropy_with_logits, "real", {}),
    "bce_logits_weights": (ft.binary_cross_entropy_with_logits,
                           torch.nn.functional.binary_cross_entropy_with_logits, "real",
                           {"weight": torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64),
                            "pos_weight": torch.tensor([3.0, 0.25, 1.0], dtype=torch.float64)}),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck(case, reduction):
    function, _, kind, kwargs = CASES[case]
    x, target = _inputs(kind)
    assert torch.autograd.gradcheck(
        lambda a: function(a, target, reduction=reduction, **kwargs), (x,), eps=1e-6, atol=1e-7)


def test_sigmoid_gradcheck_and_values():
    x, _ = _inputs("real", (4, 6))
    assert torch.autograd.gradcheck(ft.sigmoid, (x,), eps=1e-6, atol=1e-7)
    torch.testing.assert_close(ft.sigmoid(x), torch.sigmoid(x), rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_torch(case, reduction, dtype):
    function, reference, kind, kwargs = CASES[case]
    kwargs = {k: v.to(dtype) for k, v in kwargs.items()}
    x, target = _inputs(kind, (64, 3), dtype)
    upstream = torch.randn(64, 3, dtype=dtype) if reduction == "none" else torch.tensor(0.75,
                                                                                       dtype=dtype)
    ours = function(x, target.to(dtype), reduction=reduction, **kwargs)
    (grad,) = torch.autograd.grad(ours, x, upstream)
    theirs = reference(x, target.to(dtype), reduction=reduction, **kwargs)
    (expected,) = torch.autograd.grad(theirs, x, upstream)
    tolerance = dict(rtol=2e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12,
                                                                               atol=1e-13)
    assert ours.dtype == dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **tolerance)
    torch.testing.assert_close(grad, expected, **tolerance)


def test_backward_with_unit_upstream_returns_the_saved_gradient():
    x, target = _inputs("real")
    ft.mse_loss(x, target).backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - target) / x.numel(), rtol=1e-15,
                               atol=0)


def test_non_contiguous_input_is_handled():
    x, target = _inputs("real", (6, 4))
    strided = x.t()
    loss = ft.mse_loss(strided, target.t())
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - target) / x.numel(), rtol=1e-15,
                               atol=0)


@pytest.mark.parametrize("module, reference, kind, kwargs", [
    (ft.MSELoss, torch.nn.MSELoss, "real", {}),
    (ft.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss, "real",
     {"pos_weight": torch.tensor([2.0], dtype=torch.float64)}),
])
def test_torch_model_trains_the_same_with_fastloss_losses(module, reference, kind, kwargs):
    """A torch.nn MLP, float64, 5 epochs of SGD with momentum: the same losses and weights with
    fastloss.torch's loss module as with torch.nn's (rtol 1e-9)."""
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(120, 6, generator=generator, dtype=torch.float64)
    Y = ((X[:, :1] * X[:, 1:2]) > 0).to(torch.float64)

    def train(criterion):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 1)).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=1e-3)
        losses = []
        for _ in range(5):
            for start in range(0, len(X), 32):
                optimizer.zero_grad()
                loss = criterion(model(X[start:start + 32]), Y[start:start + 32])
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return losses, model.state_dict()

    ours, our_state = train(module(**kwargs))
    theirs, their_state = train(reference(**kwargs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    for name in their_state:
        torch.testing.assert_close(our_state[name], their_state[name], rtol=1e-9, atol=1e-12)


# ---- the loss modules against torch.nn's ---------------------------------------------------------

WEIGHT_SHAPES = {None: None, "per_output": (3,), "full": (64, 3), "per_row": (64, 1)}
POS_WEIGHT_SHAPES = {None: None, "per_output": (3,), "single": (1,)}


def _module_cases():
    """(module name, constructor keywords as shape names, reduction) for every argument of
    MSELoss, BCELoss and BCEWithLogitsLoss and the broadcasts a weight may take."""
    for reduction in REDUCTIONS:
        yield pytest.param("MSELoss", {}, reduction, id=f"MSELoss-{reduction}")
        for weight in WEIGHT_SHAPES:
            yield pytest.param("BCELoss", {"weight": weight}, reduction,
                               id=f"BCELoss-w{weight}-{reduction}")
            for pos_weight in POS_WEIGHT_SHAPES:
                yield pytest.param("BCEWithLogitsLoss",
                                   {"weight": weight, "pos_weight": pos_weight}, reduction,
                                   id=f"BCEWithLogitsLoss-w{weight}-pw{pos_weight}-{reduction}")


def _constructor_tensors(shapes, seed=1):
    """The named shapes as float64 tensors well away from 1 (a dropped argument shows)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {"weight": WEIGHT_SHAPES, "pos_weight": POS_WEIGHT_SHAPES}
    return {name: None if shape is None else
            torch.rand(sizes[name][shape], generator=generator, dtype=torch.float64) * 3 + 0.2
            for name, shape in shapes.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, shapes, reduction", list(_module_cases()))
def test_loss_modules_match_torch_nn_modules(name, shapes, reduction, dtype):
    """Each fastloss.torch loss module, built with the same arguments as torch.nn's and moved to
    the dtype with .to() (weight and pos_weight are buffers, as in torch.nn): the same buffers,
    values and input gradients, for the unit upstream gradient and for another one."""
    ours = getattr(ft, name)(**_constructor_tensors(shapes), reduction=reduction).to(dtype)
    theirs = getattr(torch.nn, name)(**_constructor_tensors(shapes), reduction=reduction).to(dtype)
    assert ours.reduction == theirs.reduction == reduction
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    for buffer, value in theirs.state_dict().items():
        assert ours.state_dict()[buffer].dtype == dtype
        torch.testing.assert_close(ours.state_dict()[buffer], value, rtol=0, atol=0)

    x, target = _inputs("probability" if name == "BCELoss" else "real", (64, 3), dtype, seed=5)
    # torch's float32 logits gradient, sigmoid(z) - target, cancels to an absolute error of about
    # eps where the two are close: an absolute floor per dtype, in units of the reduction's 1/N.
    unit = 1 / x.numel() if reduction == "mean" else 1.0
    tolerance = (dict(rtol=2e-6, atol=1e-6 * unit) if dtype == torch.float32
                 else dict(rtol=1e-12, atol=1e-14 * unit))
    value, expected = ours(x, target), theirs(x, target)
    assert value.dtype == dtype and value.shape == expected.shape
    torch.testing.assert_close(value, expected, **tolerance)
    upstreams = ([torch.randn(64, 3, generator=torch.Generator().manual_seed(6), dtype=dtype)]
                 if reduction == "none" else [torch.tensor(1.0, dtype=dtype),
                                              torch.tensor(0.75, dtype=dtype)])
    for upstream in upstreams:
        (grad,) = torch.autograd.grad(ours(x, target), x, upstream)
        (expected_grad,) = torch.autograd.grad(theirs(x, target), x, upstream)
        torch.testing.assert_close(grad, expected_grad, **tolerance)


@pytest.mark.parametrize("name", ["BCELoss", "BCEWithLogitsLoss"])
def test_weight_is_the_first_positional_argument_as_in_torch_nn(name):
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    x, target = _inputs("probability" if name == "BCELoss" else "real")
    torch.testing.assert_close(getattr(ft, name)(weight)(x, target),
                               getattr(torch.nn, name)(weight)(x, target), rtol=1e-12, atol=0)


def test_errors():
    x, target = _inputs("real")
    with pytest.raises(ValueError, match="does not differentiate target"):
        ft.mse_loss(x, target.clone().requires_grad_())
    with pytest.raises(ValueError, match="does not differentiate weight"):
        ft.binary_cross_entropy_with_logits(x, target, weight=torch.ones(3, dtype=torch.float64,
                                                                          requires_grad=True))
    with pytest.raises(ValueError, match="size_average and reduce are deprecated"):
        ft.mse_loss(x, target, reduce=False)
    with pytest.raises(TypeError, match="dtype float64 but input has dtype float32"):
        ft.mse_loss(x.float(), target)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        ft.mse_loss(x, target.numpy())
    with pytest.raises(TypeError, match="int32"):
        ft.softmax(x.int(), -1)
    with pytest.raises(ValueError, match="reduction must be"):
        ft.mse_loss(x, target, reduction="avg")
    with pytest.raises(ValueError, match="outside"):
        ft.binary_cross_entropy(x.detach() + 2, target)


def test_importing_fastloss_does_not_import_torch():
    code = "import sys, fastloss, fastloss.nn; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


# ---- CUDA tensors: CuPy on the tensor's device and PyTorch's stream (no GPU needed) -----------

class _FakeCuda:
    """Stand-ins for cupy.cuda.Device, cupy.cuda.Stream.from_external / ExternalStream and
    torch.cuda.current_stream that log what a call enters, with the device current then. Like
    CuPy, a wrapped stream belongs to the device current when it was wrapped (unless told),
    and entering it on another device fails."""

    def __init__(self, monkeypatch, from_external):
        from _helpers import import_cupy_or_skip
        cupy = import_cupy_or_skip()
        self.log, self.current, self.requested = [], [0], []
        fake = self

        class Device:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                fake.current.append(self.index)
                fake.log.append(("enter device", self.index))

            def __exit__(self, *exc_info):
                fake.current.pop()
                fake.log.append(("exit device", self.index))

        class WrappedStream:
            def __init__(self, ptr, device_id=-1):
                self.ptr = ptr
                self.device_id = fake.current[-1] if device_id == -1 else device_id
                fake.log.append(("wrap stream", ptr, self.device_id))

            def __enter__(self):
                assert self.device_id == fake.current[-1], "a stream of another device"
                fake.log.append(("enter stream", self.ptr))

            def __exit__(self, *exc_info):
                fake.log.append(("exit stream", self.ptr))

        class Stream:
            pass
        if from_external:
            Stream.from_external = staticmethod(
                lambda obj: WrappedStream(obj.__cuda_stream__()[1]))

        class TorchStream:
            def __init__(self, index):
                self.cuda_stream = 0x1000 + index

            def __cuda_stream__(self):
                return 0, self.cuda_stream

        def current_stream(device=None):
            fake.requested.append(device)
            return TorchStream(device)

        monkeypatch.setattr(cupy.cuda, "Device", Device)
        monkeypatch.setattr(cupy.cuda, "Stream", Stream)
        monkeypatch.setattr(cupy.cuda, "ExternalStream", WrappedStream)
        monkeypatch.setattr(torch.cuda, "current_stream", current_stream)


@pytest.mark.parametrize("from_external", [True, False], ids=["cupy14", "older-cupy"])
def test_cuda_tensor_uses_its_device_and_its_stream(monkeypatch, from_external):
    """A tensor on cuda:1 while device 0 is current: CuPy enters device 1, then PyTorch's
    current stream of device 1, wrapped as a stream of device 1."""
    fake = _FakeCuda(monkeypatch, from_external)
    tensor = types.SimpleNamespace(device=torch.device("cuda", 1))
    with ft._stream_of(tensor):
        fake.log.append(("body", fake.current[-1]))
    assert fake.requested == [1]
    assert fake.log == [("enter device", 1), ("wrap stream", 0x1001, 1), ("enter stream", 0x1001),
                        ("body", 1), ("exit stream", 0x1001), ("exit device", 1)]


def test_cpu_tensor_enters_no_device(monkeypatch):
    fake = _FakeCuda(monkeypatch, from_external=True)
    with ft._stream_of(torch.ones(2)):
        pass
    assert fake.log == [] and fake.requested == []


def _cuda_devices_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    from _helpers import import_cupy_or_skip
    if not import_cupy_or_skip().cuda.is_available():
        pytest.skip("CuPy has no CUDA device")
    return torch.cuda.device_count()


@pytest.mark.parametrize("device_index", [0, 1])
def test_cuda_tensors_on_a_side_stream(device_index):
    """On a GPU: values and gradients on PyTorch's side stream of the tensor's device (device
    1 while device 0 is current, where there are two)."""
    if _cuda_devices_or_skip() <= device_index:
        pytest.skip(f"needs {device_index + 1} CUDA devices")
    device = torch.device("cuda", device_index)
    stream = torch.cuda.Stream(device)
    for ours, theirs, kind, kwargs in CASES.values():
        x, target = _inputs(kind, shape=(257, 3))
        gx = x.detach().to(device).requires_grad_()
        gkw = {k: v.to(device) for k, v in kwargs.items()}
        with torch.cuda.stream(stream):  # the side stream of the tensor's device ...
            with torch.cuda.device(0):  # ... while device 0 is current
                loss = ours(gx, target.to(device), **gkw)
                loss.backward()
        stream.synchronize()
        want = theirs(x, target, **kwargs)
        want.backward()
        assert loss.device == device and gx.grad.device == device
        torch.testing.assert_close(loss.cpu(), want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx.grad.cpu(), x.grad, rtol=1e-12, atol=1e-12)
