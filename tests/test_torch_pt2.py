"""fastloss.torch in PyTorch 2.x training code: every operator through torch.library.opcheck,
torch.compile(fullgraph=True) forward and backward against eager, a compiled training step
against the eager one, torch.func.grad and vmap against torch's own functions, torch.autocast
against torch's own losses there, and the dtypes refused with their names."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastloss.torch as ft  # noqa: E402  (needs torch)

TF = torch.nn.functional
REDUCTIONS = ["mean", "sum", "none"]
OPS = torch.ops.fastloss


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own closures from the same code objects: start without the
    earlier tests' compiled code, so none counts against Dynamo's recompile limit."""
    torch._dynamo.reset()
    yield


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _real(shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=_generator(seed), dtype=dtype)


def _probabilities(shape, dtype=torch.float64, seed=0):
    return torch.rand(shape, generator=_generator(seed), dtype=dtype) * 0.9 + 0.05


# (fastloss.torch function, torch's, input maker, keyword arguments (dtype -> tensors)): the
# public functions, with weights where they take them, and their targets
def _weights(dtype):
    return {"weight": torch.tensor([0.5, 2.0, 1.5], dtype=dtype)}


def _both_weights(dtype):
    return {"weight": torch.tensor([0.5, 2.0, 1.5], dtype=dtype),
            "pos_weight": torch.tensor([3.0, 0.25, 1.0], dtype=dtype)}


LOSSES = {
    "mse": (ft.mse_loss, TF.mse_loss, _real, lambda d: {}),
    "bce_weight": (ft.binary_cross_entropy, TF.binary_cross_entropy, _probabilities, _weights),
    "logits_weights": (ft.binary_cross_entropy_with_logits,
                       TF.binary_cross_entropy_with_logits, _real, _both_weights),
}
TOLERANCE = {torch.float32: dict(rtol=2e-6, atol=1e-6),
             torch.float64: dict(rtol=1e-12, atol=1e-13)}


def _loss_inputs(case, dtype, shape=(8, 3)):
    _, _, make, kwargs = LOSSES[case]
    return make(shape, dtype, 1), torch.rand(shape, generator=_generator(2), dtype=dtype), \
        kwargs(dtype)


# ---- opcheck: schema, autograd registration, fake tensors, AOT dispatch -------------------------
def _opcheck_cases():
    x, t = _real((6, 3)), torch.rand(6, 3, generator=_generator(1), dtype=torch.float64)
    p = _probabilities((6, 3))
    w = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    logits = _real((6, 4, 2))
    indices = torch.tensor([[0, 1], [3, -100], [2, 2], [1, 0], [3, 3], [0, 2]])
    probabilities = torch.softmax(_real((6, 4), seed=3), 1)
    for reduction in REDUCTIONS:
        yield "mse", OPS.mse_loss, (x, t, None, reduction)
        yield "mse_weight", OPS.mse_loss, (x, t, w, reduction)
        yield "bce", OPS.binary_cross_entropy, (p, t, w, reduction)
        yield "logits", OPS.binary_cross_entropy_with_logits, (x, t, w, w.flip(0), reduction)
        yield "ce_indices", OPS.cross_entropy, (logits, indices, w.new_tensor([1, 2, .5, 1.5]),
                                                -100, 0.2, reduction)
        yield "ce_probabilities", OPS.cross_entropy, (_real((6, 4)), probabilities, None, -100,
                                                      0.0, reduction)
    y = torch.sigmoid(x)
    yield "sigmoid", OPS.sigmoid, (x,)
    yield "sigmoid_backward", OPS.sigmoid_backward, (t, y)
    for dim in (0, -1):
        yield "softmax", OPS.softmax, (logits, dim)
        yield "log_softmax", OPS.log_softmax, (logits, dim)
        yield "softmax_backward", OPS.softmax_backward, (logits, torch.softmax(logits, dim),
                                                         dim)
        yield "log_softmax_backward", OPS.log_softmax_backward, (
            logits, torch.log_softmax(logits, dim), dim)


OPCHECK = list(_opcheck_cases())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name, op, args", OPCHECK,
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(OPCHECK)])
def test_opcheck(name, op, args, dtype):
    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]
    if not name.endswith("backward"):  # the backward operators have no backward themselves
        args[0] = args[0].clone().requires_grad_()
    torch.library.opcheck(op, tuple(args))


def test_the_operators_own_autograd_scales_the_saved_gradient():
    """torch.ops.fastloss.* called directly (register_autograd), not through fastloss.torch."""
    x, t, _ = _loss_inputs("mse", torch.float64)
    x.requires_grad_()
    loss, grad = OPS.mse_loss(x, t, None, "sum")
    assert not grad.requires_grad
    (loss * 3).backward()
    torch.testing.assert_close(x.grad, 6 * (x.detach() - t), rtol=1e-15, atol=0)


# ---- torch.compile ------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(LOSSES))
def test_compiled_losses_trace_forward_and_backward_in_one_graph(case, reduction):
    """fullgraph=True refuses any graph break; the backward is the compiled graph's
    (CompiledFunctionBackward), equal to eager's."""
    function, _, _, _ = LOSSES[case]
    x, t, kwargs = _loss_inputs(case, torch.float32)
    compiled = torch.compile(lambda a: function(a, t, reduction=reduction, **kwargs),
                             fullgraph=True)
    upstream = _real(x.shape, torch.float32, 4) if reduction == "none" else torch.tensor(0.75)
    ours = compiled(x.clone().requires_grad_())
    assert type(ours.grad_fn).__name__ == "CompiledFunctionBackward"
    leaf = x.clone().requires_grad_()
    value = compiled(leaf)
    value.backward(upstream)
    eager_leaf = x.clone().requires_grad_()
    eager = function(eager_leaf, t, reduction=reduction, **kwargs)
    eager.backward(upstream)
    torch.testing.assert_close(value, eager, rtol=0, atol=0)
    torch.testing.assert_close(leaf.grad, eager_leaf.grad, rtol=1e-7, atol=0)


def test_compiled_with_dynamic_shapes_serves_every_batch_size_from_one_graph():
    """dynamic=True: the fake implementations give symbolic shapes, so batches of other sizes
    reuse the graph (no recompile: torch._dynamo's frame count stays one) and match eager."""
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(lambda a, b: ft.binary_cross_entropy_with_logits(
        a, b, reduction="none").sum() + ft.cross_entropy(a, b.argmax(1)), dynamic=True,
        fullgraph=True)
    for rows in (7, 19, 64):
        x = _real((rows, 3), torch.float32, rows)
        t = torch.rand(rows, 3, generator=_generator(rows))
        leaf, eager_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
        value = compiled(leaf, t)
        value.backward()
        eager = (ft.binary_cross_entropy_with_logits(eager_leaf, t, reduction="none").sum()
                 + ft.cross_entropy(eager_leaf, t.argmax(1)))
        eager.backward()
        torch.testing.assert_close(value, eager, rtol=1e-6, atol=0)
        torch.testing.assert_close(leaf.grad, eager_leaf.grad, rtol=1e-6, atol=1e-7)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", ["sigmoid", "softmax", "log_softmax", "cross_entropy"])
def test_compiled_multiclass_and_activations(name):
    x = _real((5, 4, 3), torch.float32)
    target = torch.tensor([[0, 1, 2], [3, 3, 0], [1, 2, 3], [0, 0, 1], [2, 1, 0]])
    functions = {"sigmoid": lambda a: ft.sigmoid(a).sum(),
                 "softmax": lambda a: (ft.softmax(a, 1) * x).sum(),
                 "log_softmax": lambda a: (ft.log_softmax(a, -1) * x).sum(),
                 "cross_entropy": lambda a: ft.cross_entropy(a, target, label_smoothing=0.1)}
    compiled = torch.compile(functions[name], fullgraph=True)
    leaf, eager_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(leaf).backward()
    functions[name](eager_leaf).backward()
    torch.testing.assert_close(leaf.grad, eager_leaf.grad, rtol=1e-6, atol=1e-7)


def _train(criterion, make_target, compile_step, steps=6, dtype=torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 3)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(32, 6, generator=_generator(7), dtype=dtype)
    y = make_target(x)

    def forward(inputs, targets):
        return criterion(model(inputs), targets)
    if compile_step:
        forward = torch.compile(forward, fullgraph=True)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = forward(x, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


TRAINED = {
    "MSELoss": (ft.MSELoss(), lambda x: x[:, :3] * x[:, 3:]),
    "BCEWithLogitsLoss": (ft.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5],
                                                                      dtype=torch.float64)),
                          lambda x: (x[:, :3] > 0).to(x.dtype)),
    "CrossEntropyLoss": (ft.CrossEntropyLoss(label_smoothing=0.1),
                         lambda x: x[:, :3].argmax(1)),
}


@pytest.mark.parametrize("name", list(TRAINED))
def test_compiled_training_step_gives_the_eager_losses_and_weights(name):
    criterion, make_target = TRAINED[name]
    eager = _train(criterion, make_target, False)
    compiled = _train(criterion, make_target, True)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-12)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ---- torch.func ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(LOSSES))
def test_func_grad_and_vmap_match_torch(case, reduction):
    """grad of the summed loss, vmap of the loss over a batch (each sample its own reduction)
    and per-sample gradients vmap(grad(...)), all as torch.func gives them for torch's loss."""
    function, reference, _, _ = LOSSES[case]
    x, t, kwargs = _loss_inputs(case, torch.float64, (4, 5, 3))
    for use in (function, reference):
        def loss(a, b, use=use):
            return use(a, b, reduction=reduction, **kwargs).sum()
        results = (torch.func.grad(loss)(x, t),
                   torch.func.vmap(lambda a, b, use=use: use(a, b, reduction=reduction,
                                                            **kwargs))(x, t),
                   torch.func.vmap(torch.func.grad(loss), in_dims=(0, None))(x, t[0]))
        if use is function:
            ours = results
    for mine, theirs in zip(ours, results):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_with_per_sample_weights_matches_a_loop_of_torchs_loss(reduction, dtype):
    """The batch in any dimension, a weight per sample (batched along another dimension) and a
    shared pos_weight: each sample's loss and gradient as torch's loss gives them one by one."""
    x = _real((5, 4, 3), dtype)  # batch along dimension 1: 4 samples of (5, 3)
    t = torch.rand(4, 5, 3, generator=_generator(2), dtype=dtype)
    w = torch.rand(3, 4, generator=_generator(3), dtype=dtype) + 0.5  # (3,) per sample
    pw = torch.tensor([3.0, 0.25, 1.0], dtype=dtype)

    def loss(function):
        return lambda a, b, c: function(a, b, weight=c, pos_weight=pw, reduction=reduction)
    per_sample = torch.func.vmap(loss(ft.binary_cross_entropy_with_logits), in_dims=(1, 0, 1))
    grads = torch.func.vmap(torch.func.grad(lambda a, b, c: loss(
        ft.binary_cross_entropy_with_logits)(a, b, c).sum()), in_dims=(1, 0, 1))
    theirs = loss(TF.binary_cross_entropy_with_logits)
    expected = torch.stack([theirs(x[:, i], t[i], w[:, i]) for i in range(4)])
    expected_grads = torch.stack([torch.func.grad(lambda a, i=i: theirs(a, t[i], w[:, i]).sum())(
        x[:, i]) for i in range(4)])
    torch.testing.assert_close(per_sample(x, t, w), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(grads(x, t, w), expected_grads, **TOLERANCE[dtype])


def test_func_on_multiclass_and_activations():
    x = _real((4, 5, 3))
    target = torch.tensor([[0, 1, 2, 1, 0]] * 4)
    cases = [
        (lambda a: ft.sigmoid(a).sum(), lambda a: torch.sigmoid(a).sum()),
        (lambda a: (ft.softmax(a, -1) ** 2).sum(), lambda a: (torch.softmax(a, -1) ** 2).sum()),
        (lambda a: (ft.log_softmax(a, 0) ** 2).sum(),
         lambda a: (torch.log_softmax(a, 0) ** 2).sum()),
        (lambda a: ft.cross_entropy(a, target[0], label_smoothing=0.2),
         lambda a: TF.cross_entropy(a, target[0], label_smoothing=0.2)),
    ]
    for ours, theirs in cases:
        torch.testing.assert_close(torch.func.grad(ours)(x[0]), torch.func.grad(theirs)(x[0]),
                                   rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(torch.func.vmap(torch.func.grad(ours))(x),
                                   torch.func.vmap(torch.func.grad(theirs))(x),
                                   rtol=1e-12, atol=1e-13)


# ---- autocast -----------------------------------------------------------------------------------
AUTOCAST_LOSSES = {
    "mse": (ft.mse_loss, TF.mse_loss, False),
    "bce": (ft.binary_cross_entropy, TF.binary_cross_entropy, True),
    "logits": (ft.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, False),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(AUTOCAST_LOSSES))
def test_cpu_autocast_losses_run_in_float32_as_torchs(case, reduction):
    """A Linear's bfloat16 output under CPU autocast: the same float32 loss as torch's loss
    there, and the same bfloat16/float32 gradients to the layer's weight."""
    ours_fn, theirs_fn, probabilities = AUTOCAST_LOSSES[case]
    x = _real((16, 6), torch.float32, 3)
    target = torch.rand(16, 3, generator=_generator(4))
    results = []
    for function in (ours_fn, theirs_fn):
        torch.manual_seed(0)
        layer = torch.nn.Linear(6, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = layer(x)
            assert z.dtype == torch.bfloat16
            loss = function(torch.sigmoid(z) if probabilities else z, target,
                            reduction=reduction)
        assert loss.dtype == torch.float32
        loss.sum().backward()
        results.append((loss.detach(), layer.weight.grad))
    (ours, our_grad), (theirs, their_grad) = results
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=1e-6)
    # the bfloat16 matmul's backward rounds the same float32 gradient the same way
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-2, atol=1e-5)


def test_cpu_autocast_cross_entropy_and_a_compiled_bfloat16_step():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    x = _real((16, 6), torch.float32, 3)
    target = torch.randint(0, 4, (16,), generator=_generator(5))

    def step(function):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return function(layer(x), target)
    ours = torch.compile(lambda: step(ft.cross_entropy), fullgraph=True)()
    theirs = step(TF.cross_entropy)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=1e-6)


# ---- dtypes that are refused, by name -----------------------------------------------------------
# (float16 and bfloat16 CPU tensors are taken by every function: tests/test_torch_half.py)
BAD_DTYPES = [torch.int64, torch.int32, torch.bool, torch.complex64, torch.float8_e4m3fn]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=str)
def test_unsupported_dtypes_are_a_type_error_naming_them(dtype):
    x = torch.zeros(4, 3).to(dtype)
    name = str(dtype).removeprefix("torch.")
    for call in (lambda: ft.mse_loss(x, x), lambda: ft.binary_cross_entropy_with_logits(x, x),
                 lambda: ft.sigmoid(x), lambda: ft.softmax(x, 1),
                 lambda: ft.cross_entropy(x, torch.tensor([0, 1, 2, 0]))):
        with pytest.raises(TypeError, match=f"input has dtype {name};"):
            call()


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
def test_mixed_half_and_float32_name_both(half):
    x, t = torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises(TypeError, match=f"target has dtype {str(half)[6:]} but input has dtype "
                                        f"float32"):
        ft.mse_loss(x, t.to(half))
    with pytest.raises(TypeError, match=f"weight has dtype {str(half)[6:]} but input"):
        ft.binary_cross_entropy_with_logits(x, t, weight=torch.ones(3, dtype=half))
    with pytest.raises(TypeError, match="target has dtype bool; cross_entropy takes class "
                                        "indices"):
        ft.cross_entropy(x, torch.zeros(4, dtype=torch.bool))


# ---- outputs ------------------------------------------------------------------------------------
def _vm_flags(address):
    """The VmFlags of the mapping of this process that holds ``address``."""
    with open("/proc/self/smaps") as smaps:
        lines = smaps.read().splitlines()
    holds = False
    for line in lines:
        bounds = line.split()[0]
        if "-" in bounds and ":" not in bounds:
            low, high = (int(b, 16) for b in bounds.split("-"))
            holds = low <= address < high
        elif line.startswith("VmFlags:") and holds:
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
                    reason="no transparent huge pages (or not Linux)")
def test_large_outputs_are_torch_tensors_advised_as_huge_pages():
    """The gradient is torch's allocation, exactly right, and its whole 2 MiB pages carry the
    huge-page advice (VmFlags 'hg') so that the kernel's first writes fault in 2 MiB at a time.
    (Whether a small output's mapping shows 'hg' says nothing: glibc may serve it from heap
    memory an earlier, advised allocation left.)"""
    x = _real(3_000_001, torch.float32).requires_grad_()
    t = torch.zeros(3_000_001)
    ft.mse_loss(x, t, reduction="sum").backward()
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=0, atol=0)
    middle = x.grad.data_ptr() + x.grad.nbytes // 2
    assert "hg" in _vm_flags(middle)
