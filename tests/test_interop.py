"""Arrays of other libraries through the array protocols (fastloss._interop): taken without a
copy, results equal to NumPy's, ``out=`` written in place; what cannot be taken is a
TypeError."""

from __future__ import annotations

import numpy as np
import pytest

import fastloss
from _helpers import assert_same_bits


class _ArrayInterfaceOnly:
    """A foreign array that exposes its memory only through ``__array_interface__``."""

    def __init__(self, array):
        self._array = array
        self.__array_interface__ = array.__array_interface__


class _DLPackOnly:
    """A foreign array that exposes its memory only through DLPack."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class _OtherDevice(_DLPackOnly):
    def __dlpack_device__(self):
        return (4, 0)  # kDLOpenCL


WRAPPERS = {"__array_interface__": _ArrayInterfaceOnly, "dlpack": _DLPackOnly}


def _data(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((64, 5)).astype(dtype),
            (rng.random((64, 5)) < 0.5).astype(dtype))


@pytest.mark.parametrize("wrap", list(WRAPPERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_foreign_arrays_give_numpys_bits(wrap, dtype):
    Wrapper = WRAPPERS[wrap]
    x, y = _data(dtype)
    weight = np.linspace(0.5, 2.0, 5).astype(dtype)
    assert_same_bits(fastloss.mse_loss(Wrapper(x), Wrapper(y)), fastloss.mse_loss(x, y))
    assert_same_bits(
        fastloss.binary_cross_entropy_with_logits(Wrapper(x), Wrapper(y), weight=Wrapper(weight),
                                                  pos_weight=Wrapper(weight)),
        fastloss.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=weight))
    assert_same_bits(fastloss.sigmoid(Wrapper(x)), fastloss.sigmoid(x))
    s = fastloss.sigmoid(x)
    assert_same_bits(fastloss.sigmoid_backward(Wrapper(y), Wrapper(s)),
                     fastloss.sigmoid_backward(y, s))


@pytest.mark.parametrize("wrap", list(WRAPPERS))
def test_foreign_out_is_written_in_place(wrap):
    x, y = _data()
    buffer = np.zeros_like(x)
    loss, grad = fastloss.mse_loss_and_grad(x, y, out=WRAPPERS[wrap](buffer))
    assert np.shares_memory(grad, buffer)
    assert_same_bits(buffer, fastloss.mse_loss_grad(x, y))
    fastloss.sigmoid(x, out=WRAPPERS[wrap](buffer))
    assert_same_bits(buffer, fastloss.sigmoid(x))


def test_foreign_input_is_not_copied():
    x, y = _data()
    grad = fastloss.mse_loss_grad(_DLPackOnly(x), y, out=None)
    assert grad.shape == x.shape
    in_place = fastloss.sigmoid(_ArrayInterfaceOnly(x), out=x)
    assert in_place is x


def test_torch_cpu_tensors_are_taken_without_a_copy():
    torch = pytest.importorskip("torch")
    x, y = _data()
    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y)
    assert_same_bits(fastloss.binary_cross_entropy_with_logits(tx, ty),
                     fastloss.binary_cross_entropy_with_logits(x, y))
    fastloss.sigmoid(tx, out=tx)  # in place in the tensor's memory
    assert_same_bits(tx.numpy(), fastloss.sigmoid(x))


def test_what_cannot_be_taken_is_a_type_error():
    x, y = _data()
    with pytest.raises(TypeError, match=r"^input \(.*_OtherDevice\) is on DLPack device type 4"):
        fastloss.mse_loss(_OtherDevice(x), y)
    with pytest.raises(TypeError, match="^target must be a numpy.ndarray"):
        fastloss.mse_loss(x, memoryview(y))


def test_a_foreign_target_beside_a_numpy_input():
    x, y = _data()
    assert_same_bits(fastloss.mse_loss(x, _DLPackOnly(y)), fastloss.mse_loss(x, y))
