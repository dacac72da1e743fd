// The 16-bit storage formats (IEEE binary16 "float16" and bfloat16) as seen from the double
// lanes of fastloss/lanes.h: the conversions from their bits to double (exact: both are
// subsets of double) and from double to their bits, rounded once, to nearest even.
//
// Rounding a double to float32 first and then to the 16-bit format would round twice (a value
// just above a half-way point of the 16-bit format can round to float32 onto that point, then
// to even: the wrong neighbour). So the rounding here goes from the double directly, with
// one floating-point add that the FPU rounds at the format's quantum:
//   M = 2^(e + 52 - p) for |d| in [2^e, 2^(e+1)) (p the format's mantissa bits), or the
//   constant 2^(q + 52) below the smallest normal (q the exponent of the smallest subnormal);
//   s = |d| + M lies in M's binade, whose ulp is the format's quantum at |d|, so the add
//   rounds |d| to nearest even in that quantum, and bits(s) - bits(M) counts the quanta: the
//   16-bit value's significand (with its implicit bit for normals), to which the exponent
//   field is added. A carry into the next binade of the format comes out right by itself.
// Overflow (|d| at or above the half-way point above the largest finite value) gives inf,
// NaN gives a quiet NaN of the same sign (its payload is not kept).
//
// Written over the lane types (a GCC vector of doubles, or a plain double: then the masks are
// bools and `mask ? a : b` is the scalar conditional). Header rules as for lanes.h: no
// standard headers (NVRTC compiles the shared headers: the CUDA kernels' Float16,
// fastloss/device_half.h, rounds with round_to_bits too).
#pragma once

#include "fastloss/lanes.h"

namespace fastloss {
namespace half {

// A format: kMantissa explicit mantissa bits, kBias the exponent bias (the smallest normal is
// 2^(1 - kBias)), kOverflow the smallest magnitude that rounds to inf, kInf and kQuiet the bits
// of inf and of its quiet NaN.
struct Float16Format {
  static constexpr int kMantissa = 10;
  static constexpr int kBias = 15;
  static constexpr double kSmallestNormal = 0x1p-14;
  static constexpr double kOverflow = 65520.0;  // 65504 + half its ulp of 32: the tie goes to even, inf
  static constexpr unsigned long long kInf = 0x7c00;
  static constexpr unsigned long long kQuiet = 0x7e00;
};

struct BFloat16Format {
  static constexpr int kMantissa = 7;
  static constexpr int kBias = 127;
  static constexpr double kSmallestNormal = 0x1p-126;
  static constexpr double kOverflow = 0x1.ffp127;  // (2 - 2^-7) * 2^127 + half its ulp
  static constexpr unsigned long long kInf = 0x7f80;
  static constexpr unsigned long long kQuiet = 0x7fc0;
};

// The bits of d rounded to format F (one 16-bit value in the low bits of each 64-bit lane).
template <class F, class V>
FASTLOSS_HD typename lanes::Traits<V>::Bits round_to_bits(V d) {
  typedef typename lanes::Traits<V>::Bits B;
  constexpr int kDrop = 52 - F::kMantissa;                  // the double's mantissa bits dropped
  constexpr int kQuantumExponent = 1 - F::kBias - F::kMantissa;  // the smallest subnormal's
  const B bits = lanes::to_bits(d);
  const B sign = (bits >> 48) & 0x8000ull;
  const B magnitude_bits = bits & 0x7fffffffffffffffull;
  const V magnitude = lanes::bits_as<V>(magnitude_bits);
  const auto subnormal = magnitude < F::kSmallestNormal;
  const B exponent_field = magnitude_bits & 0x7ff0000000000000ull;
  const B m_bits = subnormal ? lanes::splat_bits<V>(static_cast<unsigned long long>(1023 + kQuantumExponent + 52) << 52)
                             : exponent_field + (static_cast<unsigned long long>(kDrop) << 52);
  const V rounded = magnitude + lanes::bits_as<V>(m_bits);  // the rounding, to nearest even
  const B quanta = lanes::to_bits(rounded) - m_bits;
  // a normal's exponent field less one (the implicit bit among the quanta adds it back)
  const B exponent = subnormal ? B{} : ((exponent_field >> 52) - static_cast<unsigned long long>(1023 - F::kBias + 1))
                                           << F::kMantissa;
  B result = quanta + exponent;
  result = magnitude >= F::kOverflow ? lanes::splat_bits<V>(F::kInf) : result;
  result = d != d ? lanes::splat_bits<V>(F::kQuiet) : result;
  return result | sign;
}

// The double value of float16 bits h (exact). Scalar: the baseline build widens two lanes.
FASTLOSS_HD double float16_to_double(unsigned h) {
  const unsigned long long sign = static_cast<unsigned long long>(h & 0x8000u) << 48;
  const unsigned exponent = (h >> 10) & 0x1fu;
  const unsigned long long mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) {  // inf, NaN (the payload kept in the top mantissa bits)
    return lanes::double_from_bits(sign | 0x7ff0000000000000ull | (mantissa << 42));
  }
#ifdef FASTLOSS_PLANTED_FAULT_HALF_SUBNORMALS_FLUSHED
  if (exponent == 0) return lanes::double_from_bits(sign);
#endif
  if (exponent == 0) {  // zero, subnormal: mantissa * 2^-24, exact
    const double magnitude = static_cast<double>(mantissa) * 0x1p-24;
    return lanes::double_from_bits(sign | lanes::to_bits(magnitude));
  }
  return lanes::double_from_bits(sign | (static_cast<unsigned long long>(exponent + 1023 - 15) << 52) |
                                 (mantissa << 42));
}

// The double value of bfloat16 bits h: they are the top half of a float32's.
FASTLOSS_HD double bfloat16_to_double(unsigned h) {
#if FASTLOSS_DEVICE_COMPILER
  return static_cast<double>(__uint_as_float(h << 16));
#else
  const unsigned bits = h << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return static_cast<double>(f);
#endif
}

}  // namespace half
}  // namespace fastloss
