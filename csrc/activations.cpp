// tanh and relu, forward and backward (CPU), per element as fastloss/activations.h defines
// them. Compiled once per instruction set like kernels.cpp; declared in multiclass.h beside the
// row kernels (one table of the kernels the multi-class module entries pick from).
#include <algorithm>
#include <cstdint>

#include "fastloss/activations.h"
#include "kernels.h"
#include "multiclass.h"

#ifndef FASTLOSS_ISA
#error "compile with -DFASTLOSS_ISA=<namespace>"
#endif

namespace fastloss {
namespace FASTLOSS_ISA {
namespace {

namespace act = fastloss::activations;

// body(begin, end) over chunks of kChunkSize elements, serially for small n or in a forked child.
template <class Body>
void for_each_chunk(std::int64_t n, Body body) {
  const std::int64_t chunks = num_chunks(n);
  if (n < kParallelThreshold || !openmp_usable()) {
    for (std::int64_t c = 0; c < chunks; ++c) body(c * kChunkSize, std::min(n, (c + 1) * kChunkSize));
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) body(c * kChunkSize, std::min(n, (c + 1) * kChunkSize));
}

template <class T>
void run_activation_impl(Activation op, std::int64_t n, const T* x, const T* y, T* out) {
  for_each_chunk(n, [=](std::int64_t begin, std::int64_t end) {
    switch (op) {
      case Activation::Tanh:
        for (std::int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(act::tanh(static_cast<double>(x[i])));
        break;
      case Activation::TanhBackward:
        for (std::int64_t i = begin; i < end; ++i) {
          out[i] = static_cast<T>(act::tanh_backward(static_cast<double>(x[i]), static_cast<double>(y[i])));
        }
        break;
      case Activation::Relu:
        for (std::int64_t i = begin; i < end; ++i) out[i] = act::relu(x[i]);
        break;
      case Activation::ReluBackward:
        for (std::int64_t i = begin; i < end; ++i) out[i] = act::relu_backward(x[i], y[i]);
        break;
    }
  });
}

}  // namespace

void run_activation(Activation op, std::int64_t n, const float* x, const float* y, float* out) {
  run_activation_impl(op, n, x, y, out);
}
void run_activation(Activation op, std::int64_t n, const double* x, const double* y, double* out) {
  run_activation_impl(op, n, x, y, out);
}

}  // namespace FASTLOSS_ISA
}  // namespace fastloss
