"""fastloss.nn layers: every backward against central finite differences in float64, the
logits path for Sigmoid + BCELoss, buffers, parameters, save/load and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fastloss import nn
from fastloss.optim import SGD
from fastloss.training import TrainStep

STEP = 1e-6


def numerical_gradient(function, array):
    """Central differences of the scalar function() with respect to each element of array."""
    gradient = np.empty_like(array)
    for index in np.ndindex(array.shape):
        kept = array[index]
        array[index] = kept + STEP
        above = function()
        array[index] = kept - STEP
        below = function()
        array[index] = kept
        gradient[index] = (above - below) / (2 * STEP)
    return gradient


def check_module_gradients(module, x, rng):
    """backward(G) against the finite differences of sum(G * forward(x)): input and every
    parameter."""
    upstream = rng.standard_normal(module.forward(x).shape)

    def objective():
        return float(np.sum(upstream * module.forward(x)))

    module.forward(x)
    grad_input = module.backward(upstream).copy()
    analytic = {name: p.grad.copy() for name, p in module.named_parameters()}
    np.testing.assert_allclose(grad_input, numerical_gradient(objective, x),
                               rtol=1e-6, atol=1e-8, err_msg="input gradient")
    for name, parameter in module.named_parameters():
        np.testing.assert_allclose(analytic[name], numerical_gradient(objective, parameter.data),
                                   rtol=1e-6, atol=1e-8, err_msg=f"{name} gradient")


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients(rng, bias):
    layer = nn.Dense(4, 3, bias=bias, dtype=np.float64, rng=rng)
    check_module_gradients(layer, rng.standard_normal((5, 4)), rng)


@pytest.mark.parametrize("activation", [nn.Sigmoid, nn.Tanh, nn.ReLU])
def test_activation_gradients(rng, activation):
    x = rng.standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ReLU's kink, where differences are meaningless
    check_module_gradients(activation(), x, rng)


def test_sequential_gradients(rng):
    model = nn.Sequential(nn.Dense(4, 6, dtype=np.float64, rng=rng), nn.Tanh(),
                          nn.Dense(6, 5, dtype=np.float64, rng=rng), nn.ReLU(),
                          nn.Dense(5, 2, dtype=np.float64, rng=rng), nn.Sigmoid())
    check_module_gradients(model, rng.standard_normal((3, 4)), rng)


LOSSES = [
    ("mse", lambda: nn.MSELoss(), "real"),
    ("mse_sum", lambda: nn.MSELoss(reduction="sum"), "real"),
    ("mse_weighted", lambda: nn.MSELoss(weight=np.array([0.5, 2.0, 1.0])), "real"),
    ("bce", lambda: nn.BCELoss(), "probability"),
    ("bce_weighted", lambda: nn.BCELoss(weight=np.array([1.5, 0.25, 1.0])), "probability"),
    ("bce_logits", lambda: nn.BCEWithLogitsLoss(), "real"),
    ("bce_logits_pos_weight",
     lambda: nn.BCEWithLogitsLoss(pos_weight=np.array([3.0, 0.5, 1.0]), reduction="sum"), "real"),
]


@pytest.mark.parametrize("make_loss, kind", [case[1:] for case in LOSSES],
                         ids=[case[0] for case in LOSSES])
def test_loss_module_gradients(rng, make_loss, kind):
    loss = make_loss()
    if kind == "probability":
        x = rng.uniform(0.05, 0.95, (4, 3))
        target = rng.uniform(0, 1, (4, 3))
    else:
        x = rng.standard_normal((4, 3))
        target = rng.uniform(0, 1, (4, 3))
    loss.forward(x, target)
    analytic = loss.backward().copy()
    np.testing.assert_allclose(analytic,
                               numerical_gradient(lambda: float(loss.forward(x, target)), x),
                               rtol=1e-6, atol=1e-9)


def test_reduction_none_backward_is_gradient_of_the_sum(rng):
    x, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    per_element = nn.MSELoss(reduction="none")
    summed = nn.MSELoss(reduction="sum")
    assert per_element.forward(x, target).sum() == pytest.approx(summed.forward(x, target),
                                                                 rel=1e-15)
    np.testing.assert_array_equal(per_element.backward(), summed.backward())


def _classifier(rng, dtype=np.float64):
    return nn.Sequential(nn.Dense(5, 4, dtype=dtype, rng=rng), nn.ReLU(),
                         nn.Dense(4, 3, dtype=dtype, rng=rng), nn.Sigmoid())


def test_sigmoid_then_bce_trains_on_the_logits_with_the_same_gradients(rng):
    """TrainStep drops the final Sigmoid and uses BCEWithLogitsLoss: the parameter gradients
    equal the finite differences of BCE(sigmoid(logits)), and the loss is the same."""
    model = _classifier(rng)
    x, target = rng.standard_normal((6, 5)), rng.uniform(0, 1, (6, 3))
    step = TrainStep(model, nn.BCELoss(), SGD(model.parameters(), lr=0.0))
    assert isinstance(step.loss, nn.BCEWithLogitsLoss) and len(step.layers) == 3
    value = step(x, target)

    def objective():
        return float(nn.BCELoss().forward(model.forward(x), target))

    assert value == pytest.approx(objective(), rel=1e-14)
    for name, parameter in model.named_parameters():
        np.testing.assert_allclose(parameter.grad, numerical_gradient(objective, parameter.data),
                                   rtol=1e-6, atol=1e-9, err_msg=name)


def test_logits_path_stays_finite_where_the_sigmoid_saturates():
    """Logits of +-60 make float64 sigmoid outputs exactly 1 or within 1e-26 of 0: BCE on
    them is clamped (a zero gradient); the logits form still gives the true loss and
    gradient."""
    model = nn.Sequential(nn.Dense(1, 1, bias=False, dtype=np.float64), nn.Sigmoid())
    model[0].weight.data[...] = 60.0
    x, target = np.array([[1.0], [-1.0]]), np.array([[0.0], [1.0]])
    step = TrainStep(model, nn.BCELoss(), SGD(model.parameters(), lr=0.0))
    assert float(step(x, target)) == pytest.approx(60.0, rel=1e-12)
    # d/dw mean(softplus(60 w) at x=1 with target 0, softplus(60 w) at x=-1 with target 1)
    assert model[0].weight.grad[0, 0] == pytest.approx(1.0, rel=1e-12)


def test_predict_returns_probabilities_and_fresh_arrays(rng):
    model = _classifier(rng)
    x = rng.standard_normal((7, 5))
    first = nn.predict(model, x)
    second = nn.predict(model, x + 1.0)
    assert first.shape == (7, 3) and np.all((first > 0) & (first < 1))
    assert not np.shares_memory(first, second)
    # BLAS may round a 1-row block (the last batch) differently from a 7-row one.
    np.testing.assert_allclose(nn.predict(model, x, batch_size=3), first, rtol=1e-14)


def test_layer_buffers_are_reused_per_batch_shape(rng):
    layer = nn.Dense(3, 2, rng=rng)
    a = layer.forward(rng.standard_normal((4, 3)).astype(np.float32))
    b = layer.forward(rng.standard_normal((4, 3)).astype(np.float32))
    c = layer.forward(rng.standard_normal((5, 3)).astype(np.float32))
    assert a is b and c is not a


@pytest.mark.parametrize("init", ["uniform", "xavier_uniform", "xavier_normal", "he_uniform",
                                  "he_normal"])
def test_initialisers(init):
    layer = nn.Dense(200, 100, init=init, rng=0)
    weight = layer.weight.data.astype(np.float64)
    expected_std = {"uniform": np.sqrt(1 / 200 / 3), "xavier_uniform": np.sqrt(2 / 300),
                    "xavier_normal": np.sqrt(2 / 300), "he_uniform": np.sqrt(2 / 200),
                    "he_normal": np.sqrt(2 / 200)}[init]
    assert weight.shape == (100, 200) and layer.weight.data.dtype == np.float32
    assert weight.std() == pytest.approx(expected_std, rel=0.03)
    assert abs(weight.mean()) < 0.05 * expected_std * 10
    if init == "uniform":
        assert np.all(np.abs(layer.bias.data) <= 1 / np.sqrt(200))
    else:
        assert np.all(layer.bias.data == 0)


def test_seeded_initialisation_is_reproducible():
    a, b = nn.Dense(5, 3, rng=7), nn.Dense(5, 3, rng=7)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, nn.Dense(5, 3, rng=8).weight.data)


def test_parameters_state_dict_save_and_load(tmp_path, rng):
    model = _classifier(rng, np.float32)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(model.parameters()) == 4
    path = tmp_path / "model.npz"
    model.save(path)
    copy = _classifier(np.random.default_rng(12345), np.float32).load(path)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(copy.state_dict()[name], value)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(nn.predict(copy, x), nn.predict(model, x))


def test_load_rejects_another_architecture(tmp_path, rng):
    path = tmp_path / "model.npz"
    _classifier(rng).save(path)
    with pytest.raises(ValueError, match="parameters"):
        nn.Sequential(nn.Dense(5, 4, dtype=np.float64)).load(path)
    wider = nn.Sequential(nn.Dense(5, 5, dtype=np.float64), nn.ReLU(),
                          nn.Dense(5, 3, dtype=np.float64), nn.Sigmoid())
    with pytest.raises(ValueError, match=r"0.weight has shape \(4, 5\)"):
        wider.load(path)


def test_to_cpu_keeps_numpy_parameters(rng):
    model = _classifier(rng)
    assert model.to("cpu") is model
    assert all(type(p.data) is np.ndarray for p in model.parameters())
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        model.to("tpu")


@pytest.mark.parametrize("x, error, message", [
    (np.zeros((2, 4), np.float32), ValueError, r"input has shape \(2, 4\), expected \(batch, 3\)"),
    (np.zeros(3, np.float32), ValueError, r"expected \(batch, 3\)"),
    (np.zeros((2, 3), np.float64), TypeError, "input has dtype float64 but the parameters"),
    ([[0.0, 0.0, 0.0]], TypeError, "input is a builtins.list"),
])
def test_dense_rejects_bad_input(x, error, message):
    with pytest.raises(error, match=message):
        nn.Dense(3, 2, rng=0).forward(x)


def test_bad_construction_and_call_order():
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        nn.Dense(3, 2, dtype=np.int32)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Dense(0, 2)
    with pytest.raises(ValueError, match="init must be one of"):
        nn.Dense(3, 2, init="glorot")
    with pytest.raises(TypeError, match="Sequential takes fastloss.nn modules"):
        nn.Sequential(nn.Dense(3, 2), np.tanh)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.Dense(3, 2).backward(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.ReLU().backward(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nn.MSELoss().backward()


def test_loss_modules_pass_kernel_errors_through():
    with pytest.raises(ValueError, match="outside"):
        nn.BCELoss().forward(np.array([[1.5]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="shape"):
        nn.MSELoss().forward(np.zeros((2, 1)), np.zeros((2, 2)))


def test_zero_grad_clears_every_parameter_gradient(rng):
    model = _classifier(rng)
    x = rng.standard_normal((4, 5))
    model.forward(x)
    model.backward(np.ones((4, 3)))
    assert all(np.any(p.grad != 0) for p in model.parameters())
    model.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())


def test_repr_names_the_layers():
    text = repr(nn.Sequential(nn.Dense(3, 2), nn.ReLU()))
    assert "Dense(3, 2, bias=True, dtype=float32)" in text and "ReLU()" in text


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_dense_relu_gives_the_bits_of_the_separate_layers(rng, dtype):
    """Sequential runs Dense + ReLU as one stage (bias and ReLU in one C++ call); the results
    and gradients are those of the layers called one by one."""
    model = nn.Sequential(nn.Dense(7, 9, dtype=dtype, rng=rng), nn.ReLU(),
                          nn.Dense(9, 3, dtype=dtype, rng=rng))
    x = rng.standard_normal((10, 7)).astype(dtype)
    upstream = rng.standard_normal((10, 3)).astype(dtype)
    fused_output = model.forward(x).copy()
    fused_grad_input = model.backward(upstream).copy()
    fused_grads = [p.grad.copy() for p in model.parameters()]
    hidden = model[1].forward(model[0].forward(x))
    np.testing.assert_array_equal(model[2].forward(hidden), fused_output)
    grad = model[0].backward(model[1].backward(model[2].backward(upstream)))
    np.testing.assert_array_equal(grad, fused_grad_input)
    for fused, separate in zip(fused_grads, model.parameters()):
        np.testing.assert_array_equal(fused, separate.grad)


def test_fused_kernels_reject_bad_buffers():
    from fastloss import _cpu
    output = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(3,\)"):
        _cpu.dense_bias_relu(output, np.zeros(4, np.float32), True)
    with pytest.raises(TypeError, match="bias has dtype float64, expected float32"):
        _cpu.dense_bias_relu(output, np.zeros(3), True)
    with pytest.raises(ValueError, match="C-contiguous"):
        _cpu.dense_bias_relu(np.zeros((3, 4), np.float32).T, None, True)
    with pytest.raises(ValueError, match=r"grad_input has shape \(3, 4\), expected \(4, 3\)"):
        _cpu.dense_bias_relu_backward(output, output.copy(), np.zeros((3, 4), np.float32), None)
    with pytest.raises(ValueError, match="grad_input shares memory with output"):
        _cpu.dense_bias_relu_backward(output.copy(), output, output, None)


@pytest.mark.parametrize("out_features", [1, 4, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_narrow_layers_match_the_blas_products(rng, out_features, dtype):
    """Layers of at most 4 outputs run their products as C++ loops: same values as the BLAS
    path within rounding, and gradients checked against the definition."""
    layer = nn.Dense(37, out_features, dtype=dtype, rng=rng)
    x = rng.standard_normal((9, 37)).astype(dtype)
    upstream = rng.standard_normal((9, out_features)).astype(dtype)
    weight, bias = layer.weight.data, layer.bias.data
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(layer.forward(x), x @ weight.T + bias, rtol=rtol, atol=rtol)
    grad_input = layer.backward(upstream)
    np.testing.assert_allclose(grad_input, upstream @ weight, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(layer.weight.grad, upstream.T @ x, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(layer.bias.grad, upstream.sum(axis=0), rtol=rtol, atol=rtol)
    relu_model = nn.Sequential(layer, nn.ReLU())
    np.testing.assert_allclose(relu_model.forward(x), np.maximum(x @ weight.T + bias, 0),
                               rtol=rtol, atol=rtol)


def test_dense_kernels_reject_bad_buffers():
    from fastloss import _cpu
    x, w = np.zeros((3, 5)), np.zeros((2, 5))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        _cpu.dense_forward(x, np.zeros(5), None, np.zeros((3, 5)), False)
    with pytest.raises(ValueError, match=r"input has shape \(3, 4\), expected \(batch, 5\)"):
        _cpu.dense_forward(np.zeros((3, 4)), w, None, np.zeros((3, 2)), False)
    with pytest.raises(ValueError, match=r"output has shape \(3, 3\), expected \(3, 2\)"):
        _cpu.dense_forward(x, w, None, np.zeros((3, 3)), False)
    with pytest.raises(ValueError, match="output shares memory"):
        _cpu.dense_forward(x, w, None, x.reshape(-1)[:6].reshape(3, 2), False)
    with pytest.raises(ValueError, match="weight_grad shares memory"):
        _cpu.dense_backward(np.zeros((3, 2)), x, w, w, None)
    with pytest.raises(ValueError, match=r"grad_input has shape \(3, 4\), expected \(3, 5\)"):
        _cpu.dense_backward(np.zeros((3, 2)), x, w, np.zeros((2, 5)), np.zeros((3, 4)))
    wide = np.zeros((40, 40))
    with pytest.raises(ValueError, match="output shares memory"):
        _cpu.dense_forward(np.zeros((3, 40)), wide, None, wide[:3], False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_kernels_against_numpy_at_awkward_shapes(dtype):
    """The compiled dense products (csrc/dense.cpp: register tiles of 4 rows by 4 vectors,
    masked past the last column) against NumPy's, on shapes around every tile edge; False
    (nothing written) only where the CPU's build has no kernel (then the layer uses BLAS)."""
    from fastloss import _cpu
    rng = np.random.default_rng(41)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for batch, inp, out in [(1, 1, 5), (3, 17, 16), (5, 30, 17), (32, 64, 64), (33, 65, 63),
                            (7, 3, 130), (32, 30, 64), (2, 100, 200)]:
        x = rng.standard_normal((batch, inp)).astype(dtype)
        w = rng.standard_normal((out, inp)).astype(dtype)
        b = rng.standard_normal(out).astype(dtype)
        g = rng.standard_normal((batch, out)).astype(dtype)
        for bias, relu in ((None, False), (b, True)):
            y = np.full((batch, out), np.nan, dtype=dtype)
            done = _cpu.dense_forward(x, w, bias, y, relu)
            if not done:
                assert _cpu.build_info()["isa"] != "x86_64_v4" and np.isnan(y).all()
                continue
            want = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else b)
            want = np.maximum(want, 0) if relu else want
            np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol * inp)
        dw = np.full((out, inp), np.nan, dtype=dtype)
        dx = np.full((batch, inp), np.nan, dtype=dtype)
        if _cpu.dense_backward(g, x, w, dw, dx):
            g64 = g.astype(np.float64)
            np.testing.assert_allclose(dw, g64.T @ x, rtol=rtol, atol=rtol * batch)
            np.testing.assert_allclose(dx, g64 @ w, rtol=rtol, atol=rtol * out)
            dw_only = np.full_like(dw, np.nan)
            assert _cpu.dense_backward(g, x, w, dw_only, None)
            np.testing.assert_array_equal(dw_only, dw)
