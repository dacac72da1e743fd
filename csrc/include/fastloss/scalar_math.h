// Branch-free double-precision exp and log, shared by the C++ kernels and the CUDA kernels.
//
// Why not libm: a call to ::exp or ::log inside a loop stops the compiler from vectorising it,
// and that is what holds NumPy, PyTorch and Numba at ~1 GB/s on binary cross-entropy. These
// versions use only arithmetic, bit casts and selects, so a plain loop over them vectorises
// (AVX2: 4 lanes) without -ffast-math. Every float32 loss is evaluated in double, so these
// need to be accurate to a few double ulps, not correctly rounded; tests/test_scalar_math.py
// measures them against NumPy over the whole range.
//
// Header rules: NVRTC has no standard headers, so nothing here includes one.
#pragma once

// Vectorisation rule for everything here: selects only, each with its comparison written out
// (no named bool, no `a || b`): GCC 12 gives a reused bool its own byte-vector type and then
// fails to vectorise a loop that combines two of these functions.
//
// FASTLOSS_HD marks every function here. `static` gives each translation unit its own copy, so
// the AVX2 build of a function can never be merged by the linker into the baseline build of
// another unit (an ODR trap across ISAs); inside a struct it makes a static member.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FASTLOSS_DEVICE_COMPILER 1
#define FASTLOSS_HD static __host__ __device__ __forceinline__
#else
#define FASTLOSS_DEVICE_COMPILER 0
#define FASTLOSS_HD static inline __attribute__((always_inline))
#endif

namespace fastloss {
namespace math {

typedef unsigned long long bits64;
typedef unsigned int bits32;

FASTLOSS_HD double from_bits(bits64 b) {
#if FASTLOSS_DEVICE_COMPILER
  return __longlong_as_double(static_cast<long long>(b));
#else
  double d;
  __builtin_memcpy(&d, &b, sizeof d);
  return d;
#endif
}

FASTLOSS_HD bits64 to_bits(double d) {
#if FASTLOSS_DEVICE_COMPILER
  return static_cast<bits64>(__double_as_longlong(d));
#else
  bits64 b;
  __builtin_memcpy(&b, &d, sizeof b);
  return b;
#endif
}

FASTLOSS_HD float from_bits(bits32 b) {
#if FASTLOSS_DEVICE_COMPILER
  return __int_as_float(static_cast<int>(b));
#else
  float f;
  __builtin_memcpy(&f, &b, sizeof f);
  return f;
#endif
}

FASTLOSS_HD bits32 to_bits(float f) {
#if FASTLOSS_DEVICE_COMPILER
  return static_cast<bits32>(__float_as_int(f));
#else
  bits32 b;
  __builtin_memcpy(&b, &f, sizeof b);
  return b;
#endif
}

FASTLOSS_HD double infinity() { return from_bits(0x7ff0000000000000ull); }
FASTLOSS_HD double quiet_nan() { return from_bits(0x7ff8000000000000ull); }

// exp(x). Reduction x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2, so n*ln2_hi is
// exact), then the degree-13 Taylor polynomial, whose truncation error on that interval is
// 4e-18 relative. The scale 2^n is built from the bits of the rounding constant, so no
// double<->int64 conversion is needed (AVX2 has none). Subnormal results are kept (rounded
// once), results above DBL_MAX are +inf; NaN propagates.
FASTLOSS_HD double exp(double x) {
  const double round_shift = 0x1.8p52;  // adding it rounds to an integer held in the low bits
  const double log2e = 0x1.71547652b82fep0;
  const double ln2_hi = 0x1.62e42fee00000p-1;
  const double ln2_lo = 0x1.a39ef35793c76p-33;
  const double shifted = x * log2e + round_shift;
  const double n = shifted - round_shift;
  double r = x - n * ln2_hi;
  r = r - n * ln2_lo;
  // Estrin's scheme: the same polynomial as Horner's but 4 multiply-adds deep instead of 13,
  // so the vectorised loop is not bound by FMA latency (Horner's measured 3x slower here).
  const double r2 = r * r;
  const double r4 = r2 * r2;
  const double r8 = r4 * r4;
  const double c01 = 1.0 + r;
  const double c23 = 0.5 + r * 0.16666666666666666;                       // 1/2!, 1/3!
  const double c45 = 0.041666666666666664 + r * 0.008333333333333333;     // 1/4!, 1/5!
  const double c67 = 0.001388888888888889 + r * 0.0001984126984126984;    // 1/6!, 1/7!
  const double c89 = 2.48015873015873e-05 + r * 2.7557319223985893e-06;   // 1/8!, 1/9!
  const double c1011 = 2.755731922398589e-07 + r * 2.505210838544172e-08; // 1/10!, 1/11!
  const double c1213 = 2.08767569878681e-09 + r * 1.6059043836821613e-10; // 1/12!, 1/13!
  const double c0_3 = c01 + r2 * c23;
  const double c4_7 = c45 + r2 * c67;
  const double c8_11 = c89 + r2 * c1011;
  const double c0_7 = c0_3 + r4 * c4_7;
  const double c8_13 = c8_11 + r4 * c1213;
  const double p = c0_7 + r8 * c8_13;
  // 2^(n-1) then *2: keeps the biased exponent in [1, 2046] for n in [-1021, 1024]. Below
  // x = -708 the scale would leave that range: it is taken as 2^(n + 1000) and then 2^-1000,
  // so a subnormal result is rounded once instead of flushed (adding 1000 to `shifted` is exact
  // and adds it to n).
  const double deep = x < -708.0 ? 1000.0 : 0.0;
  const double half_scale = from_bits((to_bits(shifted + deep) + 1022ull) << 52);
  double result = p * half_scale * 2.0;
  result = x < -708.0 ? result * 0x1p-1000 : result;
  result = x > 709.782712893384 ? infinity() : result;
  result = x < -746.0 ? 0.0 : result;  // below half the smallest subnormal, e^-745.13
  return result;
}

// log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1], fdlibm's method: s = f / (2 + f),
// log(1 + f) = f - f^2/2 + s*(f^2/2 + R(s^2)) with fdlibm's minimax R (error < 1 ulp).
FASTLOSS_HD double log1p_reduced(double f) {
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double w = z * z;
  const double t1 = w * (3.999999999940941908e-01 +
                         w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const double t2 = z * (6.666666666666735130e-01 +
                         w * (2.857142874366239149e-01 +
                              w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  const double half_f_squared = 0.5 * f * f;
  return f - (half_f_squared - s * (half_f_squared + t1 + t2));
}

// log(x): x = 2^k * m with m in [sqrt(1/2), sqrt(2)], then log1p_reduced(m - 1) + k*ln2.
// The exponent k is read from the bits as a double (magic-number trick), avoiding int64
// conversions. Subnormals are rescaled first; 0 -> -inf, x < 0 -> NaN, +inf -> +inf.
FASTLOSS_HD double log(double x) {
  const double scaled = x < 0x1p-1022 ? x * 0x1p54 : x;  // subnormals (0 and x < 0: below)
  const bits64 bits = to_bits(scaled);
  double k = from_bits(0x4330000000000000ull | (bits >> 52)) - (0x1p52 + 1023.0);
  k = x < 0x1p-1022 ? k - 54.0 : k;
  double m = from_bits((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  k = m > 0x1.6a09e667f3bcdp0 ? k + 1.0 : k;
  m = m > 0x1.6a09e667f3bcdp0 ? m * 0.5 : m;
  double result = k * 0.693147180559945309 + log1p_reduced(m - 1.0);
  result = x == infinity() ? x : result;
  result = x == 0.0 ? -infinity() : result;
  result = x < 0.0 ? quiet_nan() : result;
  result = x != x ? x : result;
  return result;
}

// log(u) for u in [1, 2] (or NaN, which propagates): no bit manipulation, no special cases.
FASTLOSS_HD double log_one_to_two(double u) {
  const double k = u > 0x1.6a09e667f3bcdp0 ? 1.0 : 0.0;
  const double m = u > 0x1.6a09e667f3bcdp0 ? u * 0.5 : u;
  return k * 0.693147180559945309 + log1p_reduced(m - 1.0);
}

// ---- float versions, for float32 inputs ----------------------------------------------------
// Twice the lanes of the double versions and a cheaper divider: on the 128-bit FP units of the
// machines we measure on, double versions left binary cross-entropy compute-bound at ~1 GB/s.
// Each is within about 1 float ulp; summed over many elements such errors average out (the
// tests check float32 sums against the exact value at 1e6 and 1e7 elements).

// exp(x) for x <= 0 (the only range the logistic terms need): Cody-Waite reduction with
// musl's float split of ln2, degree-7 Taylor polynomial (truncation 5e-9 relative, 0.08 ulp)
// by Estrin. Results below 2^-126 flush to 0 (x < -87); NaN propagates.
FASTLOSS_HD float exp_nonpositive(float x) {
  const float round_shift = 0x1.8p23f;
  const float shifted = x * 1.44269504f + round_shift;
  const float n = shifted - round_shift;
  float r = x - n * 6.9314575195e-01f;
  r = r - n * 1.4286067653e-06f;
  const float r2 = r * r;
  const float r4 = r2 * r2;
  const float c01 = 1.0f + r;
  const float c23 = 0.5f + r * 0.16666667f;
  const float c45 = 0.041666668f + r * 0.008333334f;
  const float c67 = 0.0013888889f + r * 0.0001984127f;
  const float p = (c01 + r2 * c23) + r4 * (c45 + r2 * c67);
  const float scale = from_bits((to_bits(shifted) + 127u) << 23);  // 2^n, n in [-126, 0]
  float result = p * scale;
  result = x < -87.0f ? 0.0f : result;
  return result;
}

// log(2^k * (1 + f)) for f in [sqrt(1/2) - 1, sqrt(2) - 1], musl's logf: s = f / (2 + f),
// minimax R(s^2), ln2 split so k*ln2_hi is exact (< 1 ulp overall).
FASTLOSS_HD float log_reduced(float k, float f) {
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float t1 = w * (0.40000972152f + w * 0.24279078841f);
  const float t2 = z * (0.66666662693f + w * 0.28498786688f);
  const float half_f_squared = 0.5f * f * f;
  return s * (half_f_squared + t1 + t2) + k * 9.0580006145e-06f - half_f_squared + f +
         k * 6.9313812256e-01f;
}

// log(x) of a float: 0 -> -inf, x < 0 -> NaN, +inf -> +inf, NaN propagates.
FASTLOSS_HD float log(float x) {
  const float scaled = x < 0x1p-126f ? x * 0x1p23f : x;  // subnormals
  const bits32 bits = to_bits(scaled);
  float k = from_bits(0x4b000000u | (bits >> 23)) - (0x1p23f + 127.0f);
  k = x < 0x1p-126f ? k - 23.0f : k;
  float m = from_bits((bits & 0x007fffffu) | 0x3f800000u);
  k = m > 1.41421356f ? k + 1.0f : k;
  m = m > 1.41421356f ? m * 0.5f : m;
  float result = log_reduced(k, m - 1.0f);
  const float inf = from_bits(0x7f800000u);
  result = x == 0.0f ? -inf : result;
  result = x == inf ? inf : result;
  result = x < 0.0f ? from_bits(0x7fc00000u) : result;
  result = x != x ? x : result;
  return result;
}

// log(u) for u in [1, 2] (or NaN, which propagates): no bit manipulation, no special cases.
FASTLOSS_HD float log_one_to_two(float u) {
  const float k = u > 1.41421356f ? 1.0f : 0.0f;
  const float m = u > 1.41421356f ? u * 0.5f : u;
  return log_reduced(k, m - 1.0f);
}

}  // namespace math
}  // namespace fastloss
