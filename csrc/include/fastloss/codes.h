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

}  // namespace fastloss
