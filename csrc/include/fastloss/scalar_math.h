// Branch-free exp and log over lanes (fastloss/lanes.h: a double on the GPU, a vector of
// doubles on the CPU), shared by the C++ kernels and the CUDA kernels.
//
// Why not libm: a call to ::exp or ::log is one element at a time, and that is what holds
// NumPy, PyTorch and Numba at ~1 GB/s on binary cross-entropy. These use only arithmetic, bit
// casts and selects, so they run on whole registers without -ffast-math.
//
// Two grades, both in double:
// - for float64 inputs, a few double ulps (exp, log, log_one_to_two);
// - for float32 inputs, below 5e-10 relative (exp_neg_for_float32, log1p_unit_for_float32,
//   log_for_float32): a float32 result rounded from them is within 0.5 ulp of the exact value
//   but for about 1e-8 of an ulp (so a mean of 2^24 equal terms is within 1 ulp), from
//   16-entry tables and polynomials of degree 4-5, with no division.
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
// The float32 grade is table-driven: a 16-entry table (lanes::lookup16, one vpermt2pd with
// AVX-512) takes the reduced argument to |r| <= 1/30, where a degree 4 or 5 polynomial reaches
// the accuracy that degrees 7-10 needed on the whole interval. That is a third of the
// instructions and half the dependency depth, and on Zen 5 these loops are bound by both: the
// FP scheduler holds only so many operations waiting on long chains (bench/NOTES.md).

// 2^(j/16) as bits, minus j << 48: adding the bits of the reduction's rounding constant, whose
// low 16 bits hold the integer m = 16 q + j (two's complement), shifted left by 48, makes the
// bits of 2^(j/16) * 2^q, an exact power-of-two scaling without a shift of m's top bits.
FASTLOSS_TABLE(kExp2SixteenthsMinusIndex, 16) = {
    0x1.0000000000000p+0, 0x1.fb5586cf9890fp-1, 0x1.f72b83c7d517bp-1, 0x1.f387a6e756238p-1,
    0x1.f06fe0a31b715p-1, 0x1.edea64c123422p-1, 0x1.ebfdad5362a27p-1, 0x1.eab07dd485429p-1,
    0x1.ea09e667f3bcdp-1, 0x1.ea11473eb0187p-1, 0x1.eace5422aa0dbp-1, 0x1.ec49182a3f090p-1,
    0x1.ee89f995ad3adp-1, 0x1.f199bdd85529cp-1, 0x1.f5818dcfba487p-1, 0x1.fa4afa2a490dap-1};

// exp(-t) for t <= 120 within 2.5e-12 relative (NaN propagates). t is clamped at 120:
// e^-120 = 7.7e-53, and everything a float32 kernel computes from a smaller value rounds to
// the same float32 (0 for a sigmoid, no change to a loss of 1 + e or e*c); the callers keep
// t >= -120. Reduction -t = m ln2/16 + r, m = 16 q + j an integer (|m| <= 2771, so m times
// ln2/16 rounded once errs by < 2e-14 absolute), |r| <= ln2/32; then e^r by a degree-4
// minimax polynomial, times 2^(j/16) from the table and 2^q, both in one integer addition.
// exp(-t) = p * scale, the two factors (the result is their product).
template <class V>
FASTLOSS_HD void exp_neg_parts_for_float32(V t, V& p, V& scale) {
  t = lanes::at_most(t, 120.0);
  const double round_shift = 0x1.8p52;
  const V shifted = round_shift - t * 0x1.71547652b82fep4;  // low bits: m = -round(16 t log2(e))
  const V m = shifted - round_shift;
  const V r = -t - m * 0x1.62e42fefa39efp-5;  // -t - m ln2/16, in [-ln2/32, ln2/32]
  const V r2 = r * r;
  p = (0x1.ffffffffffe6cp-1 + r * 0x1.fffffffb1374dp-1) +
      r2 * ((0x1.00000005bf1d0p-1 + r * 0x1.5557e54b8a041p-3) + r2 * 0x1.55539fd44ab62p-5);
  const auto m_bits = lanes::to_bits(shifted);
  scale = bits_as<V>(lanes::to_bits(lanes::lookup16<V>(kExp2SixteenthsMinusIndex, m_bits)) + (m_bits << 48));
}

// exp(-t) as exp_neg_parts_for_float32 gives it, for the AVX2 build's 4 lanes, which have no
// instruction to read a table: lookup16 there is 4 lane extracts and 4 loads per table, and
// those loops are bound by their chains (bench/NOTES.md). Without the table: -t = q ln2 + r,
// |r| <= ln2/2, e^r by a degree-8 polynomial (a Lawson fit, 7.8e-13 relative: finer than the
// table's form) in Estrin's scheme, 2^q added into the exponent bits (the result's exponent
// stays in [849, 1197] for |t| <= 120: no carry into the sign). In two stages, the reduction
// and the rest, which the AVX2 sigmoid interleaves across vectors (kernels.cpp).
template <class V>
FASTLOSS_HD void exp_neg_reduce_for_float32(V t, V& r, V& shifted) {
  t = lanes::at_most(t, 120.0);
  const double round_shift = 0x1.8p52;
  shifted = round_shift - t * 0x1.71547652b82fep0;  // low bits: q = -round(t log2(e))
  const V q = shifted - round_shift;
  r = -t - q * 0x1.62e42fefa39efp-1;  // |q| <= 174: q ln2 rounded once errs by < 1e-14
}

template <class V>
FASTLOSS_HD V exp_neg_from_reduced_for_float32(V r, V shifted) {
  const V r2 = r * r;
  const V r4 = r2 * r2;
  const V low = (0x1.ffffffffff7a0p-1 + r * 0x1.ffffffffd5651p-1) +
                r2 * (0x1.0000000088297p-1 + r * 0x1.555555a080174p-3);
  const V high = (0x1.55555404835cdp-5 + r * 0x1.111082b0f1e03p-7) +
                 r2 * ((0x1.6c18b428d86e5p-10 + r * 0x1.a1a819de3b39bp-13) + r2 * 0x1.9ed9994cc577ap-16);
  const V p = low + r4 * high;
  return bits_as<V>(lanes::to_bits(p) + (lanes::to_bits(shifted) << 52));
}

template <class V>
FASTLOSS_HD V exp_neg_without_table_for_float32(V t) {
  V r, shifted;
  exp_neg_reduce_for_float32(t, r, shifted);
  return exp_neg_from_reduced_for_float32(r, shifted);
}

template <class V>
FASTLOSS_HD V exp_neg_for_float32(V t) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (sizeof(V) == 32) return exp_neg_without_table_for_float32(t);
#endif
  V p, scale;
  exp_neg_parts_for_float32(t, p, scale);
  return p * scale;
}

// base + log1p(r) for |r| <= 0.0334, log1p within 4.4e-10 relative: (base + r) + r^2 Q(r), Q a
// degree-3 minimax fit (Lawson), so with base = 0 the result keeps its relative accuracy down
// to r = 0; base + r is added while Q is evaluated, off the chain.
template <class V>
FASTLOSS_HD V plus_log1p_small_for_float32(V base, V r) {
  const V r2 = r * r;
  const V q = (-0x1.fffffba5d7339p-2 + r * 0x1.55555058714b6p-2) +
              r2 * (-0x1.003cf7806199dp-2 + r * 0x1.9a0cad95fb33ap-3);
  return (base + r) + r2 * q;
}

// For log1p(e), e in [0, 1]: j = round(15 e), c = j/15; ic = 1/(1 + c) rounded and -log(ic)
// rounded. Then (1 + e) ic - 1 = e ic + (ic - 1) is within 1/30 of 0. ic - 1 is exact (ic in
// [1/2, 1]), so a subtraction gives what a third table would, cheaper: an AVX2 lookup is 4
// extracts and 4 loads, and with AVX-512 a vpermt2pd takes the multiply-adds' pipes where a
// subtraction does not (bench/NOTES.md).
FASTLOSS_TABLE(kLog1pUnitTables, 32) = {
    // ic
    0x1.0000000000000p+0, 0x1.e000000000000p-1, 0x1.c3c3c3c3c3c3cp-1, 0x1.aaaaaaaaaaaabp-1,
    0x1.9435e50d79436p-1, 0x1.8000000000000p-1, 0x1.6db6db6db6db7p-1, 0x1.5d1745d1745d1p-1,
    0x1.4de9bd37a6f4ep-1, 0x1.4000000000000p-1, 0x1.3333333333333p-1, 0x1.2762762762762p-1,
    0x1.1c71c71c71c72p-1, 0x1.1249249249249p-1, 0x1.08d3dcb08d3ddp-1, 0x1.0000000000000p-1,
    // -log(ic)
    0x0.0p+0,             0x1.08598b59e3a07p-4, 0x1.005588ad375aep-3, 0x1.7565011e49675p-3,
    0x1.e41fccb76b0d7p-3, 0x1.269621134db92p-2, 0x1.588c2d913348fp-2, 0x1.882f1ef83ed45p-2,
    0x1.b5b3e24235e88p-2, 0x1.e148a1a2726cep-2, 0x1.058aefa811452p-1, 0x1.199fac68b4ab8p-1,
    0x1.2cf25fad8f1c3p-1, 0x1.3f91275240811p-1, 0x1.5188a4a02d7fep-1, 0x1.62e42fefa39efp-1};

// log1p(e) for e in [0, 1] (NaN propagates) within 4.5e-10 relative: log(1 + c) from the table
// plus log1p of the reduced argument. j = 0 has c = 0, ic = 1: there the result is
// log1p_small(e) itself, relative accuracy down to e = 0; elsewhere log(1 + c) >= 0.064 is at
// least twice the reduced part, so nothing cancels. j: bits whose low 4 are round(15 e) (or its
// neighbour where 15 e is within 2^-20 of a tie: the reduced argument stays within 0.0334).
template <class V>
FASTLOSS_HD V log1p_unit_for_float32(V e, typename lanes::Traits<V>::Bits j) {
  const V ic = lanes::lookup16<V>(kLog1pUnitTables, j);
  const V r = e * ic + (ic - 1.0);
  return plus_log1p_small_for_float32(lanes::lookup16<V>(kLog1pUnitTables + 16, j), r);
}

// e = exp(-t) and log1p(e), t >= -120 (softplus(-t) for t >= 0): the table index round(15 e)
// of log1p_unit_for_float32 is taken from the factors of e,
// p * (15 scale), so it does not wait for their product (a multiply fewer on the chain of a
// loop that is bound by its chains; 15 scale rounds, which moves j only at a tie).
template <class V>
FASTLOSS_HD void exp_neg_and_log1p_for_float32(V t, V& e, V& log1p_e) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (sizeof(V) == 32) {
    e = exp_neg_without_table_for_float32(t);
    log1p_e = log1p_unit_for_float32(e, lanes::to_bits(e * 15.0 + 0x1.8p52));
    return;
  }
#endif
  V p, scale;
  exp_neg_parts_for_float32(t, p, scale);
  e = p * scale;
  log1p_e = log1p_unit_for_float32(e, lanes::to_bits(p * (scale * 15.0) + 0x1.8p52));
}

// For log(x), x = 2^e * M (lanes::exponent_and_mantissa): j, the 4 mantissa bits below the
// leading one, picks an interval of m (M, or M/2 where M >= 1.5: j >= 8), ic = 1/c for its
// midpoint c rounded, and log(c) (+ ln2 where m = M/2) rounded. c = 1 at j = 0 (m in
// [1, 1.0625): only x = 1 itself among the callers' inputs, 0 exactly) and j = 15 (m in
// [0.96875, 1)), so next to 1 the reduced argument m - 1 is exact and the result keeps its
// relative accuracy (e ln2 and the table's ln2 cancel exactly); |m ic - 1| <= 1/32 everywhere.
FASTLOSS_TABLE(kLogTables, 32) = {
    // ic
    0x1.0000000000000p+0, 0x1.d41d41d41d41dp-1, 0x1.bacf914c1bad0p-1, 0x1.a41a41a41a41ap-1,
    0x1.8f9c18f9c18fap-1, 0x1.7d05f417d05f4p-1, 0x1.6c16c16c16c17p-1, 0x1.5c9882b931057p-1,
    0x1.4e5e0a72f0539p+0, 0x1.4141414141414p+0, 0x1.3521cfb2b78c1p+0, 0x1.29e4129e4129ep+0,
    0x1.1f7047dc11f70p+0, 0x1.15b1e5f75270dp+0, 0x1.0c9714fbcda3bp+0, 0x1.0000000000000p+0,
    // log(c), + ln2 for j >= 8
    0x0.0p+0,             0x1.6f0d28ae56b4ep-4, 0x1.29552f81ff521p-3, 0x1.9525a9cf456b6p-3,
    0x1.fb9186d5e3e29p-3, 0x1.2e8e2bae11d31p-2, 0x1.5d1bdbf5809cap-2, 0x1.89a3386c1425bp-2,
    0x1.b44f77bcc8f64p-2, 0x1.dd46a04c1c4a1p-2, 0x1.02552a5a5d0ffp-1, 0x1.154c3d2f4d5eap-1,
    0x1.2795e1289b11bp-1, 0x1.393e0d3562a1ap-1, 0x1.4a4f85db03ebbp-1, 0x1.62e42fefa39efp-1};

// log(x) + c for x = 0 or a normal double in [0, 1], the callers' probabilities and their
// complements, and a c that is 0 or tiny (NaN propagates), the log within 4.4e-10 relative:
// (e ln2 + log(c) + c) + log1p(m ic - 1). 0 gives a value <= -709 (-inf with AVX-512, -1023 ln2
// elsewhere: the callers clamp at -100), a negative x or one above 1 a value of no meaning (the
// callers flag it).
template <bool kPlusC, class V>
FASTLOSS_HD V log_plus_for_float32(V x, V c) {
  V e, m;
  lanes::exponent_and_mantissa(x, e, m);
  const auto j = lanes::to_bits(x) >> 48;  // m has x's mantissa bits
  const V r = m * lanes::lookup16<V>(kLogTables, j) - 1.0;
  V base = e * 0x1.62e42fefa39efp-1 + lanes::lookup16<V>(kLogTables + 16, j);
  if (kPlusC) base = base + c;  // (x + 0.0 is no identity in IEEE arithmetic: skipped, not folded)
  const V result = plus_log1p_small_for_float32(base, r);
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) return result;  // vgetexppd already made a NaN x's e NaN
#endif
  return select(x != x, x, result);
}

template <class V>
FASTLOSS_HD V log_for_float32(V x) {
  return log_plus_for_float32<false>(x, x);
}

// log(1 - p) for p in [0, 1] a float32 value (NaN propagates), within 4.5e-10 relative: 1 - p
// is exact in double for p >= 2^-29; below, its rounding error c (exact by Fast2Sum) is added
// back, log(q + c) = log(q) + c to within 2^-29 of c; there q lies in [0.96875, 1], where the
// table's terms are 0 and m ic - 1 = q - 1 exactly, so the sum is log1p(-p) itself. p = 1 gives
// log(0) (<= -709).
template <class V>
FASTLOSS_HD V log1m_for_float32(V p) {
  const V q = 1.0 - p;
  return log_plus_for_float32<true>(q, (1.0 - q) - p);
}

}  // namespace math
}  // namespace fastloss
