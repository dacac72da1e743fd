// The CPU kernels. Compiled once per instruction set with -DFASTLOSS_ISA=<namespace> (see
// CMakeLists.txt); everything here is in that namespace or file-local, so the builds never mix.
// Never build this file with -ffast-math: the reduction's error bound (kernels.h) relies on the
// compiler keeping the order of every addition, and Kahan compensation would be optimised away.
#include <algorithm>
#include <type_traits>

#if defined(FASTLOSS_PLANTED_FAULT_BCE_GRAD_PARALLEL) || defined(FASTLOSS_PLANTED_FAULT_THREAD_DEPENDENT_CHUNKS)
#include <omp.h>
#endif

#include "fastloss/loss_pass.h"
#include "kernels.h"

#ifndef FASTLOSS_ISA
#error "compile with -DFASTLOSS_ISA=<namespace>"
#endif

namespace fastloss {
namespace FASTLOSS_ISA {
namespace {

namespace ew = fastloss::elementwise;
using pass::Wants;

constexpr int kTileSize = 256;  // per-element terms are staged in an L1 tile, then accumulated

// Sums values[0..count) in a fixed pairwise tree, in place. The shape depends on count only.
double pairwise_sum(double* values, std::int64_t count) {
  if (count == 0) return 0.0;
  for (std::int64_t width = 1; width < count; width *= 2) {
    for (std::int64_t i = 0; i + width < count; i += 2 * width) values[i] += values[i + width];
  }
  return values[0];
}

// kCount round-robin double accumulators; with kCompensated, each lane is a Kahan sum. 8 plain
// lanes fill two AVX2 registers; a Kahan update is a 5-deep dependency chain, so compensated
// sums get 16 lanes to keep enough updates in flight (float64 MSE 1.64 -> 0.84 ns/element).
template <bool kCompensated>
struct LaneSums {
  static constexpr int kCount = kCompensated ? 16 : 8;
  double sum[kCount] = {};
  double compensation[kCount] = {};

  void add(int k, double term) {
    if (kCompensated) {
      pass::compensated_add(sum[k], compensation[k], term);
    } else {
      sum[k] += term;
    }
  }

  void add_tile(const double* tile, int count) {
    int j = 0;
    for (; j + kCount <= count; j += kCount) {
      for (int k = 0; k < kCount; ++k) add(k, tile[j + k]);
    }
    for (int k = 0; j < count; ++j, ++k) add(k, tile[j]);
  }

  double total() const {
    double lane[kCount];
    for (int k = 0; k < kCount; ++k) lane[k] = sum[k] - compensation[k];
    return pairwise_sum(lane, kCount);
  }
};

// Calls chunk(begin, end) for every chunk of [0, n): serially below kParallelThreshold or in a
// forked child, else split statically over the OpenMP threads. Returns the OR of the calls.
template <class ChunkFn>
int for_each_chunk(std::int64_t n, ChunkFn chunk) {
  const std::int64_t chunks = num_chunks(n);
  int flags = 0;
  if (n < kParallelThreshold || !openmp_usable()) {
    for (std::int64_t c = 0; c < chunks; ++c) {
      flags |= chunk(c, c * kChunkSize, std::min(n, (c + 1) * kChunkSize));
    }
  } else {
#ifdef FASTLOSS_PLANTED_FAULT_THREAD_DEPENDENT_CHUNKS
    const std::int64_t size = kChunkSize * omp_get_max_threads();
#pragma omp parallel for schedule(static) reduction(| : flags)
    for (std::int64_t c = 0; c < (n + size - 1) / size; ++c) {
      flags |= chunk(c, c * size, std::min(n, (c + 1) * size));
    }
    return flags;
#endif
#pragma omp parallel for schedule(static) reduction(| : flags)
    for (std::int64_t c = 0; c < chunks; ++c) {
      flags |= chunk(c, c * kChunkSize, std::min(n, (c + 1) * kChunkSize));
    }
  }
  return flags;
}

template <class T, class Op, PassOutputs kOutputs, bool kWeighted>
struct LossPassKernel {
  static constexpr bool kSum = Wants<kOutputs>::kSum;
  static constexpr bool kElementwise = Wants<kOutputs>::kElementwise;
  static constexpr bool kGrad = Wants<kOutputs>::kGrad;

  // Squared error is a handful of instructions per element: its sums are accumulated straight
  // into the lanes (27 % faster than staging them through the tile, measured). The BCE loops
  // are too large for GCC to vectorise in that shape, so they keep the tile.
  static constexpr bool kDirectLanes = kSum && std::is_same<Op, ew::SquaredError>::value;

  const LossPass<T>& p;

  // One contiguous run of elements (weights contiguous over it too). The loop body is
  // branch-free so the compiler vectorises it; returns nonzero if an input was out of range.
  template <class Lanes>
  int map(std::int64_t begin, int count, const T* w, const T* pw, double* tile, Lanes& lanes) const {
    int out_of_range = 0;
    if constexpr (kDirectLanes) {
      int j = 0;
      for (; j + Lanes::kCount <= count; j += Lanes::kCount) {
        for (int k = 0; k < Lanes::kCount; ++k) lanes.add(k, element(begin, j + k, w, pw, out_of_range));
      }
      for (int k = 0; j < count; ++j, ++k) {
        const double term = element(begin, j, w, pw, out_of_range);
#ifdef FASTLOSS_PLANTED_FAULT_SUM_TAIL_DROPPED
        if (j + 1 == count) break;
#endif
        lanes.add(k, term);
      }
    } else {
      for (int j = 0; j < count; ++j) {
        const double loss = element(begin, j, w, pw, out_of_range);
        if constexpr (kSum) tile[j] = loss;
      }
      if constexpr (kSum) lanes.add_tile(tile, count);
    }
    return out_of_range;
  }

  // Element begin + j: writes its elementwise outputs, returns its weighted loss (kSum).
  // The input is read once, before any write: out may be the input itself.
  double element(std::int64_t begin, int j, const T* w, const T* pw, int& out_of_range) const {
    const T xj = p.input[begin + j];
    const T yj = p.target[begin + j];
    double loss, grad;
    pass::element<Op, kOutputs, kWeighted>(xj, yj, kWeighted ? static_cast<double>(w[j]) : 1.0,
                                           kWeighted ? pw[j] : T(1), p.grad_scale, loss, grad,
                                           out_of_range);
#ifdef FASTLOSS_PLANTED_FAULT_BCE_GRAD_PARALLEL
    if (std::is_same<Op, ew::BinaryCrossEntropy>::value && std::is_same<T, float>::value &&
        omp_in_parallel() && xj > T(0.01) && xj < T(0.99)) {
      grad *= 1.5;
    }
#endif
    if constexpr (kElementwise) p.loss_out[begin + j] = static_cast<T>(loss);
    if constexpr (kGrad) p.grad_out[begin + j] = static_cast<T>(grad);
    return loss;
  }

  // Processes [begin, end); stores the chunk's sum when reducing.
  int chunk(std::int64_t index, std::int64_t begin, std::int64_t end) const {
    LaneSums<std::is_same<T, double>::value> lanes;
    alignas(64) double tile[kTileSize];
    int out_of_range = 0;
    std::int64_t i = begin;
    while (i < end) {
      // A segment ends where the input range or a weight's period does.
      std::int64_t segment_end = end;
      const T* w = nullptr;
      const T* pw = nullptr;
      if constexpr (kWeighted) {
#ifdef FASTLOSS_PLANTED_FAULT_WEIGHT_OFFSET_PER_CHUNK
        const std::int64_t w_offset = (i - begin) % p.weight_period;
#else
        const std::int64_t w_offset = i % p.weight_period;
#endif
        const std::int64_t pw_offset = i % p.pos_weight_period;
        segment_end = std::min({end, i + (p.weight_period - w_offset), i + (p.pos_weight_period - pw_offset)});
        w = p.weight + w_offset;
        pw = p.pos_weight + pw_offset;
      }
      while (i < segment_end) {
        const int count = static_cast<int>(std::min<std::int64_t>(kTileSize, segment_end - i));
        out_of_range |= map(i, count, w, pw, tile, lanes);
        i += count;
        if constexpr (kWeighted) {
          w += count;
          pw += count;
        }
      }
    }
    if constexpr (kSum) p.chunk_sums[index] = lanes.total();
    return out_of_range;
  }

  LossPassResult run() const {
    const int out_of_range = for_each_chunk(
        p.n, [this](std::int64_t index, std::int64_t begin, std::int64_t end) { return chunk(index, begin, end); });
    const double sum = kSum ? pairwise_sum(p.chunk_sums, num_chunks(p.n)) : 0.0;
    return LossPassResult{sum, out_of_range != 0};
  }
};

template <class T, class Op, PassOutputs kOutputs>
LossPassResult run_weighted_or_not(const LossPass<T>& p) {
  if (p.weight != nullptr) return LossPassKernel<T, Op, kOutputs, true>{p}.run();
  return LossPassKernel<T, Op, kOutputs, false>{p}.run();
}

template <class T, class Op>
LossPassResult run_op(PassOutputs outputs, const LossPass<T>& p) {
  switch (outputs) {
    case PassOutputs::Sum: return run_weighted_or_not<T, Op, PassOutputs::Sum>(p);
    case PassOutputs::SumAndGrad: return run_weighted_or_not<T, Op, PassOutputs::SumAndGrad>(p);
    case PassOutputs::Elementwise: return run_weighted_or_not<T, Op, PassOutputs::Elementwise>(p);
    case PassOutputs::ElementwiseAndGrad:
      return run_weighted_or_not<T, Op, PassOutputs::ElementwiseAndGrad>(p);
    case PassOutputs::Grad: return run_weighted_or_not<T, Op, PassOutputs::Grad>(p);
  }
  return LossPassResult{0.0, false};
}

template <class T>
LossPassResult run_loss_pass_impl(LossOp op, PassOutputs outputs, const LossPass<T>& p) {
  switch (op) {
    case LossOp::SquaredError:
      return run_op<T, pass::OpOf<LossOp::SquaredError>::type>(outputs, p);
    case LossOp::BinaryCrossEntropy:
      return run_op<T, pass::OpOf<LossOp::BinaryCrossEntropy>::type>(outputs, p);
    case LossOp::BinaryCrossEntropyWithLogits:
      return run_op<T, pass::OpOf<LossOp::BinaryCrossEntropyWithLogits>::type>(outputs, p);
  }
  return LossPassResult{0.0, false};
}

template <class T>
void sigmoid_impl(std::int64_t n, const T* x, T* out) {
  for_each_chunk(n, [=](std::int64_t, std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(ew::sigmoid(x[i]));
#ifdef FASTLOSS_PLANTED_FAULT_BASELINE_SIGMOID
#define FASTLOSS_STRING_OF(x) #x
#define FASTLOSS_STRING(x) FASTLOSS_STRING_OF(x)
    if (FASTLOSS_STRING(FASTLOSS_ISA)[0] == 'b') {  // the baseline build only
      for (std::int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(ew::sigmoid(x[i]) * (1.0 + 0x1p-15));
    }
#endif
    return 0;
  });
}

// Also reports whether an output lies outside [0, 1] (no sigmoid output: the forward's input
// passed by mistake), from the same pass; compared in T, which costs about a quarter more time
// in cache for float32 and a few per cent from memory (bench/NOTES.md). out may be output
// itself: each element is read before it is written.
template <class T>
bool sigmoid_backward_impl(std::int64_t n, const T* grad_output, const T* output, T* out) {
  const int out_of_range = for_each_chunk(n, [=](std::int64_t, std::int64_t begin, std::int64_t end) {
    int not_an_output = 0;
    for (std::int64_t i = begin; i < end; ++i) {
      const T y = output[i];
#ifndef FASTLOSS_PLANTED_FAULT_SIGMOID_BACKWARD_RANGE_IGNORED
      not_an_output |= ew::outside_unit_interval(y);
#endif
      out[i] = static_cast<T>(ew::sigmoid_backward(grad_output[i], y));
    }
    return not_an_output;
  });
  return out_of_range != 0;
}

}  // namespace

LossPassResult run_loss_pass(LossOp op, PassOutputs outputs, const LossPass<float>& p) {
  return run_loss_pass_impl(op, outputs, p);
}
LossPassResult run_loss_pass(LossOp op, PassOutputs outputs, const LossPass<double>& p) {
  return run_loss_pass_impl(op, outputs, p);
}
void sigmoid(std::int64_t n, const float* x, float* out) { sigmoid_impl(n, x, out); }
void sigmoid(std::int64_t n, const double* x, double* out) { sigmoid_impl(n, x, out); }
bool sigmoid_backward(std::int64_t n, const float* g, const float* y, float* out) {
  return sigmoid_backward_impl(n, g, y, out);
}
bool sigmoid_backward(std::int64_t n, const double* g, const double* y, double* out) {
  return sigmoid_backward_impl(n, g, y, out);
}

}  // namespace FASTLOSS_ISA
}  // namespace fastloss
