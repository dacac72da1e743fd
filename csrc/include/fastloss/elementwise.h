// Per-element loss math, written once for the C++ (OpenMP) kernels and the CUDA kernels.
//
// Each loss is a struct with loss(), grad() (d loss / d input for one element) and
// loss_and_grad() (both from one evaluation of the shared transcendental), templated on the
// input type T, so a kernel template is written once over all of them; results are returned
// as double for the kernels' accumulators. Squared error is computed in double (exact terms,
// and cheap); the BCE losses in T: float32 inputs get float exp/log and float algebra (twice
// the SIMD lanes; doing their algebra in double cost more than the exp and log together), at
// about PyTorch's per-element accuracy. The definitions are those of fastloss.reference.
//
// FASTLOSS_PLANTED_FAULT_* blocks here and in csrc/ are faults planted on purpose, one per
// build, by .ci/planted_faults.py: the test suite must fail on each. No real build defines one.
#pragma once

#include "fastloss/scalar_math.h"

namespace fastloss {
namespace elementwise {

struct LossAndGrad {
  double loss;
  double grad;
};

// A branch-free max that propagates NaN (a NaN `a` compares false and is returned).
template <class T>
FASTLOSS_HD T at_least(T a, T floor) {
  return a < floor ? floor : a;
}

// log1p(a) for |a| <= 1: log(u) + (a - (u - 1)) with u = 1 + a. The bracket is the rounding
// error of u, exact by Fast2Sum since |a| <= 1; dividing it by u, as the exact identity wants,
// would change the result by less than |a| times the unit roundoff, so the division is skipped.
template <class T>
FASTLOSS_HD T log1p_unit(T a) {
  const T u = T(1) + a;
  return math::log(u) + (a - (u - T(1)));
}

// ---- mean squared error: (x - y)^2 ----------------------------------------------------------
// In double: x - y of two floats is then exact, so each term is exact to 1 double rounding.
struct SquaredError {
  static const bool kInputIsProbability = false;
  template <class T>
  FASTLOSS_HD double loss(T x, T y, T) {
    const double d = static_cast<double>(x) - static_cast<double>(y);
    return d * d;
  }
  template <class T>
  FASTLOSS_HD double grad(T x, T y, T) {
#ifdef FASTLOSS_PLANTED_FAULT_MSE_GRAD_SIGN
    return 2.0 * (static_cast<double>(y) - static_cast<double>(x));
#endif
    return 2.0 * (static_cast<double>(x) - static_cast<double>(y));
  }
  template <class T>
  FASTLOSS_HD LossAndGrad loss_and_grad(T x, T y, T) {
    const double d = static_cast<double>(x) - static_cast<double>(y);
    LossAndGrad r = {d * d, 2.0 * d};
    return r;
  }
};

// ---- binary cross-entropy on probabilities ------------------------------------------------
// PyTorch's definition: each log is clamped at -100 so p = 0 or 1 gives a finite loss, and the
// gradient's denominator p(1-p) is clamped at 1e-12. log(1 - p) is taken as log1p(-p), which
// stays accurate for tiny p.
struct BinaryCrossEntropy {
  static const bool kInputIsProbability = true;
  template <class T>
  FASTLOSS_HD double loss(T p, T y, T) {
#ifdef FASTLOSS_PLANTED_FAULT_BCE_LOG_CLAMP
    return -(y * at_least(math::log(p), T(-50)) + (T(1) - y) * at_least(log1p_unit(-p), T(-50)));
#endif
    return -(y * at_least(math::log(p), T(-100)) + (T(1) - y) * at_least(log1p_unit(-p), T(-100)));
  }
  template <class T>
  FASTLOSS_HD double grad(T p, T y, T) {
    return (p - y) / at_least(p * (T(1) - p), T(1e-12));
  }
  template <class T>
  FASTLOSS_HD LossAndGrad loss_and_grad(T p, T y, T pw) {
    LossAndGrad r = {loss(p, y, pw), grad(p, y, pw)};
    return r;
  }
};

// Nonzero where `p` is not a probability (NaN is let through: it propagates into the loss).
template <class T>
FASTLOSS_HD int outside_unit_interval(T p) {
  return (p < T(0)) | (p > T(1));
}

// ---- the logistic function's parts ----------------------------------------------------------
// e = exp(-|z|) lies in [0, 1]: nothing overflows for any z, and
//   sigmoid(-|z|) = e / (1 + e),  sigmoid(|z|) = 1 / (1 + e),  softplus(-|z|) = log1p(e).
// (Plain scalars, not a struct of e and 1 + e: GCC packs a two-float struct into one 64-bit
// value and then refuses to vectorise the loop.)
FASTLOSS_HD double exp_neg_abs(double z) { return math::exp(-(z < 0.0 ? -z : z)); }
FASTLOSS_HD float exp_neg_abs(float z) { return math::exp_nonpositive(-(z < 0.0f ? -z : z)); }

// log1p(e) = softplus(-|z|) for e in [0, 1], as log1p_unit but with 1 + e known to lie in [1, 2].
template <class T>
FASTLOSS_HD T log1p_of_exp_neg_abs(T e) {
  const T u = T(1) + e;
  return math::log_one_to_two(u) + (e - (u - T(1)));
}

// ---- binary cross-entropy on logits -------------------------------------------------------
// With s = sigmoid(z) and softplus(t) = log(1 + e^t) = max(t, 0) + log1p(exp(-|t|)):
//   loss = pos_weight*y*softplus(-z) + (1-y)*softplus(z)
//   grad = (pos_weight*y + 1 - y)*s - pos_weight*y
// The gradient is evaluated from sigmoid(-|z|) so it keeps its relative accuracy where it is
// small (for z >= 0, s = 1 - sigmoid(-z)); PyTorch's s - y cancels there.
// At z = +-inf a softplus is +inf; where its coefficient is exactly 0 (the label agrees) the
// term is defined as 0, the limit, instead of IEEE's 0*inf = NaN (PyTorch returns NaN there):
// the infinite max(+-z, 0) is zeroed before it is multiplied.
struct BinaryCrossEntropyWithLogits {
  static const bool kInputIsProbability = false;
  template <class T>
  FASTLOSS_HD double loss_from_parts(T z, T y, T pos_weight, T log1p_e) {
    // Nested selects, not `a || b`: a bool temporary stops GCC from vectorising the loop.
    T neg_part = at_least(-z, T(0));  // max(-z, 0), zero where pos_weight*y == 0
#ifndef FASTLOSS_PLANTED_FAULT_LOGITS_INF_LIMIT
    neg_part = y == T(0) ? T(0) : neg_part;
#endif
    neg_part = pos_weight == T(0) ? T(0) : neg_part;
    const T pos_part = y == T(1) ? T(0) : at_least(z, T(0));  // max(z, 0), zero where 1 - y == 0
    const T coef_neg = pos_weight * y;
    const T coef_pos = T(1) - y;
    return coef_neg * neg_part + coef_pos * pos_part + (coef_neg + coef_pos) * log1p_e;
  }
  template <class T>
  FASTLOSS_HD double grad_from_parts(T z, T y, T pos_weight, T small_sigmoid) {
    // z >= 0: (1 - y) - total*sigmoid(-|z|);  z < 0: total*sigmoid(-|z|) - coef_neg.
    const T coef_neg = pos_weight * y;
    const T coef_total = coef_neg + (T(1) - y);
    const T base = z >= T(0) ? T(1) - y : -coef_neg;
    const T slope = z >= T(0) ? -coef_total : coef_total;
    return base + slope * small_sigmoid;
  }
  template <class T>
  FASTLOSS_HD double loss(T z, T y, T pos_weight) {
    return loss_from_parts(z, y, pos_weight, log1p_of_exp_neg_abs(exp_neg_abs(z)));
  }
  template <class T>
  FASTLOSS_HD double grad(T z, T y, T pos_weight) {
    const T e = exp_neg_abs(z);
    return grad_from_parts(z, y, pos_weight, e / (T(1) + e));
  }
  template <class T>
  FASTLOSS_HD LossAndGrad loss_and_grad(T z, T y, T pos_weight) {
    const T e = exp_neg_abs(z);
    LossAndGrad r = {loss_from_parts(z, y, pos_weight, log1p_of_exp_neg_abs(e)),
                     grad_from_parts(z, y, pos_weight, e / (T(1) + e))};
    return r;
  }
};

// ---- sigmoid ------------------------------------------------------------------------------
// Always in double, so a float32 result is the correctly rounded value in all but rare ties;
// exactly 0 and 1 at saturation, never NaN for a non-NaN input.
FASTLOSS_HD double sigmoid(double x) {
  const double e = exp_neg_abs(x);
#ifdef FASTLOSS_PLANTED_FAULT_SIGMOID_FLUSHES_TAIL
  if (x < -80.0) return 0.0;
#endif
  return (x >= 0.0 ? 1.0 : e) / (1.0 + e);
}

// d sigmoid / dx from the forward output y, like PyTorch's sigmoid_backward.
FASTLOSS_HD double sigmoid_backward(double grad_output, double y) {
  return grad_output * (y * (1.0 - y));
}

}  // namespace elementwise
}  // namespace fastloss
