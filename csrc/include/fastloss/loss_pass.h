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

// One element: x, y its input and target, w its weight and pw its pos_weight (1 when the pass
// is unweighted), grad_scale = grad_output [/ N]. Sets loss (times w) when kOutputs has a loss,
// grad (d loss / d x times w * grad_scale) when it has a gradient, and ORs out_of_range for a
// probability outside [0, 1]. Results through references, not a returned struct: GCC stops
// vectorising a loop around a function that returns a struct of two values.
template <class Op, PassOutputs kOutputs, bool kWeighted, class T>
FASTLOSS_HD void element(T x, T y, double w, T pw, double grad_scale, double& loss, double& grad,
                         int& out_of_range) {
  typedef Wants<kOutputs> want;
#ifndef FASTLOSS_PLANTED_FAULT_BCE_RANGE_FLAG_IGNORED
  if (Op::kInputIsProbability) out_of_range |= ew::outside_unit_interval(x);
#endif
  loss = 0.0;
  grad = 0.0;
  if (want::kLoss && want::kGrad) {
    const ew::LossAndGrad both = Op::loss_and_grad(x, y, pw);
    loss = both.loss;
    grad = both.grad;
  } else if (want::kLoss) {
    loss = Op::loss(x, y, pw);
  } else {
    grad = Op::grad(x, y, pw);
  }
#ifdef FASTLOSS_PLANTED_FAULT_FUSED_LOSS_UNWEIGHTED
  if (kWeighted && !want::kGrad) loss *= w;
#else
  if (kWeighted) loss *= w;
#endif
  grad *= kWeighted ? w * grad_scale : grad_scale;
}

// sum += term with Kahan's compensation (the float64 reductions). Once the sum is infinite,
// the lost part is inf or NaN and would make the next sum NaN: it is dropped, so an infinite
// loss stays inf (a NaN term still makes the sum NaN through t). Testing t, not lost, keeps
// the test off the dependency chain.
FASTLOSS_HD void compensated_add(double& sum, double& compensation, double term) {
  const double y = term - compensation;
  const double t = sum + y;
  const double lost = (t - sum) - y;
  compensation = t - t == 0.0 ? lost : 0.0;
#ifdef FASTLOSS_PLANTED_FAULT_KAHAN_DROPPED
  compensation = 0.0;
#endif
  sum = t;
}

}  // namespace pass
}  // namespace fastloss
