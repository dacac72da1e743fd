// Branch-free exp and log over lanes (fastloss/lanes.h: a double on the GPU, a vector of
// doubles on the CPU), shared by the C++ kernels and the CUDA kernels.
//
// Why not libm: a call to ::exp or ::log is one element at a time, and that is what holds
// NumPy, PyTorch and Numba at ~1 GB/s on binary cross-entropy. These use only arithmetic, bit
// casts and selects, so they run on whole registers without -ffast-math.
//
// Two grades, both in double:
// - for float64 inputs, a few double ulps (exp, log, log_one_to_two);
// - for float32 inputs, ~1e-9 relative (exp_neg_for_float32, log1p_unit_for_float32,
//   log_for_float32): a float32 result rounded from them is within 0.5 ulp of the exact value
//   but for about 1e-9 of an ulp (so a mean of 2^24 equal terms is within 1 ulp), at a third of
//   the polynomial degree and with no division.
// tests/test_scalar_math.py measures the first grade against NumPy, tests/test_term_accuracy.py
// the second, over the whole range.
//
// Header rules: NVRTC has no standard headers, so nothing here includes one.
#pragma once

#include "fastloss/lanes.h"

namespace fastloss {
namespace math {

typedef unsigned long long bits64;

FASTLOSS_HD double from_bits(bits64 b) { return lanes::double_from_bits(b); }
FASTLOSS_HD bits64 to_bits(double d) { return lanes::to_bits(d); }

FASTLOSS_HD double infinity() { return from_bits(0x7ff0000000000000ull); }
FASTLOSS_HD double quiet_nan() { return from_bits(0x7ff8000000000000ull); }

using lanes::bits_as;
using lanes::select;
using lanes::splat;
using lanes::splat_bits;

// ---- float64 grade -------------------------------------------------------------------------

// exp(x). Reduction x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2, so n*ln2_hi is
// exact), then the degree-13 Taylor polynomial, whose truncation error on that interval is
// 4e-18 relative. The scale 2^n is built from the bits of the rounding constant, so no
// double<->int64 conversion is needed (AVX2 has none). Subnormal results are kept (rounded
// once), results above DBL_MAX are +inf; NaN propagates.
template <class V>
FASTLOSS_HD V exp(V x) {
  const double round_shift = 0x1.8p52;  // adding it rounds to an integer held in the low bits
  const double log2e = 0x1.71547652b82fep0;
  const double ln2_hi = 0x1.62e42fee00000p-1;
  const double ln2_lo = 0x1.a39ef35793c76p-33;
  const V shifted = x * log2e + round_shift;
  const V n = shifted - round_shift;
  V r = x - n * ln2_hi;
  r = r - n * ln2_lo;
  // Estrin's scheme: the same polynomial as Horner's but 4 multiply-adds deep instead of 13,
  // so the vectorised loop is not bound by FMA latency (Horner's measured 3x slower here).
  const V r2 = r * r;
  const V r4 = r2 * r2;
  const V r8 = r4 * r4;
  const V c01 = 1.0 + r;
  const V c23 = 0.5 + r * 0.16666666666666666;                       // 1/2!, 1/3!
  const V c45 = 0.041666666666666664 + r * 0.008333333333333333;     // 1/4!, 1/5!
  const V c67 = 0.001388888888888889 + r * 0.0001984126984126984;    // 1/6!, 1/7!
  const V c89 = 2.48015873015873e-05 + r * 2.7557319223985893e-06;   // 1/8!, 1/9!
  const V c1011 = 2.755731922398589e-07 + r * 2.505210838544172e-08; // 1/10!, 1/11!
  const V c1213 = 2.08767569878681e-09 + r * 1.6059043836821613e-10; // 1/12!, 1/13!
  const V c0_3 = c01 + r2 * c23;
  const V c4_7 = c45 + r2 * c67;
  const V c8_11 = c89 + r2 * c1011;
  const V c0_7 = c0_3 + r4 * c4_7;
  const V c8_13 = c8_11 + r4 * c1213;
  const V p = c0_7 + r8 * c8_13;
  // 2^(n-1) then *2: keeps the biased exponent in [1, 2046] for n in [-1021, 1024]. Below
  // x = -708 the scale would leave that range: it is taken as 2^(n + 1000) and then 2^-1000,
  // so a subnormal result is rounded once instead of flushed (adding 1000 to `shifted` is exact
  // and adds it to n).
  const V deep = select(x < -708.0, splat<V>(1000.0), splat<V>(0.0));
  const V half_scale = bits_as<V>((lanes::to_bits(shifted + deep) + 1022ull) << 52);
  V result = p * half_scale * 2.0;
  result = select(x < -708.0, result * 0x1p-1000, result);
  result = select(x > 709.782712893384, splat<V>(infinity()), result);
  result = select(x < -746.0, splat<V>(0.0), result);  // below half the smallest subnormal, e^-745.13
  return result;
}

// log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1], fdlibm's method: s = f / (2 + f),
// log(1 + f) = f - f^2/2 + s*(f^2/2 + R(s^2)) with fdlibm's minimax R (error < 1 ulp).
template <class V>
FASTLOSS_HD V log1p_reduced(V f) {
  const V s = f / (2.0 + f);
  const V z = s * s;
  const V w = z * z;
  const V t1 = w * (3.999999999940941908e-01 +
                    w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
  const V t2 = z * (6.666666666666735130e-01 +
                    w * (2.857142874366239149e-01 +
                         w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
  const V half_f_squared = 0.5 * f * f;
  return f - (half_f_squared - s * (half_f_squared + t1 + t2));
}

// log(x): x = 2^k * m with m in [sqrt(1/2), sqrt(2)], then log1p_reduced(m - 1) + k*ln2.
// The exponent k is read from the bits as a double (magic-number trick), avoiding int64
// conversions. Subnormals are rescaled first; 0 -> -inf, x < 0 -> NaN, +inf -> +inf.
template <class V>
FASTLOSS_HD V log(V x) {
  const V scaled = select(x < 0x1p-1022, x * 0x1p54, x);  // subnormals (0 and x < 0: below)
  const auto bits = lanes::to_bits(scaled);
  V k = bits_as<V>(splat_bits<V>(0x4330000000000000ull) | (bits >> 52)) - (0x1p52 + 1023.0);
  k = select(x < 0x1p-1022, k - 54.0, k);
  V m = bits_as<V>((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  k = select(m > 0x1.6a09e667f3bcdp0, k + 1.0, k);
  m = select(m > 0x1.6a09e667f3bcdp0, m * 0.5, m);
  V result = k * 0.693147180559945309 + log1p_reduced(m - 1.0);
  result = select(x == infinity(), x, result);
  result = select(x == 0.0, splat<V>(-infinity()), result);
  result = select(x < 0.0, splat<V>(quiet_nan()), result);
  result = select(x != x, x, result);
  return result;
}

// log(u) for u in [1, 2] (or NaN, which propagates): no bit manipulation, no special cases.
template <class V>
FASTLOSS_HD V log_one_to_two(V u) {
  const V k = select(u > 0x1.6a09e667f3bcdp0, splat<V>(1.0), splat<V>(0.0));
  const V m = select(u > 0x1.6a09e667f3bcdp0, u * 0.5, u);
  return k * 0.693147180559945309 + log1p_reduced(m - 1.0);
}

// ---- float32 grade ---------------------------------------------------------------------------
// Minimax polynomials (Remez, relative error), evaluated by Estrin's scheme: a third of the
// dependency depth of Horner's rule for two or three more operations. These loops are bound by
// how far the out-of-order core can overlap elements, and Horner's 10-deep chains left the FMA
// pipes half idle (bench/NOTES.md).

// c0 + c1 x + ... + c7 x^7, given x^2 and x^4.
template <class V>
FASTLOSS_HD V estrin7(V x, V x2, V x4, double c0, double c1, double c2, double c3, double c4,
                      double c5, double c6, double c7) {
  const V low = (c0 + c1 * x) + x2 * (c2 + c3 * x);
  const V high = (c4 + c5 * x) + x2 * (c6 + c7 * x);
  return low + x4 * high;
}

// exp(-t) for t <= 120 within 4.1e-11 relative (NaN propagates). t is clamped at 120:
// e^-120 = 7.7e-53, and everything a float32 kernel computes from a smaller value rounds to
// the same float32 (0 for a sigmoid, no change to a loss of 1 + e or e*c); the callers keep
// t >= -120. Reduction t = n*ln2 - r, |r| <= ln2/2, with ln2 rounded once: |n| <= 174, so the
// product's error is below 2e-14 absolute. Then degree 7 for e^r, times 2^-n.
template <class V>
FASTLOSS_HD V exp_neg_for_float32(V t) {
  t = select(t > 120.0, splat<V>(120.0), t);
  const double round_shift = 0x1.8p52;
  const V shifted = round_shift - t * 0x1.71547652b82fep0;  // low bits: -round(t log2(e))
  const V minus_n = shifted - round_shift;
  const V r = -t - minus_n * 0x1.62e42fefa39efp-1;  // n ln2 - t, in [-ln2/2, ln2/2]
  const V r2 = r * r;
  const V p = estrin7(r, r2, r2 * r2, 0x1.ffffffffabbcep-1, 0x1.000000010b490p+0, 0x1.00000059cbbebp-1,
                      0x1.555553440456cp-3, 0x1.55546871a0af4p-5, 0x1.1112fa2a3035fp-7,
                      0x1.6da4ac7ac6b53p-10, 0x1.9eb726c71680cp-13);
  return lanes::times_power_of_two(p, minus_n, shifted);
}

// log1p(e) for e in [0, 1] (NaN propagates) within 7.5e-10 relative: e times a degree-10
// polynomial, no range reduction, no division, relative accuracy down to e = 0.
template <class V>
FASTLOSS_HD V log1p_unit_for_float32(V e) {
  const V e2 = e * e;
  const V e4 = e2 * e2;
  const V low = estrin7(e, e2, e4, 0x1.fffffff99dbd6p-1, -0x1.fffff38a50abep-2, 0x1.55534e1b2723fp-2,
                        -0x1.ffbd433ec4560p-3, 0x1.975ccdae8e3bbp-3, -0x1.49d8354f70d10p-3,
                        0x1.fca8bdd5885bbp-4, -0x1.51ae71e1ecfedp-4);
  const V high = (0x1.53ca265cff24ap-5 + e * -0x1.b75684f7894f5p-7) + e2 * 0x1.0a1b998bf01e0p-9;
  return e * (low + (e4 * e4) * high);
}

// log(x) for x = 0 or a normal double, the range of float32 values (NaN propagates), within
// 7e-10 relative: x = 2^k * m with m in [sqrt(1/2), sqrt(2)), from the bits; then
// k*ln2 + f*Q(f) with f = m - 1 (exact) and a degree-10 Q, so a result near 0 (x near 1)
// keeps its relative accuracy. 0 gives -1023 ln2 = -709.1 (the callers clamp at -100), a
// negative x a finite value of no meaning (the callers flag it).
template <class V>
FASTLOSS_HD V log_for_float32(V x) {
  const auto bits = lanes::to_bits(x);
  V k = bits_as<V>(splat_bits<V>(0x4330000000000000ull) | (bits >> 52)) - (0x1p52 + 1023.0);
  V m = bits_as<V>((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  k = select(m > 0x1.6a09e667f3bcdp0, k + 1.0, k);
  m = select(m > 0x1.6a09e667f3bcdp0, m * 0.5, m);
  const V f = m - 1.0;
  const V f2 = f * f;
  const V f4 = f2 * f2;
  const V low = estrin7(f, f2, f4, 0x1.00000002b60bap+0, -0x1.ffffffc706a2cp-2, 0x1.5555400a58d7ap-2,
                        -0x1.0000121986c25p-2, 0x1.99a71b2b19d76p-3, -0x1.555be32429d8dp-3,
                        0x1.2312994074957p-3, -0x1.fbf1fce68e9b0p-4);
  const V high = (0x1.e87deddf5f9d5p-4 + f * -0x1.dffe2a2a6a7b4p-4) + f2 * 0x1.137dd7f62976fp-4;
  const V result = k * 0x1.62e42fefa39efp-1 + f * (low + (f4 * f4) * high);
  return select(x != x, x, result);
}

// log(1 - p) for p in [0, 1] a float32 value (NaN propagates), within 7e-10 relative: 1 - p
// is exact in double for p >= 2^-29; below, its rounding error (exact by Fast2Sum) is added
// back, log(q + c) = log(q) + c to within 2^-29 of c. p = 1 gives -709.1, like log(0).
template <class V>
FASTLOSS_HD V log1m_for_float32(V p) {
  const V q = 1.0 - p;
  return log_for_float32(q) + ((1.0 - q) - p);
}

}  // namespace math
}  // namespace fastloss
