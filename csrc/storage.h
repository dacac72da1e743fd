// One value of a storage type (float, double, Float16, BFloat16: kernels.h) to and from double,
// for the kernels that walk their arrays element by element (the row kernels of multiclass.cpp,
// activations.cpp); kernels.cpp converts whole vectors instead. The 16-bit formats widen
// exactly and are rounded once from the double, to nearest even (fastloss/half.h), never
// through float32 (two roundings). MathOf names the grade of the math a storage type gets:
// the 16-bit formats compute as float32 does (~1e-9 relative, far below their ulp).
#pragma once

#include <cstdint>

#include "fastloss/half.h"
#include "kernels.h"

namespace fastloss {

template <class T> struct MathOf { typedef T type; };
template <> struct MathOf<Float16> { typedef float type; };
template <> struct MathOf<BFloat16> { typedef float type; };

inline double to_double(float v) { return static_cast<double>(v); }
inline double to_double(double v) { return v; }
inline double to_double(Float16 v) { return half::float16_to_double(v.bits); }
inline double to_double(BFloat16 v) { return half::bfloat16_to_double(v.bits); }

template <class T> T from_double(double d);
template <> inline float from_double<float>(double d) { return static_cast<float>(d); }
template <> inline double from_double<double>(double d) { return d; }
template <> inline Float16 from_double<Float16>(double d) {
#ifdef FASTLOSS_PLANTED_FAULT_ROW_HALF_VIA_FLOAT32
  volatile float narrowed = static_cast<float>(d);
  d = narrowed;
#endif
  return Float16{static_cast<std::uint16_t>(half::round_to_bits<half::Float16Format>(d))};
}
template <> inline BFloat16 from_double<BFloat16>(double d) {
  return BFloat16{static_cast<std::uint16_t>(half::round_to_bits<half::BFloat16Format>(d))};
}

}  // namespace fastloss
