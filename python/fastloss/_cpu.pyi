"""Type stub of the compiled module fastloss._cpu (csrc/module.cpp, csrc/multiclass_module.cpp,
csrc/training.cpp).

Private: use fastloss.functional, fastloss.nn and fastloss.optim. The loss and sigmoid entries
answer None to arguments they will not run (fastloss._dispatch then validates them).
"""

from typing import Any

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[np.floating[Any]]

class ProbabilityOutOfRange(ValueError): ...
class ClassIndexOutOfRange(ValueError): ...  # args: (row, class index)

LOSS_OPS: tuple[int, ...]
PASS_OUTPUTS: tuple[int, ...]
ROW_OPS: tuple[int, ...]
TARGET_KINDS: tuple[int, ...]
ACTIVATIONS: tuple[int, ...]
multiclass_isa: str

def loss_pass(op: int, outputs: int, mean: bool, input: object, target: object,
              weight: object, pos_weight: object, grad_output: float,
              out: object) -> Any: ...
def sigmoid(input: object, out: object) -> _Array | None: ...
def sigmoid_backward(grad_output: object, output: object, out: object) -> _Array | None: ...
def row_pass(op: int, first: object, second: object, outer: int, classes: int, inner: int,
             out: object) -> _Array | None: ...
def cross_entropy_pass(outputs: int, target_kind: int, mean: bool, input: object,
                       target: object, weight: object, ignore_index: int,
                       label_smoothing: float, grad_output: object, out: object, outer: int,
                       classes: int, inner: int, loss_shape: tuple[int, ...]) -> Any: ...
def activation(op: int, x: object, y: object, out: object) -> _Array | None: ...
def build_info() -> dict[str, Any]: ...
def stream_read(array: npt.NDArray[np.float32]) -> float: ...
def stream_copy(src: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]) -> None: ...
def sgd_step(params: list[Any], momentum_buffers: list[_Array] | None, lr: float,
             momentum: float, dampening: float, weight_decay: float, nesterov: bool,
             first_step: bool) -> None: ...
def dense_bias_relu(output: _Array, bias: _Array | None, relu: bool) -> None: ...
def dense_bias_relu_backward(grad_output: _Array, output: _Array | None,
                             grad_input: _Array | None, bias_grad: _Array | None) -> _Array: ...
def dense_narrow_forward(input: _Array, weight: _Array, bias: _Array | None, output: _Array,
                         relu: bool) -> None: ...
def dense_narrow_backward(grad_output: _Array, input: _Array, weight: _Array,
                          weight_grad: _Array, grad_input: _Array | None) -> None: ...

dense_narrow_max_outputs: int
