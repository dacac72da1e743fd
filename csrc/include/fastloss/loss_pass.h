// The body of a loss pass, written once for the C++ kernels (csrc/kernels.cpp) and the CUDA
// kernels (cuda/losses.cu): for one element, which of loss and gradient to evaluate, the
// weight and the gradient's scale, the out-of-range flag; and the compensated add of the
// float64 reductions. The callers add only their parallel structure (chunks and threads, or
// blocks and grid-stride loops), their loads and stores and their accumulator lanes.
#pragma once

#include "fastloss/codes.h"
#include "fastloss/elementwise.h"

namespace fastloss {
namespace pass {

namespace ew = fastloss::elementwise;

// The per-element math of each op code.
template <LossOp kOp> struct OpOf;
template <> struct OpOf<LossOp::SquaredError> { typedef ew::SquaredError type; };
template <> struct OpOf<LossOp::BinaryCrossEntropy> { typedef ew::BinaryCrossEntropy type; };
template <> struct OpOf<LossOp::BinaryCrossEntropyWithLogits> {
  typedef ew::BinaryCrossEntropyWithLogits type;
};

// What a pass of kOutputs produces.
template <PassOutputs kOutputs>
struct Wants {
  static const bool kSum = kOutputs == PassOutputs::Sum || kOutputs == PassOutputs::SumAndGrad;
  static const bool kElementwise =
      kOutputs == PassOutputs::Elementwise || kOutputs == PassOutputs::ElementwiseAndGrad;
  static const bool kLoss = kSum || kElementwise;
  static const bool kGrad = kOutputs == PassOutputs::SumAndGrad ||
                            kOutputs == PassOutputs::ElementwiseAndGrad || kOutputs == PassOutputs::Grad;
};

// Op's loss and/or gradient at (x, y) with pos_weight pw: lanes V, or ew::UnitWeight in an
// unweighted pass.
template <class T, class Op, PassOutputs kOutputs, class V, class PW>
FASTLOSS_HD void evaluate(V x, V y, PW pw, V& loss, V& grad) {
  typedef Wants<kOutputs> want;
  if (want::kLoss && want::kGrad) {
    Op::template loss_and_grad<T>(x, y, pw, loss, grad);
  } else if (want::kLoss) {
    loss = Op::template loss<T>(x, y, pw);
  } else {
    grad = Op::template grad<T>(x, y, pw);
  }
}

// One element per lane: x, y its input and target, w its weight and pw its pos_weight (1 when
// the pass is unweighted), all widened to double lanes V; T the input's storage type (it picks
// the grade of the math: elementwise.h), grad_scale = grad_output [/ N]. Sets loss (times w)
// when kOutputs has a loss, grad (d loss / d x times w * grad_scale) when it has a gradient,
// and ORs into out_of_range the lanes where a probability is outside [0, 1].
template <class T, class Op, PassOutputs kOutputs, bool kWeighted, class V, class Flags>
FASTLOSS_HD void element(V x, V y, V w, V pw, double grad_scale, V& loss, V& grad,
                         Flags& out_of_range) {
  typedef Wants<kOutputs> want;
#ifndef FASTLOSS_PLANTED_FAULT_BCE_RANGE_FLAG_IGNORED
  if (Op::kInputIsProbability) out_of_range = out_of_range | ew::outside_unit_interval(x);
#endif
  loss = V{};
  grad = V{};
  if constexpr (kWeighted) {
    evaluate<T, Op, kOutputs>(x, y, pw, loss, grad);
  } else {
    (void)pw;
    evaluate<T, Op, kOutputs>(x, y, ew::UnitWeight{}, loss, grad);
  }
#ifdef FASTLOSS_PLANTED_FAULT_FUSED_LOSS_UNWEIGHTED
  if (kWeighted && !want::kGrad) loss = loss * w;
#else
  if (kWeighted) loss = loss * w;
#endif
  const double scale = Op::kGradFactor * grad_scale;
  if (kWeighted) {
    grad = grad * (w * scale);
  } else {
    grad = grad * scale;
  }
}

// sum += term with Kahan's compensation (the float64 reductions), lane by lane. Once the sum is
// infinite, the lost part is inf or NaN and would make the next sum NaN: it is dropped, so an
// infinite loss stays inf (a NaN term still makes the sum NaN through t). Testing t, not
// lost, keeps the test off the dependency chain.
template <class V>
FASTLOSS_HD void compensated_add(V& sum, V& compensation, V term) {
  const V y = term - compensation;
  const V t = sum + y;
  const V lost = (t - sum) - y;
  compensation = lanes::select(t - t == 0.0, lost, V{});
  sum = t;
}

}  // namespace pass
}  // namespace fastloss
