"""fastloss.torch.mse_loss forward + backward against torch.nn.functional.mse_loss, N = 1e7
float32 on the CPU (issue target: >= 3x). PyTorch's pair reads the inputs in the forward, again
in the backward and writes the gradient; fastloss's forward writes the gradient in the same pass
and its backward returns it.

    pytest bench --benchmark -k torch_mse

Both are asserted after the timing: the loss against the exact mean (fastloss within its 1-ulp
guarantee, PyTorch within the bound of its cascade sum) and x.grad element by element against
fastloss.reference on a fixed sample (bench/result_checks.py).
"""

import pytest
from result_checks import CPU_SUMMATION, assert_result, expected_of

from fastloss.bench.inputs import exact_mean
from fastloss.bench.ops import OPS

torch = pytest.importorskip("torch")
pytest.importorskip("pytest_benchmark")

N = 10**7


@pytest.fixture(scope="module")
def tensors():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(N, generator=generator).requires_grad_(),
            torch.randn(N, generator=generator))


@pytest.mark.parametrize("impl", ["fastloss", "torch"])
def test_torch_mse_forward_backward(benchmark, tensors, impl):
    import fastloss.torch as ft
    function = ft.mse_loss if impl == "fastloss" else torch.nn.functional.mse_loss
    x, y = tensors

    def forward_backward():
        x.grad = None
        loss = function(x, y)
        loss.backward()
        return loss

    for _ in range(2):
        forward_backward()
    benchmark.extra_info.update(impl=impl, op="mse_loss forward+backward", n=N, dtype="float32",
                                bytes_moved=12 * N if impl == "fastloss" else 20 * N)
    loss = benchmark.pedantic(forward_backward, rounds=9, iterations=1)
    expected = torch.mean((x.detach() - y) ** 2, dtype=torch.float64).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    op, arrays = OPS["mse_loss_and_grad"], (x.detach().numpy(), y.numpy())
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.dtype == x.dtype
    assert_result(op, (loss, x.grad), expected_of(op, arrays, exact_mean(op.reference, arrays)),
                  dtype="float32", impl=impl, summation=CPU_SUMMATION.get(impl))
