// The per-row math of softmax, log_softmax and cross-entropy, written once for the C++ kernels
// (csrc/multiclass.cpp) and the CUDA kernels (cuda/multiclass.cu). A row is the run of
// `classes` elements along the class axis; the kernels add only how they walk it (blocks of a
// row in an L1 tile, or the threads of a warp or block) and how its partial results merge.
//
// Online softmax: a row is read once for its max m and s = sum exp(x - m). Partial results
// (m1, s1), (m2, s2) of two parts of a row merge as m = max(m1, m2),
// s = s1 exp(m1 - m) + s2 exp(m2 - m), so any part may be absorbed before the row's max is
// known. Everything is double (float32 inputs are widened): x - m of two floats is then exact,
// each log within a few double ulps and each exp within 1e-10 for float32 rows
// (exp_for_float_rows) or a few double ulps for float64 rows, so a float32 log_softmax is the
// correctly rounded value but for rare ties, and a row's loss is exact to ~1e-10 relative
// (float64 rows: ~1e-15): a float32 mean over equal rows (where per-row errors cannot average
// out) is still within 1 ulp.
//
// Cross-entropy of one row, for both kinds of target, is -sum_c a_c log_softmax(x)_c with
//   class index y:   a_c = weight_c ((1 - eps) [c == y] + eps / C)   (0 for ignored rows)
//   probabilities p: a_c = weight_c ((1 - eps) p_c + eps / C)
// (eps = label_smoothing). With A = sum_c a_c and log_softmax_c = (x_c - m) - log s:
//   loss = sum_c a_c (m - x_c) + A log s,  d loss / d x_c = A softmax_c - a_c.
// Both terms of the loss are sums of non-negative parts for non-negative a (no cancellation):
// sum_c a_c (m - x_c) is kept against the running max (when the max grows by d, the sum so
// far grows by d times the coefficients so far), never formed as m A - sum a_c x_c.
//
// (Header rules as for scalar_math.h: NVRTC compiles it too, so it includes no standard header.)
#pragma once

#include "fastloss/scalar_math.h"

namespace fastloss {
namespace rows {

FASTLOSS_HD double negative_infinity() { return -math::infinity(); }

// max(a, b) where a NaN in either wins (the row's result is then NaN, as in PyTorch).
FASTLOSS_HD double max_propagating_nan(double a, double b) {
  return b != b ? b : (b > a ? b : a);
}

// The factor exp(old_max - new_max) that brings a sum of exps to a new max: 1 when the max
// did not change (also at +-inf, where the difference would be NaN), 0 from an empty part.
FASTLOSS_HD double rescale(double old_max, double new_max) {
  return old_max == new_max ? 1.0 : math::exp(old_max - new_max);
}

// The sum of a_c (m - x_c) of a part, brought from its max to a larger one: it grows by the
// difference times the part's coefficients (none yet: nothing to move, also from -inf).
FASTLOSS_HD double shift_offsets(double offsets, double coefficients, double old_max,
                                 double new_max) {
  return coefficients == 0.0 || old_max == new_max ? offsets
                                                   : offsets + (new_max - old_max) * coefficients;
}

// Merges part 2 into part 1 (the state of an online softmax row scan; offsets and
// coefficients are the cross-entropy sums, 0 where unused).
FASTLOSS_HD void merge(double& max, double& sum, double& offsets, double& coefficients,
                       double max2, double sum2, double offsets2, double coefficients2) {
  const double merged = max_propagating_nan(max, max2);
  sum = sum * rescale(max, merged) + sum2 * rescale(max2, merged);
  offsets = shift_offsets(offsets, coefficients, max, merged) +
            shift_offsets(offsets2, coefficients2, max2, merged);
  coefficients += coefficients2;
  max = merged;
}

// ---- per element ------------------------------------------------------------------------------
FASTLOSS_HD double exp_shifted(double x, double max) { return math::exp(x - max); }

// exp(d) for d <= 0 (or NaN) to 1e-10 relative, for rows of float32 inputs: a float32 result
// or loss needs no more (a row's loss is still exact to ~1e-10, far below a float32 ulp of
// 6e-8), and the degree-7 polynomial costs half of math::exp's degree 13 (the row scans are
// bound by their exps). Cody-Waite reduction as math::exp, then the degree-7 interpolant of exp
// at the Chebyshev nodes of |r| <= ln2/2 (5.5e-11 relative there, against 5.6e-9 for Taylor's
// degree 7; coefficients from numpy.polynomial.chebyshev.chebinterpolate), its constant term
// set to 1 so that exp(0) = 1 exactly (a row of one class has log_softmax 0; 9.5e-11 overall). Below d = -708 the
// result is exp(-708) = 3.3e-308 instead of smaller: far below anything a float32 result or a
// row sum of at least 1 can show (no subnormal scale).
FASTLOSS_HD double exp_for_float_rows(double d) {
  d = d < -708.0 ? -708.0 : d;
  const double round_shift = 0x1.8p52;
  const double shifted = d * 0x1.71547652b82fep0 + round_shift;
  const double n = shifted - round_shift;
  double r = d - n * 0x1.62e42fee00000p-1;
  r = r - n * 0x1.a39ef35793c76p-33;
  const double r2 = r * r;
  const double r4 = r2 * r2;
  const double c01 = 1.0 + r * 0.9999999999955099;  // exp(0) = 1 exactly
  const double c23 = 0.5000000107793305 + r * 0.16666666786348713;
  const double c45 = 0.04166621814088921 + r * 0.008333283524270554;
  const double c67 = 0.0013948590223997939 + r * 0.00019907579913310515;
  const double p = (c01 + r2 * c23) + r4 * (c45 + r2 * c67);
  return p * math::from_bits((math::to_bits(shifted) + 1023ull) << 52);
}

// exp(x - max) at the accuracy a row of the input type needs (the third argument: a T()):
// float32 rows take exp_for_float_rows, float64 rows math::exp.
FASTLOSS_HD double row_exp(double x, double max, float) { return exp_for_float_rows(x - max); }
FASTLOSS_HD double row_exp(double x, double max, double) { return math::exp(x - max); }

// exp(x - reference) where the reference is not the row's max but its target logit (the short
// rows of the cross-entropy kernels), so x - reference may be positive: clamped at 709, where
// the exp is still finite (8.2e307; such a row takes the general scan), then row_exp's math.
FASTLOSS_HD double gap_exp(double x, double reference, float) {
  const double d = x - reference;
  return exp_for_float_rows(d > 709.0 ? 709.0 : d);
}
FASTLOSS_HD double gap_exp(double x, double reference, double) {
  const double d = x - reference;
  return math::exp(d > 709.0 ? 709.0 : d);
}

FASTLOSS_HD double log_softmax_element(double x, double max, double log_sum) {
  return (x - max) - log_sum;
}

FASTLOSS_HD double softmax_element(double x, double max, double inverse_sum) {
  return math::exp(x - max) * inverse_sum;
}

// From the forward output y: softmax's y (g - sum_c g_c y_c), log_softmax's g - exp(y) sum_c g_c
// (PyTorch's _softmax_backward_data and _log_softmax_backward_data).
FASTLOSS_HD double softmax_backward_element(double g, double y, double dot) { return y * (g - dot); }
FASTLOSS_HD double log_softmax_backward_element(double g, double y, double sum) {
  return g - math::exp(y) * sum;
}

// ---- cross-entropy ---------------------------------------------------------------------------
// A class's coefficient a_c without the (1 - eps) [c == y] part of a class index, which the
// kernels add for the one class y: weight_c ((1 - eps) p_c + eps / C) for probabilities
// (target_c = p_c), weight_c eps / C for class indices (target_c = 0).
FASTLOSS_HD double coefficient(double weight, double target, double keep, double spread) {
  return weight * (keep * target + spread);
}

// log(1 + t) for t >= 0 (or NaN): log(u) + (t - (u - 1)) / u with u = 1 + t; the bracket is
// u's rounding error (exact by Fast2Sum), so tiny t keep their relative accuracy.
FASTLOSS_HD double log1p_nonnegative(double t) {
  const double u = 1.0 + t;
  return math::log(u) + (t - (u - 1.0)) / u;
}

// The loss of an unsmoothed class index y, -log softmax_y = log(1 + sum_{c != y} e_c / e_y),
// from exps e against any shift (the short-row kernels take one shift for many rows): no
// cancellation, however close to 1 softmax_y is.
FASTLOSS_HD double class_index_loss(double others, double e_target) {
  return log1p_nonnegative(others / e_target);
}

FASTLOSS_HD double row_loss(double offsets, double coefficients, double log_sum) {
  return offsets + coefficients * log_sum;
}

// d loss / d x_c times the row's upstream scale, from e = exp(x_c - m): A scale e / s - scale a_c,
// with k = A scale / s computed once per row. Where a_c is 0 (every class but y of an
// unsmoothed class index) it is k e, without cancellation.
FASTLOSS_HD double grad_element(double e, double k, double scaled_coefficient) {
  return e * k - scaled_coefficient;
}

// The gradient of the target class y of an unsmoothed class index, scale a_y (p_y - 1), as
// -scale a_y (s - e_y) / s: p_y - 1 would cancel where p_y is near 1.
FASTLOSS_HD double target_grad(double e_target, double sum, double scaled_weight) {
  return -scaled_weight * ((sum - e_target) / sum);
}

}  // namespace rows
}  // namespace fastloss
