"""fastloss.torch on float16 and bfloat16 CPU tensors (outside autocast): the elementwise
losses, sigmoid, softmax, log_softmax and cross_entropy run the 16-bit kernels (bfloat16 through ml_dtypes.bfloat16 views of the
tensors' bits) and return results in the input's dtype, as torch's own functions do.

Values and gradients are compared with torch's own in the same dtype at half-precision
tolerance (torch rounds its intermediate steps to the dtype, so it is the less accurate of the
two), and with the float64 value of the same 16-bit inputs at half an ulp plus the float32-grade
terms' 1e-8 relative (fastloss rounds once). Under CPU bfloat16 autocast, ``sigmoid`` (which
autocast leaves in the input's dtype) gives a bfloat16 result like torch.sigmoid's.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")

import torch.nn.functional as TF  # noqa: E402

import fastloss.torch as ft  # noqa: E402

HALVES = [torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
# serial, and parallel with a partial vector (the threshold is 32768 elements)
SHAPES = [(7, 5), (200, 201)]


def _eps(dtype):
    return torch.finfo(dtype).eps


def _within_half_ulp(got, exact):
    """|got - exact| <= half the dtype's spacing at got's magnitude + 1e-8 relative, elementwise;
    exact is float64. The spacing is taken from got's magnitude, the next value of the dtype up;
    an infinite got must be an exact value beyond the dtype's range."""
    got64 = got.detach().double()
    overflowed = torch.isinf(got64)  # then the exact value must overflow the dtype too
    if not torch.equal(overflowed, torch.isinf(exact.to(got.dtype))):
        return False
    got64, exact, got = got64[~overflowed], exact[~overflowed], got.detach()[~overflowed]
    magnitude = got.abs()
    up = torch.nextafter(magnitude, torch.full_like(magnitude, float("inf"))).double()
    spacing = up - magnitude.double()
    error = (got64 - exact).abs()
    return bool(torch.all(error <= 0.5 * spacing + 1e-8 * exact.abs()))


def _inputs(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 2).to(dtype)
    target = torch.randn(shape, generator=generator).to(dtype)
    labels = (torch.rand(shape, generator=generator) < 0.5).to(dtype)
    return x, target, labels


def test_the_half_ulp_check_can_fail():
    one_ulp_off = torch.tensor(1.0 + 2.0 ** -10, dtype=torch.float16)
    assert not _within_half_ulp(one_ulp_off, torch.tensor(1.0, dtype=torch.float64))
    assert _within_half_ulp(one_ulp_off, torch.tensor(1.0 + 2.0 ** -10, dtype=torch.float64))
    assert not _within_half_ulp(torch.tensor(float("inf"), dtype=torch.float16),
                                torch.tensor(60000.0, dtype=torch.float64))


CASES = {
    "mse": (ft.mse_loss, TF.mse_loss, "x", "target"),
    "bce": (ft.binary_cross_entropy, TF.binary_cross_entropy, "p", "labels"),
    "logits": (ft.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, "x",
               "labels"),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_losses_and_gradients_against_torch(dtype, case, reduction, shape):
    ours_fn, theirs_fn, input_kind, target_kind = CASES[case]
    x, target, labels = _inputs(shape, dtype, 15)
    inputs = {"x": x, "p": torch.sigmoid(x.float()).to(dtype)}
    chosen = {"target": target, "labels": labels}[target_kind]
    results = []
    for function in (ours_fn, theirs_fn, None):
        leaf = inputs[input_kind].clone().requires_grad_()
        if function is None:  # the float64 value of the same 16-bit inputs
            leaf64 = leaf.detach().double().requires_grad_()
            loss = theirs_fn(leaf64, chosen.double(), reduction=reduction)
            loss.sum().backward()
            results.append((loss.detach(), leaf64.grad))
            break
        loss = function(leaf, chosen, reduction=reduction)
        assert loss.dtype == dtype
        loss.sum().backward()
        assert leaf.grad.dtype == dtype
        results.append((loss.detach(), leaf.grad))
    (ours, our_grad), (theirs, their_grad), (exact, exact_grad) = results
    assert ours.shape == theirs.shape
    tolerance = {"rtol": 4 * _eps(dtype), "atol": 4 * _eps(dtype)}
    torch.testing.assert_close(ours.double(), theirs.double(), **tolerance)
    torch.testing.assert_close(our_grad.double(), their_grad.double(), **tolerance)
    assert _within_half_ulp(ours, exact)
    if reduction != "none":
        # the gradient of a reduced loss is the saved 16-bit gradient (times a grad_output of 1)
        assert _within_half_ulp(our_grad, exact_grad)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_weights_and_pos_weight(dtype):
    x, _, labels = _inputs((64, 6), dtype, 3)
    weight = torch.linspace(0.5, 2.0, 6).to(dtype)
    pos_weight = torch.linspace(2.0, 0.5, 6).to(dtype)
    ours = ft.binary_cross_entropy_with_logits(x, labels, weight=weight, pos_weight=pos_weight,
                                               reduction="sum")
    exact = TF.binary_cross_entropy_with_logits(x.double(), labels.double(),
                                                weight=weight.double(),
                                                pos_weight=pos_weight.double(), reduction="sum")
    assert ours.dtype == dtype and _within_half_ulp(ours, exact)
    # a Python number as weight becomes a tensor of the input's dtype
    torch.testing.assert_close(ft.mse_loss(x, labels, weight=0.5).double(),
                               (ft.mse_loss(x, labels) * 0.5).double(),
                               rtol=_eps(dtype), atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_sigmoid_and_its_backward(dtype, shape):
    x, target, _ = _inputs(shape, dtype, 7)
    leaf = x.clone().requires_grad_()
    y = ft.sigmoid(leaf)
    assert y.dtype == dtype
    torch.testing.assert_close(y, torch.sigmoid(x), rtol=2 * _eps(dtype), atol=1e-4)
    assert _within_half_ulp(y, torch.sigmoid(x.double()))
    (y * target).sum().backward()
    # backward from the 16-bit output, as torch's: grad_output * y * (1 - y), rounded once
    exact_grad = target.double() * y.detach().double() * (1 - y.detach().double())
    assert leaf.grad.dtype == dtype and _within_half_ulp(leaf.grad, exact_grad)


def test_sigmoid_under_cpu_bfloat16_autocast_is_like_torchs():
    """Autocast leaves sigmoid in its input's dtype: a bfloat16 Linear output gives a bfloat16
    sigmoid, and its gradient reaches the layer as torch's does."""
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    results = []
    for sigmoid in (ft.sigmoid, torch.sigmoid):
        torch.manual_seed(0)
        layer = torch.nn.Linear(6, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = layer(x)
            y = sigmoid(z)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        results.append((y.detach(), layer.weight.grad))
    (ours, our_grad), (theirs, their_grad) = results
    torch.testing.assert_close(ours, theirs, rtol=2 * _eps(torch.bfloat16), atol=1e-3)
    torch.testing.assert_close(our_grad, their_grad, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_half_with_float32_is_a_type_error_naming_both(dtype):
    name = str(dtype).removeprefix("torch.")
    x = torch.zeros(4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=f"^target has dtype float32 but input has dtype {name}"):
        ft.mse_loss(x, torch.zeros(4, 3))
    with pytest.raises(TypeError, match=f"^weight has dtype float32 but input has dtype {name}"):
        ft.binary_cross_entropy_with_logits(x, x, weight=torch.ones(3))


@pytest.mark.parametrize("classes", [3, 10, 300])
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_softmax_and_log_softmax_against_torch(dtype, classes):
    x, target, _ = _inputs((37, classes), dtype, classes)
    for ours_fn, theirs_fn in ((ft.softmax, torch.softmax), (ft.log_softmax, torch.log_softmax)):
        leaf = x.clone().requires_grad_()
        y = ours_fn(leaf, 1)
        assert y.dtype == dtype
        their_leaf = x.clone().requires_grad_()
        their_y = theirs_fn(their_leaf, 1)
        torch.testing.assert_close(y.double(), their_y.double(), rtol=4 * _eps(dtype),
                                   atol=4 * _eps(dtype))
        (y * target).sum().backward()
        (their_y * target).sum().backward()
        assert leaf.grad.dtype == dtype
        torch.testing.assert_close(leaf.grad.double(), their_leaf.grad.double(),
                                   rtol=8 * _eps(dtype), atol=8 * _eps(dtype))
    assert _within_half_ulp(ft.softmax(x, 1), torch.softmax(x.double(), 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_cross_entropy_against_torch(dtype, reduction):
    """Class indices with a weight, ignore_index and label smoothing, and probabilities: the
    losses within half an ulp of the float64 loss of the same 16-bit inputs, and torch's."""
    x, _, _ = _inputs((64, 10), dtype, 5)
    generator = torch.Generator().manual_seed(6)
    indices = torch.randint(0, 10, (64,), generator=generator)
    indices[::7] = -100
    probabilities = torch.softmax(torch.randn(64, 10, generator=generator), 1).to(dtype)
    weight = torch.linspace(0.5, 2.0, 10).to(dtype)
    cases = ((indices, {"weight": weight}), (indices, {"label_smoothing": 0.1}),
             (probabilities, {}))
    for target, kwargs in cases:
        leaf = x.clone().requires_grad_()
        loss = ft.cross_entropy(leaf, target, reduction=reduction, **kwargs)
        assert loss.dtype == dtype
        loss.sum().backward()
        assert leaf.grad.dtype == dtype
        wide = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        leaf64 = x.double().requires_grad_()
        exact = TF.cross_entropy(leaf64, target.double() if target.is_floating_point() else target,
                                 reduction=reduction, **wide)
        exact.sum().backward()
        assert _within_half_ulp(loss, exact.detach())
        theirs = TF.cross_entropy(x, target, reduction=reduction, **kwargs)
        torch.testing.assert_close(loss.double(), theirs.double(), rtol=8 * _eps(dtype),
                                   atol=8 * _eps(dtype))
        torch.testing.assert_close(leaf.grad.double(), leaf64.grad, rtol=2 * _eps(dtype),
                                   atol=_eps(dtype) / 64)


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_cross_entropy_loss_module_and_opcheck(dtype):
    x, _, _ = _inputs((16, 5), dtype, 8)
    target = torch.tensor([0, 1, 2, 3, 4] * 3 + [0])
    loss = ft.CrossEntropyLoss(label_smoothing=0.05)(x, target)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.double(), TF.cross_entropy(x, target, label_smoothing=0.05)
                               .double(), rtol=8 * _eps(dtype), atol=8 * _eps(dtype))
    torch.library.opcheck(torch.ops.fastloss.cross_entropy, (x, target, None, -100, 0.0, "mean"))
    torch.library.opcheck(torch.ops.fastloss.softmax, (x, 1))
    torch.library.opcheck(torch.ops.fastloss.log_softmax, (x, 1))


def test_cuda_half_tensors_are_refused_where_the_cuda_kernels_have_none():
    """Checked from the tensor's dtype and device alone, before anything is converted, so an
    object with a CUDA device stands for a CUDA tensor on this GPU-less machine: float16
    passes (every op has CUDA float16 kernels: cuda/losses.cu, cuda/multiclass.cu, the same
    check for all of them), bfloat16 does not (CuPy has no bfloat16)."""
    from fastloss.torch import _check_floats

    class OnCuda:  # a tensor's dtype and device, as _check_floats reads them
        def __init__(self, dtype):
            self.dtype, self.device = dtype, torch.device("cuda", 0)

    _check_floats(OnCuda(torch.float16))
    _check_floats(OnCuda(torch.float16), target=OnCuda(torch.float16))
    with pytest.raises(TypeError, match="^input has dtype bfloat16 on cuda:0; fastloss's CUDA "
                                        "kernels take float16 but no bfloat16"):
        _check_floats(OnCuda(torch.bfloat16))


def _neighbours_or_equal(got, want):
    """Each element of got (a float16 tensor) is want's or one of its two float16 neighbours
    (NaN for NaN)."""
    a, b = got.detach().cpu().numpy(), want.detach().cpu().numpy()
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
    nan = np.isnan(b)
    close = (a == b) | (np.nextafter(b, a) == a)
    return bool(np.array_equal(np.isnan(a), nan) and np.all(close | nan))


def test_cuda_float16_row_ops_on_the_gpu():
    """On a GPU (skipped otherwise): float16 CUDA tensors through softmax, log_softmax and
    cross_entropy, forward and backward, run the float16 kernels of cuda/multiclass.cu: float16
    results on the tensor's device, each the CPU's result or, near a half-way point (where the
    CPU's float32-grade exps and the GPU's double ones may round apart), its neighbour."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from _helpers import import_cupy_or_skip
    import_cupy_or_skip()
    x, target, _ = _inputs((37, 300), torch.float16, 23)
    indices = torch.randint(0, 300, (37,), generator=torch.Generator().manual_seed(24))
    weight = torch.linspace(0.5, 2.0, 300).to(torch.float16)
    results = {}
    for device in ("cpu", "cuda"):
        outputs = []
        for function in (lambda v: ft.softmax(v, 1), lambda v: ft.log_softmax(v, 1),
                         lambda v: ft.cross_entropy(v, indices.to(device),
                                                    weight=weight.to(device),
                                                    label_smoothing=0.1, reduction="none")):
            leaf = x.detach().clone().to(device).requires_grad_()  # a fresh leaf per call
            y = function(leaf)
            assert y.dtype == torch.float16 and y.device.type == device
            upstream = target.to(device) if y.dim() == 2 else target[:, 0].to(device)
            (y * upstream).sum().backward()
            assert leaf.grad.dtype == torch.float16 and leaf.grad.device.type == device
            outputs += [y, leaf.grad]
        results[device] = outputs
    for i, (gpu, cpu) in enumerate(zip(results["cuda"], results["cpu"])):
        assert _neighbours_or_equal(gpu, cpu), i


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_opcheck_and_compile(dtype):
    """The operators' fake implementations and schemas hold for 16-bit tensors, and a compiled
    call equals the eager one bit for bit."""
    x, target, labels = _inputs((16, 5), dtype, 11)
    for reduction in REDUCTIONS:
        torch.library.opcheck(torch.ops.fastloss.mse_loss, (x, target, None, reduction))
        torch.library.opcheck(torch.ops.fastloss.binary_cross_entropy_with_logits,
                              (x, labels, None, None, reduction))
    torch.library.opcheck(torch.ops.fastloss.sigmoid, (x,))
    compiled = torch.compile(lambda a, b: ft.mse_loss(a, b), fullgraph=True)
    assert torch.equal(compiled(x, target), ft.mse_loss(x, target))


def test_bfloat16_arrays_are_views_not_copies():
    """The kernels write a bfloat16 output through a view of the tensor's own memory."""
    from fastloss.torch import _as_array
    t = torch.zeros(5, dtype=torch.bfloat16)
    view = _as_array(t, "out")
    assert view.dtype.name == "bfloat16" and view.ctypes.data == t.data_ptr()
    view[:] = np.float32(1.5)
    assert torch.equal(t, torch.full((5,), 1.5, dtype=torch.bfloat16))


# PyTorch's own OpInfo samples of these ops (drawn once in float32 and stored,
# tests/data/make_torch_samples.py), cast to each 16-bit dtype
BINARY_SAMPLES = __import__("json").loads(
    (__import__("pathlib").Path(__file__).parent / "data" / "torch_binary_samples.json")
    .read_text())["samples"]
SAMPLE_FUNCTIONS = {"mse_loss": (ft.mse_loss, TF.mse_loss),
                    "binary_cross_entropy": (ft.binary_cross_entropy, TF.binary_cross_entropy),
                    "binary_cross_entropy_with_logits": (ft.binary_cross_entropy_with_logits,
                                                         TF.binary_cross_entropy_with_logits),
                    "sigmoid": (ft.sigmoid, torch.sigmoid)}


def _sample_value(value, dtype):
    if isinstance(value, dict) and "tensor" in value:
        wanted = dtype if value["dtype"].startswith("float") else getattr(torch, value["dtype"])
        return torch.tensor(value["tensor"], dtype=torch.float64).reshape(value["shape"]).to(wanted)
    return value


def _through(function, input, args, kwargs):
    leaf = input.detach().clone().requires_grad_()
    out = function(leaf, *args, **kwargs)
    upstream = torch.linspace(-1.5, 2.0, out.numel(), dtype=torch.float64).reshape(out.shape)
    if out.numel():
        (grad,) = torch.autograd.grad(out, leaf, upstream.to(out.dtype))
    else:
        grad = torch.zeros_like(leaf)
    return out.detach(), grad


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("sample", BINARY_SAMPLES,
                         ids=[f"{i}-{s['function']}" for i, s in enumerate(BINARY_SAMPLES)])
def test_opinfo_samples_in_half_precision(sample, dtype):
    """Value and gradient against the float64 results of the same 16-bit inputs (with the same
    upstream gradient): the value within half an ulp (fastloss rounds once), the gradient
    within two (the saved 16-bit gradient times the upstream one, rounded again, as torch's
    autograd does); and elementwise never farther from them than torch's own 16-bit results,
    which round their intermediate steps (a bfloat16 BCE with logits of PyTorch's samples is
    off by 60 % where a negative weight meets cancellation)."""
    ours_fn, theirs_fn = SAMPLE_FUNCTIONS[sample["function"]]
    input = _sample_value(sample["input"], dtype)
    args = [_sample_value(a, dtype) for a in sample["args"]]
    kwargs = {k: _sample_value(v, dtype) for k, v in sample["kwargs"].items()}
    ours, our_grad = _through(ours_fn, input, args, kwargs)
    theirs, their_grad = _through(theirs_fn, input, args, kwargs)
    assert ours.dtype == theirs.dtype == dtype and our_grad.dtype == dtype
    assert ours.shape == theirs.shape and our_grad.shape == their_grad.shape
    wide = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in kwargs.items()}
    exact, exact_grad = _through(theirs_fn, input.double(), [a.double() for a in args], wide)
    if sample["function"] == "sigmoid":
        # the backward runs from the 16-bit output y, as torch's: upstream * y * (1 - y)
        upstream = torch.linspace(-1.5, 2.0, ours.numel(), dtype=torch.float64).reshape(ours.shape)
        y = ours.double()
        exact_grad = upstream.to(dtype).double() * y * (1 - y)
    assert _within_half_ulp(ours, exact)
    spacing = (torch.nextafter(our_grad.abs(), torch.full_like(our_grad, float("inf"))).double()
               - our_grad.abs().double())
    our_error = (our_grad.double() - exact_grad).abs()
    assert bool(torch.all(our_error <= 2 * spacing + 1e-8 * exact_grad.abs()))
    assert bool(torch.all(our_error <= (their_grad.double() - exact_grad).abs() + spacing))
    assert bool(torch.all((ours.double() - exact).abs()
                          <= (theirs.double() - exact).abs() + 1e-8 * exact.abs()))
