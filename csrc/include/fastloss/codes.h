// The codes that cross from Python into the kernels: fastloss/_codes.py passes them, the C++
// module (fastloss._cpu) and the CUDA kernels (as template arguments) take them.
// tests/test_codes.py checks that Python, the compiled module and this header agree.
// (Header rules as for scalar_math.h: NVRTC compiles it too, so it includes nothing.)
#pragma once

namespace fastloss {

enum class LossOp : int { SquaredError = 0, BinaryCrossEntropy = 1, BinaryCrossEntropyWithLogits = 2 };

// What one pass over the elements produces.
enum class PassOutputs : int {
  Sum = 0,                 // the (weighted) sum of per-element losses
  SumAndGrad = 1,          // that sum, and the gradient
  Elementwise = 2,         // per-element losses
  ElementwiseAndGrad = 3,  // both arrays
  Grad = 4,                // the gradient only
};

// A pass over the rows of a (outer, classes, inner) array along its class axis.
enum class RowOp : int {
  Softmax = 0,
  LogSoftmax = 1,
  SoftmaxBackward = 2,     // from grad_output and softmax's output
  LogSoftmaxBackward = 3,  // from grad_output and log_softmax's output
};

// What the target of cross_entropy holds (PassOutputs says what the pass produces).
enum class TargetKind : int {
  ClassIndex64 = 0,    // int64 class indices, one per row
  ClassIndex32 = 1,    // int32 class indices
  Probabilities = 2,   // class probabilities, the input's shape
};

// Element-wise activations and their backward passes (from the forward output, like PyTorch).
enum class Activation : int { Tanh = 0, TanhBackward = 1, Relu = 2, ReluBackward = 3 };

}  // namespace fastloss
