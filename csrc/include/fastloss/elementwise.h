// Per-element loss math, written once for the C++ (OpenMP) kernels and the CUDA kernels.
//
// Each loss is a struct with loss(), grad() (d loss / d input for one element) and
// loss_and_grad() (both from one evaluation of the shared transcendental), templated on the
// input's storage type T and on the lane type V (fastloss/lanes.h: a vector of doubles on the
// CPU, one double on the GPU), so a kernel template is written once over all of them. Every
// element is computed in double whatever T is: inputs are widened on load, results rounded to
// T on store. T picks the grade of the transcendental functions (MathFor below): float32
// inputs get ~1e-9 relative (their results are then within 0.5 ulp but for ~1e-9 of one, so a
// float32 mean of equal terms, where per-element errors cannot average out, is within 1 ulp),
// float64 inputs a few double ulps. The definitions are those of fastloss.reference.
//
// FASTLOSS_PLANTED_FAULT_* blocks here and in csrc/ are faults planted on purpose, one per
// build, by .ci/planted_faults.py: the test suite must fail on each. No real build defines one.
#pragma once

#include "fastloss/scalar_math.h"

namespace fastloss {
namespace elementwise {

using lanes::select;
using lanes::splat;

// |a| by clearing the sign bit (one instruction; NaN stays NaN).
template <class V>
FASTLOSS_HD V absolute(V a) {
  return lanes::bits_as<V>(lanes::to_bits(a) & 0x7fffffffffffffffull);
}

// The transcendental functions, the division and the sigmoid of each input dtype (see
// scalar_math.h).
template <class T> struct MathFor;

template <>
struct MathFor<float> {
  template <class V> FASTLOSS_HD V exp_neg(V t) { return math::exp_neg_for_float32(t); }
  // e = exp_neg(t) and log1p(e) = softplus(-t), t >= 0
  template <class V> FASTLOSS_HD void exp_neg_and_log1p(V t, V& e, V& log1p_e) {
    math::exp_neg_and_log1p_for_float32(t, e, log1p_e);
  }
  template <class V> FASTLOSS_HD V log(V p) { return math::log_for_float32(p); }
  template <class V> FASTLOSS_HD V log1m(V p) { return math::log1m_for_float32(p); }
  template <class V> FASTLOSS_HD V divide(V a, V b) { return lanes::divide_for_float32(a, b); }
  // 1 / (1 + e^-x), x clamped to [-120, 120] (the result rounds to the same float32): no
  // select of the numerator, no multiply by it.
  template <class V> FASTLOSS_HD V sigmoid(V x) {
    return sigmoid_from_denominator(math::exp_neg_for_float32(sigmoid_floor(x)) + 1.0);
  }
  // Its steps, which the AVX2 kernel interleaves across vectors (kernels.cpp)
  template <class V> FASTLOSS_HD V sigmoid_floor(V x) { return lanes::at_least(x, -120.0); }
  template <class V> FASTLOSS_HD V sigmoid_from_denominator(V one_plus_e) {
    return lanes::divide_for_float32(lanes::splat<V>(1.0), one_plus_e);
  }
};

template <>
struct MathFor<double> {
  template <class V> FASTLOSS_HD V exp_neg(V t) { return math::exp(-t); }
  // log(u) + (e - (u - 1)) with u = 1 + e in [1, 2]: the bracket is the rounding error of u,
  // exact by Fast2Sum; dividing it by u, as the exact identity wants, would change the result
  // by less than e times the unit roundoff, so the division is skipped.
  template <class V> FASTLOSS_HD V log1p_of_exp_neg(V e) {
    const V u = 1.0 + e;
    return math::log_one_to_two(u) + (e - (u - 1.0));
  }
  template <class V> FASTLOSS_HD void exp_neg_and_log1p(V t, V& e, V& log1p_e) {
    e = exp_neg(t);
    log1p_e = log1p_of_exp_neg(e);
  }
  template <class V> FASTLOSS_HD V log(V p) { return math::log(p); }
  // log1p(-p) for p <= 1, as above with u = 1 - p
  template <class V> FASTLOSS_HD V log1m(V p) {
    const V u = 1.0 - p;
    return math::log(u) + ((-p) - (u - 1.0));
  }
  template <class V> FASTLOSS_HD V divide(V a, V b) { return a / b; }
  // 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|) in [0, 1]: no overflow, and the
  // subnormal tail of e is kept.
  template <class V> FASTLOSS_HD V sigmoid(V x) {
    const V e = math::exp(-absolute(x));
    return lanes::select(x >= 0.0, lanes::splat<V>(1.0), e) / (1.0 + e);
  }
};

// A branch-free max that propagates NaN (a NaN `a` compares false and is returned).
using lanes::at_least;

// The pos_weight of an unweighted pass: 1, known when the kernel is compiled, so a loss can
// take a form that only holds for 1 (BinaryCrossEntropyWithLogits).
struct UnitWeight {};

// ---- mean squared error: (x - y)^2 ----------------------------------------------------------
// x - y of two floats is exact in double but for a difference beyond 2^29 of their
// magnitudes, so a float32 term is exact to 1 double rounding.
// grad() returns x - y, and kGradFactor = 2 joins the gradient's scale (loss_pass.h): one
// multiply per element fewer, and the same bits (a product with 2 is exact).
struct SquaredError {
  static const bool kInputIsProbability = false;
  static constexpr double kGradFactor = 2.0;
  template <class T, class V, class PW>
  FASTLOSS_HD V loss(V x, V y, PW) {
    const V d = x - y;
    return d * d;
  }
  template <class T, class V, class PW>
  FASTLOSS_HD V grad(V x, V y, PW) {
#ifdef FASTLOSS_PLANTED_FAULT_MSE_GRAD_SIGN
    return y - x;
#endif
    return x - y;
  }
  template <class T, class V, class PW>
  FASTLOSS_HD void loss_and_grad(V x, V y, PW, V& loss, V& grad) {
    const V d = x - y;
    loss = d * d;
    grad = d;
  }
};

// ---- binary cross-entropy on probabilities ------------------------------------------------
// PyTorch's definition: each log is clamped at -100 so p = 0 or 1 gives a finite loss, and the
// gradient's denominator p(1-p) is clamped at T(1e-12). log(1 - p) is taken as log1m(p), which
// stays accurate for tiny p.
struct BinaryCrossEntropy {
  static const bool kInputIsProbability = true;
  static constexpr double kGradFactor = 1.0;
  template <class T, class V, class PW>
  FASTLOSS_HD V loss(V p, V y, PW) {
    typedef MathFor<T> M;
#ifdef FASTLOSS_PLANTED_FAULT_BCE_LOG_CLAMP
    return -(y * at_least(M::log(p), -50.0) + (1.0 - y) * at_least(M::log1m(p), -50.0));
#endif
    return -(y * at_least(M::log(p), -100.0) + (1.0 - y) * at_least(M::log1m(p), -100.0));
  }
  template <class T, class V, class PW>
  FASTLOSS_HD V grad(V p, V y, PW) {
    return MathFor<T>::divide(p - y, at_least(p * (1.0 - p), static_cast<double>(T(1e-12))));
  }
  template <class T, class V, class PW>
  FASTLOSS_HD void loss_and_grad(V p, V y, PW pw, V& loss, V& grad) {
    loss = BinaryCrossEntropy::loss<T>(p, y, pw);
    grad = BinaryCrossEntropy::grad<T>(p, y, pw);
  }
};

// Nonzero lanes where `p` is not a probability (NaN is let through: it propagates into the loss).
template <class V>
FASTLOSS_HD auto outside_unit_interval(V p) -> decltype(p < 0.0) {
  return (p < 0.0) | (p > 1.0);
}

// ---- binary cross-entropy on logits -------------------------------------------------------
// With e = exp(-|z|) in [0, 1] (nothing overflows for any z), s = sigmoid(z) and
// softplus(t) = log(1 + e^t) = max(t, 0) + log1p(exp(-|t|)):
//   loss = pos_weight*y*softplus(-z) + (1-y)*softplus(z)
//   grad = (pos_weight*y + 1 - y)*s - pos_weight*y
// The gradient is evaluated from sigmoid(-|z|) = e / (1 + e) so it keeps its relative accuracy
// where it is small (for z >= 0, s = 1 - sigmoid(-z)); PyTorch's s - y cancels there.
// At z = +-inf a softplus is +inf; where its coefficient is exactly 0 (the label agrees) the
// term is defined as 0, the limit, instead of IEEE's 0*inf = NaN (PyTorch returns NaN there):
// the infinite max(+-z, 0) is zeroed before it is multiplied.
struct BinaryCrossEntropyWithLogits {
  static const bool kInputIsProbability = false;
  static constexpr double kGradFactor = 1.0;
  // The limit 0 at z = +-inf where the label agrees (both forms of loss_from_parts).
#ifndef FASTLOSS_PLANTED_FAULT_LOGITS_INF_LIMIT
  static constexpr bool kInfiniteLimit = true;
#else
  static constexpr bool kInfiniteLimit = false;
#endif
  // pos_weight 1: loss = max(z, 0) - y z + log1p(e), one multiply-add for the selects and
  // products above and the same bits: y z is exact (two float32 values), so z - y z rounds
  // (1 - y) z once, as (1 - y) * z did, and 0 - y z is exact like y * (-z). Only for float32
  // math (T = float), whose results are rounded to float32 or narrower: an infinite z is clamped
  // to +-2^1000 first, which gives 0 where the label agrees (the limit) and, elsewhere, a term
  // of at least 2^976 that rounds to inf in float32, in the mean and sum too. float64 keeps the
  // general form, where 2^1000 would be a value.
  template <class T, class V>
  FASTLOSS_HD V loss_from_parts(V z, V y, UnitWeight unit, V log1p_e) {
    if constexpr (sizeof(T) == sizeof(float)) {
      (void)unit;
      if (kInfiniteLimit) z = lanes::clamp_magnitude(z, 0x1p1000);
      return (at_least(z, 0.0) - y * z) + log1p_e;
    } else {
      return loss_from_parts<T>(z, y, splat<V>(1.0), log1p_e);
    }
  }
  template <class T, class V>
  FASTLOSS_HD V loss_from_parts(V z, V y, V pos_weight, V log1p_e) {
    V neg_part = at_least(-z, 0.0);  // max(-z, 0), zero where pos_weight*y == 0
    if (kInfiniteLimit) neg_part = select(y == 0.0, splat<V>(0.0), neg_part);
    neg_part = select(pos_weight == 0.0, splat<V>(0.0), neg_part);
    const V pos_part = select(y == 1.0, splat<V>(0.0), at_least(z, 0.0));  // zero where 1 - y == 0
    const V coef_neg = pos_weight * y;
    const V coef_pos = 1.0 - y;
    return coef_neg * neg_part + coef_pos * pos_part + (coef_neg + coef_pos) * log1p_e;
  }
  // pos_weight 1, float32 math: coef_total = y + (1 - y) is exactly 1 for a float32 y, so the
  // general form's multiply-add by +-1 is this subtraction, bit for bit.
  template <class T, class V>
  FASTLOSS_HD V grad_from_parts(V z, V y, UnitWeight, V small_sigmoid) {
    if constexpr (sizeof(T) == sizeof(float)) {
      return select(z >= 0.0, (1.0 - y) - small_sigmoid, small_sigmoid - y);
    } else {
      return grad_from_parts<T>(z, y, splat<V>(1.0), small_sigmoid);
    }
  }
  template <class T, class V>
  FASTLOSS_HD V grad_from_parts(V z, V y, V pos_weight, V small_sigmoid) {
    // z >= 0: (1 - y) - total*sigmoid(-|z|);  z < 0: total*sigmoid(-|z|) - coef_neg.
    const V coef_neg = pos_weight * y;
    const V coef_total = coef_neg + (1.0 - y);
    const V base = select(z >= 0.0, 1.0 - y, -coef_neg);
    const V slope = select(z >= 0.0, -coef_total, coef_total);
    return base + slope * small_sigmoid;
  }
  template <class T, class V, class PW>
  FASTLOSS_HD V loss(V z, V y, PW pos_weight) {
    V e, log1p_e;
    MathFor<T>::exp_neg_and_log1p(absolute(z), e, log1p_e);
    return loss_from_parts<T>(z, y, pos_weight, log1p_e);
  }
  template <class T, class V, class PW>
  FASTLOSS_HD V grad(V z, V y, PW pos_weight) {
    typedef MathFor<T> M;
    const V e = M::exp_neg(absolute(z));
    return grad_from_parts<T>(z, y, pos_weight, M::divide(e, 1.0 + e));
  }
  template <class T, class V, class PW>
  FASTLOSS_HD void loss_and_grad(V z, V y, PW pos_weight, V& loss, V& grad) {
    typedef MathFor<T> M;
    V e, log1p_e;
    M::exp_neg_and_log1p(absolute(z), e, log1p_e);
    loss = loss_from_parts<T>(z, y, pos_weight, log1p_e);
    grad = grad_from_parts<T>(z, y, pos_weight, M::divide(e, 1.0 + e));
  }
};

// ---- sigmoid ------------------------------------------------------------------------------
// A float32 result is within 0.56 ulp (float32 grade), a float64 one within a few ulps;
// exactly 0 and 1 at saturation, the subnormal tail kept, never NaN for a non-NaN input.
template <class V>
FASTLOSS_HD V sigmoid_result(V x, V result) {
#ifdef FASTLOSS_PLANTED_FAULT_SIGMOID_FLUSHES_TAIL
  result = select(x < -80.0, splat<V>(0.0), result);
#endif
  (void)x;
  return result;
}

template <class T, class V>
FASTLOSS_HD V sigmoid(V x) {
  return sigmoid_result(x, MathFor<T>::sigmoid(x));
}

// d sigmoid / dx from the forward output y, like PyTorch's sigmoid_backward.
template <class V>
FASTLOSS_HD V sigmoid_backward(V grad_output, V y) {
  return grad_output * (y * (1.0 - y));
}

}  // namespace elementwise
}  // namespace fastloss
