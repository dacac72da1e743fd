// float16 storage in the CUDA kernels (cuda/losses.cu and cuda/multiclass.cu): Float16 holds
// the 16 bits; it widens them exactly to double and rounds a double to them once, to nearest
// even (fastloss/half.h's round_to_bits), as the CPU kernels do (csrc/storage.h), never
// through float32 (two roundings). Not CUDA's __half: its header, cuda_fp16.h, is not one
// NVRTC has without CUDA's include directory, and the kernels include no header but ours.
//
// Both conversions are explicit, so a kernel reads a value as static_cast<double>(a[i]) and
// stores one as static_cast<T>(d) for every storage type T alike.
//
// Header rules as for lanes.h: no standard headers. Float16 itself is device code only (the
// C++ build has its own, kernels.h); widen_float16 is FASTLOSS_HD so that a host test can
// compare it with half::float16_to_double on every bit pattern.
#pragma once

#include "fastloss/half.h"

namespace fastloss {
namespace gpu {

// The double value of float16 bits h: the value half::float16_to_double gives (the same bits,
// a NaN's sign and payload too), without its branches. half.h's early returns, inlined at
// every load of the multi-class kernels, made ptxas spill registers in four float16
// cross-entropy kernels (sm_90, NVRTC 12.9); these selects spill in none.
// The double's low word is 0 for every float16, so the high word is built in 32 bits: the
// float16's exponent and mantissa fields shifted into place, plus the difference of the
// biases (1023 - 15), or for inf and NaN what makes the exponent field 0x7ff. A subnormal
// m 2^-24 is built as the normal 2^-14 (1 + m / 1024) and 2^-14 subtracted (exact: Sterbenz);
// +-0 comes out as 0 the same way. The sign bit is put back last.
FASTLOSS_HD double widen_float16(unsigned h) {
  const unsigned exponent = h & 0x7c00u;
  const unsigned rebias = exponent == 0 ? (1023u - 14u) << 20
                                        : (exponent == 0x7c00u ? (2047u - 31u) << 20 : (1023u - 15u) << 20);
  const unsigned high = ((h & 0x7fffu) << 10) + rebias;
  const double shifted = lanes::double_from_bits(static_cast<unsigned long long>(high) << 32);
  const double magnitude = exponent == 0 ? shifted - 0x1p-14 : shifted;
  return lanes::double_from_bits(lanes::to_bits(magnitude) | (static_cast<unsigned long long>(h & 0x8000u) << 48));
}

#if FASTLOSS_DEVICE_COMPILER
struct Float16 {
  unsigned short bits;
  Float16() = default;
  __device__ explicit Float16(double d)
      : bits(static_cast<unsigned short>(half::round_to_bits<half::Float16Format>(d))) {}
  __device__ explicit operator double() const { return widen_float16(bits); }
};
#endif

}  // namespace gpu
}  // namespace fastloss
