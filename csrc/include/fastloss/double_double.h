// Double-double ("double-word") sums: a value hi + lo held as two doubles, with the
// error-free transformations that make the reductions near exact and therefore independent of
// how the terms are grouped (threads, chunks, Dask blocks). Shared by the CPU kernels (lanes of
// any width), the module's final rounding, and the CUDA kernels; python/fastloss/_dd.py is the
// same arithmetic in NumPy for the Dask combine, step for step.
//
// Nothing here may be compiled with -ffast-math or reassociation: every function relies on
// each addition being rounded as written (contraction into FMA cannot apply: there are no
// products, except the explicit fma of the division).
#pragma once

#include "fastloss/lanes.h"

namespace fastloss {
namespace dd {

// s + e == a + b exactly, s = RN(a + b) (Knuth's TwoSum: no condition on a and b).
template <class V>
FASTLOSS_HD void two_sum(V a, V b, V& s, V& e) {
  s = a + b;
  const V bb = s - a;
  e = (a - (s - bb)) + (b - bb);
}

// The same when |a| >= |b| (or a == 0): Dekker's Fast2Sum, 3 operations.
template <class V>
FASTLOSS_HD void fast_two_sum(V a, V b, V& s, V& e) {
  s = a + b;
  e = b - (s - a);
}

// One term into a running double-double (hi, lo): hi takes the rounded sum, lo the exact
// error of that addition. lo is summed plainly: its own rounding errors are of order
// u^2 * (terms so far), which is what bounds the lane's error (kernels.h). The error of an
// infinite or NaN sum is NaN; callers drop lo where hi is not finite (normalized()).
template <class V>
FASTLOSS_HD void add_term(V& hi, V& lo, V term) {
  V s, e;
  two_sum(hi, term, s, e);
  hi = s;
  lo = lo + e;
}

// (xh, xl) += (yh, yl), the partial sums of the trees (lanes, chunks, Dask blocks): the high
// words' TwoSum, its error and both low words summed plainly. The error is that plain sum's
// rounding, second order in the magnitudes (below 2 u^2 (|x| + |y|) per addition, u = 2^-53),
// which is all the reduction's bound needs (kernels.h), even where terms of both signs cancel;
// and the chain from one level of a tree to the next is a single addition (the high words), so
// a tree costs little more latency than a plain one. The result is not normalized: normalize()
// once at the end.
template <class V>
FASTLOSS_HD void accumulate(V& xh, V& xl, V yh, V yl) {
  V s, e;
  two_sum(xh, yh, s, e);
  xh = s;
#ifdef FASTLOSS_PLANTED_FAULT_DD_COMBINE_DROPS_LO
  xl = V{};
  return;
#endif
  xl = (xl + yl) + e;
}

// (hi, lo) as a normalized double-double: hi = RN(hi + lo) and lo the exact rest; (hi, 0)
// where hi is not finite (an overflowed or NaN sum, whose errors are NaN: the value is hi).
template <class V>
FASTLOSS_HD void normalize(V& hi, V& lo) {
  V s, e;
  two_sum(hi, lo, s, e);
  const auto finite = hi - hi == 0.0;
  hi = lanes::select(finite, s, hi);
  lo = lanes::select(finite, e, V{});
}

FASTLOSS_HD double fused_multiply_add(double a, double b, double c) {
#if FASTLOSS_DEVICE_COMPILER
  return fma(a, b, c);
#else
  return __builtin_fma(a, b, c);
#endif
}

// (qh, ql) = (hi, lo) / n for a normalized double-double and n > 0 an integer below 2^53,
// normalized, within about 3 u^2 relative: q1 = RN(hi / n), whose remainder hi - q1 n is
// exact in one fma; the remainder and lo then give the second word. Not finite (an infinite
// or NaN sum, or n = 0): (hi / n, 0).
FASTLOSS_HD void divide(double hi, double lo, double n, double& qh, double& ql) {
  // the second word needs only ~u of its own: a product by 1 / n, whose division runs beside
  // the first one, instead of a second division on the chain (~3 ns of a 16-element call)
  const double reciprocal = 1.0 / n;
  const double q1 = hi / n;
  const double remainder = fused_multiply_add(-q1, n, hi);
  const double q2 = (remainder + lo) * reciprocal;
  if (!(q1 - q1 == 0.0)) {
    qh = q1;
    ql = 0.0;
    return;
  }
  fast_two_sum(q1, q2, qh, ql);
}

// q1 * d with its own rounding, never contracted into an fma with a following addition (NVRTC
// contracts by default; the CPU module is built without FMA): python/fastloss/_dd.py rounds it
// alone too.
FASTLOSS_HD double rounded_product(double q, double d) {
#if FASTLOSS_DEVICE_COMPILER
  return __dmul_rn(q, d);
#else
  return q * d;
#endif
}

// (qh, ql) = (hi, lo) / (dh, dl) for normalized double-doubles: the mean of cross_entropy, whose
// divisor is a sum of class weights. q1 = RN(hi / dh); the remainder (hi + lo) - q1 (dh + dl),
// its large part hi - q1 dh exact in one fma, divided by dh for the second word (dividing by
// dh instead of dh + dl errs by |dl / dh| <= u of a word that is itself ~u q1). Within a few
// u^2 of the exact quotient. q1 not finite (a zero divisor: every target ignored, an infinite
// or NaN sum): (q1, 0).
FASTLOSS_HD void divide_by_sum(double hi, double lo, double dh, double dl, double& qh, double& ql) {
  const double q1 = hi / dh;
  if (!(q1 - q1 == 0.0)) {
    qh = q1;
    ql = 0.0;
    return;
  }
  const double remainder = fused_multiply_add(-q1, dh, hi);
  const double q2 = ((remainder + lo) - rounded_product(q1, dl)) / dh;
  fast_two_sum(q1, q2, qh, ql);
}

// A double whose rounding to float32 is the correctly rounded float32 of hi + lo (normalized):
// hi rounded to odd with lo as the sticky bit. Rounding hi alone would round twice (hi may be a
// float32 midpoint that hi + lo is not); a 53-bit round-to-odd value rounds to any precision of
// at most 51 bits exactly as the exact value would (Boldo and Melquiond 2008).
FASTLOSS_HD double round_to_odd(double hi, double lo) {
  unsigned long long bits = lanes::to_bits(hi);
  if (lo != 0.0 && (bits & 1ull) == 0) {
    // hi + lo lies strictly between hi and its neighbour towards lo: the odd one of the two
    bits = (lo > 0.0) == (hi > 0.0) ? bits + 1 : bits - 1;
  }
  return lanes::double_from_bits(bits);
}

}  // namespace dd
}  // namespace fastloss
