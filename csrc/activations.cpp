// tanh and relu, forward and backward (CPU), per element as fastloss/activations.h defines
// them. Compiled once per instruction set like kernels.cpp; declared in multiclass.h beside the
// row kernels (one table of the kernels the multi-class module entries pick from).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fastloss/activations.h"
#include "kernels.h"
#include "multiclass.h"
#include "storage.h"

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

// relu of a float or double as fastloss/activations.h's; of a 16-bit value through its double
// (exact both ways: relu only passes values through or makes them 0).
template <class T>
T relu(T x) {
  if constexpr (std::is_floating_point<T>::value) {
    return act::relu(x);
  } else {
    return from_double<T>(act::relu(to_double(x)));
  }
}

template <class T>
T relu_backward(T grad_output, T y) {
  if constexpr (std::is_floating_point<T>::value) {
    return act::relu_backward(grad_output, y);
  } else {
    return from_double<T>(act::relu_backward(to_double(grad_output), to_double(y)));
  }
}

template <class T>
void run_activation_impl(Activation op, std::int64_t n, const T* x, const T* y, T* out) {
  for_each_chunk(n, [=](std::int64_t begin, std::int64_t end) {
    switch (op) {
      case Activation::Tanh:
        for (std::int64_t i = begin; i < end; ++i) out[i] = from_double<T>(act::tanh(to_double(x[i])));
        break;
      case Activation::TanhBackward:
        for (std::int64_t i = begin; i < end; ++i) {
          out[i] = from_double<T>(act::tanh_backward(to_double(x[i]), to_double(y[i])));
        }
        break;
      case Activation::Relu:
        for (std::int64_t i = begin; i < end; ++i) out[i] = relu(x[i]);
        break;
      case Activation::ReluBackward:
        for (std::int64_t i = begin; i < end; ++i) out[i] = relu_backward(x[i], y[i]);
        break;
    }
  });
}

}  // namespace

#define FASTLOSS_ACTIVATION_OF(T)                                                        \
  void run_activation(Activation op, std::int64_t n, const T* x, const T* y, T* out) { \
    run_activation_impl(op, n, x, y, out);                                             \
  }
FASTLOSS_ACTIVATION_OF(float)
FASTLOSS_ACTIVATION_OF(double)
FASTLOSS_ACTIVATION_OF(Float16)
FASTLOSS_ACTIVATION_OF(BFloat16)

}  // namespace FASTLOSS_ISA
}  // namespace fastloss
