// tanh and relu with their backward passes, per element, written once for the C++ kernels
// (csrc/activations.cpp) and the CUDA kernels (cuda/multiclass.cu). The backward passes take
// the forward output, like PyTorch's tanh_backward (and threshold_backward, whose test
// output <= 0 is input <= 0 for relu). tanh is evaluated in double (float32 results then
// correctly rounded but for rare ties), from the branch-free exp of scalar_math.h, so the loops
// vectorise without libm.
// (Header rules as for scalar_math.h: NVRTC compiles it too, so it includes no standard header.)
#pragma once

#include "fastloss/scalar_math.h"

namespace fastloss {
namespace activations {

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in [0, 1]: no overflow for any x,
// +-1 exactly at saturation. Below |x| = 2^-8, 1 - e would cancel (up to 8 bits lost): there
// the odd series x - x^3/3 + 2x^5/15 - 17x^7/315 is used, its truncation below 2^-60.
FASTLOSS_HD double tanh(double x) {
  const double a = x < 0.0 ? -x : x;
  const double e = math::exp(-2.0 * a);
  const double large = (1.0 - e) / (1.0 + e);
  const double x2 = x * x;
  const double series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))));
  const double signed_large = x < 0.0 ? -large : large;
  return a < 0x1p-8 ? series : signed_large;  // NaN: a < 2^-8 is false, large is NaN
}

FASTLOSS_HD double tanh_backward(double grad_output, double y) { return grad_output * (1.0 - y * y); }

// 0 where x < 0, else x: NaN and -0.0 pass through, as in PyTorch.
template <class T>
FASTLOSS_HD T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// grad_output where the output is positive (or NaN), else 0.
template <class T>
FASTLOSS_HD T relu_backward(T grad_output, T y) {
  return y <= T(0) ? T(0) : grad_output;
}

}  // namespace activations
}  // namespace fastloss
