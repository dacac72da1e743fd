// The CPU kernels. Compiled once per instruction set with -DFASTLOSS_ISA=<namespace> (see
// CMakeLists.txt); everything here is in that namespace or file-local, so the builds never mix.
// Never build this file with -ffast-math: the reduction's error bound (kernels.h) relies on the
// compiler keeping every addition as written, and the double-double errors would be optimised
// away.
//
// The loops run on explicit vectors of doubles (fastloss/lanes.h), the widest the build's
// instruction set has: 2 (SSE2), 4 (AVX2) or 8 (AVX-512) lanes. float32 inputs are widened on
// load and rounded back on store; a run's last, partial vector goes through a zero-padded copy.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(FASTLOSS_PLANTED_FAULT_BCE_GRAD_PARALLEL)
#include <omp.h>
#endif

#include "fastloss/double_double.h"
#include "fastloss/loss_pass.h"
#include "kernels.h"

#ifndef FASTLOSS_ISA
#error "compile with -DFASTLOSS_ISA=<namespace>"
#endif

namespace fastloss {
namespace FASTLOSS_ISA {
namespace {

namespace ew = fastloss::elementwise;
using lanes::select;
using pass::Wants;

#if defined(__AVX512F__)
typedef lanes::Double8 V;
#elif defined(__AVX__)
typedef lanes::Double4 V;
#else
typedef lanes::Double2 V;
#endif
constexpr int kWidth = lanes::Traits<V>::kWidth;
typedef lanes::Traits<V>::Mask Mask;

// ---- loads and stores: kWidth elements of T as double lanes -------------------------------
V load(const double* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

V load(const float* p) {
#if defined(__AVX512F__)
  return (V)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#elif defined(__AVX__)
  return (V)_mm256_cvtps_pd(_mm_loadu_ps(p));
#else
  return (V)_mm_cvtps_pd(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
#endif
}

void store(double* p, V v) { std::memcpy(p, &v, sizeof v); }

void store(float* p, V v) {
#if defined(__AVX512F__)
  _mm256_storeu_ps(p, _mm512_cvtpd_ps((__m512d)v));
#elif defined(__AVX__)
  _mm_storeu_ps(p, _mm256_cvtpd_ps((__m256d)v));
#else
  _mm_store_sd(reinterpret_cast<double*>(p), _mm_castps_pd(_mm_cvtpd_ps((__m128d)v)));
#endif
}

// The first `count` < kWidth elements, the other lanes 0.
template <class T>
V load_partial(const T* p, int count) {
  T padded[kWidth] = {};
  std::memcpy(padded, p, sizeof(T) * count);
  return load(padded);
}

template <class T>
void store_partial(T* p, V v, int count) {
  T padded[kWidth];
  store(padded, v);
  std::memcpy(p, padded, sizeof(T) * count);
}

// Lanes [0, count) of a vector: the elements of a partial vector.
Mask first_lanes(int count) {
  V index;
  for (int k = 0; k < kWidth; ++k) index[k] = k;
  return index < static_cast<double>(count);
}

// ---- the reduction -------------------------------------------------------------------------
// Adds the double-doubles (values[2 i], values[2 i + 1]), i < count, in a fixed pairwise tree
// (dd::accumulate), in place; the total, not normalized, is left in values[0], values[1]. The
// shape depends on count only.
void pairwise_sum(double* values, std::int64_t count) {
  if (count == 0) {
    values[0] = values[1] = 0.0;
    return;
  }
  for (std::int64_t width = 1; width < count; width *= 2) {
    for (std::int64_t i = 0; i + width < count; i += 2 * width) {
      dd::accumulate(values[2 * i], values[2 * i + 1], values[2 * (i + width)], values[2 * (i + width) + 1]);
    }
  }
}

// a + b, computed as fma(a, one, b) where the build has FMA (the same rounded sum). An update
// has 7 adds besides the loss's own, all on Zen's two FADD pipes while the two FMA pipes idle:
// with every add there the float32 reduction fell from the read ceiling (24 against 18 ms at
// N = 1e8); with 4 of them moved here it is back at it (bench/NOTES.md, issue 17). `one` is 1.0
// made opaque to the compiler (LaneSums), which would otherwise fold the fma back into an add.
V add_on_fma_pipe(V a, V b, V one) {
#if defined(__AVX512F__)
  return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)one, (__m512d)b);
#elif defined(__FMA__)
  return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)one, (__m256d)b);
#else
  (void)one;
  return a + b;
#endif
}

// kCount vectors of double-double accumulators taking the terms round-robin (dd::add_term's
// arithmetic: the rounded sum in hi, each addition's exact error summed in lo). An update's only
// dependency chains are one addition on hi and one on lo, so 4 vectors keep enough in flight.
struct LaneSums {
  static constexpr int kCount = 4;
  V hi[kCount] = {};
  V lo[kCount] = {};
  V one = opaque_one();

  static V opaque_one() {
    V v = lanes::splat<V>(1.0);
    asm("" : "+x"(v));
    return v;
  }

  // TwoSum(hi, term) and lo += its error, as dd::add_term, with 4 of the 7 adds on the FMA pipes
  void add(int k, V term) {
    const V s = hi[k] + term;
    const V bb = add_on_fma_pipe(s, -hi[k], one);
    const V e = (hi[k] - add_on_fma_pipe(s, -bb, one)) + add_on_fma_pipe(term, -bb, one);
    hi[k] = s;
    lo[k] = add_on_fma_pipe(lo[k], e, one);
  }

  // The lanes in a fixed pairwise tree of double-double additions (not normalized): the
  // vectors first (whole-register operations), then the lanes of the last one.
  void total(double* out) const {
    V h[kCount], l[kCount];
    for (int k = 0; k < kCount; ++k) {
      h[k] = hi[k];
      l[k] = lo[k];
#ifdef FASTLOSS_PLANTED_FAULT_LANE_LO_DROPPED
      l[k] = V{};
#endif
    }
    for (int width = kCount / 2; width >= 1; width /= 2) {
      for (int k = 0; k < width; ++k) {
        h[k] = h[2 * k];
        l[k] = l[2 * k];
        dd::accumulate(h[k], l[k], h[2 * k + 1], l[2 * k + 1]);
      }
    }
    double lane[2 * kWidth];
    for (int j = 0; j < kWidth; ++j) {
      lane[2 * j] = h[0][j];
      lane[2 * j + 1] = l[0][j];
    }
    pairwise_sum(lane, kWidth);
    out[0] = lane[0];
    out[1] = lane[1];
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
#pragma omp parallel for schedule(static) reduction(| : flags)
    for (std::int64_t c = 0; c < chunks; ++c) {
      flags |= chunk(c, c * kChunkSize, std::min(n, (c + 1) * kChunkSize));
    }
  }
  return flags;
}

// ---- the loss pass -------------------------------------------------------------------------
template <class T, class Op, PassOutputs kOutputs, bool kWeighted>
struct LossPassKernel {
  static constexpr bool kSum = Wants<kOutputs>::kSum;
  static constexpr bool kElementwise = Wants<kOutputs>::kElementwise;
  static constexpr bool kGrad = Wants<kOutputs>::kGrad;
  typedef LaneSums Lanes;

  const LossPass<T>& p;

  // The arrays and the scale, as values: the stores go through may-alias vector types, after
  // which the compiler would reload every field of `p` (measured: +3 instructions a vector).
  struct Streams {
    const T* input;
    const T* target;
    T* loss_out;
    T* grad_out;
    double grad_scale;
  };

  // The vector of elements i .. i + kWidth (kWhole), or its first `count` (weights w and pw
  // at the same offsets): writes its elementwise outputs, returns its weighted losses (0 in
  // the lanes past count). Everything is read before anything is written: out may be the input.
  template <bool kWhole>
  static V step(Streams s, std::int64_t i, const T* w, const T* pw, int count, Mask& out_of_range) {
    const auto read = [count](const T* a) { return kWhole ? load(a) : load_partial(a, count); };
    const V x = read(s.input + i);
    const V y = read(s.target + i);
    const V one = lanes::splat<V>(1.0);
    const V wv = kWeighted ? read(w) : one;
    const V pwv = kWeighted ? read(pw) : one;
    V loss, grad;
    pass::element<T, Op, kOutputs, kWeighted>(x, y, wv, pwv, s.grad_scale, loss, grad, out_of_range);
#ifdef FASTLOSS_PLANTED_FAULT_BCE_GRAD_PARALLEL
    if (std::is_same<Op, ew::BinaryCrossEntropy>::value && std::is_same<T, float>::value && omp_in_parallel()) {
      grad = select((x > 0.01) & (x < 0.99), grad * 1.5, grad);
    }
#endif
    if (kWhole) {
      if constexpr (kElementwise) store(s.loss_out + i, loss);
      if constexpr (kGrad) store(s.grad_out + i, grad);
      return loss;
    }
    if constexpr (kElementwise) store_partial(s.loss_out + i, loss, count);
    if constexpr (kGrad) store_partial(s.grad_out + i, grad, count);
#ifdef FASTLOSS_PLANTED_FAULT_SUM_TAIL_DROPPED
    count -= 1;
#endif
    return select(first_lanes(count), loss, V{});
  }

  // Elements [i, end) of one contiguous run (weights contiguous over it too, from w and pw).
  static void run(Streams s, std::int64_t i, std::int64_t end, const T* w, const T* pw, Lanes& lanes,
                  Mask& out_of_range) {
    constexpr int kBlock = Lanes::kCount * kWidth;
    for (; i + kBlock <= end; i += kBlock) {
      for (int k = 0; k < Lanes::kCount; ++k) {
        // (no offset on the null pointers of an unweighted pass: UBSan rightly objects)
        const V loss = kWeighted ? step<true>(s, i + k * kWidth, w + k * kWidth, pw + k * kWidth, kWidth, out_of_range)
                                 : step<true>(s, i + k * kWidth, w, pw, kWidth, out_of_range);
        if constexpr (kSum) lanes.add(k, loss);
      }
      if constexpr (kWeighted) {
        w += kBlock;
        pw += kBlock;
      }
    }
    int k = 0;
    for (; i < end; i += kWidth, ++k) {
      const int count = static_cast<int>(std::min<std::int64_t>(kWidth, end - i));
      const V loss = count == kWidth ? step<true>(s, i, w, pw, kWidth, out_of_range)
                                     : step<false>(s, i, w, pw, count, out_of_range);
      if constexpr (kSum) lanes.add(k, loss);
      if constexpr (kWeighted) {
        w += kWidth;
        pw += kWidth;
      }
    }
  }

  // Processes [begin, end); stores the chunk's sum when reducing.
  int chunk(std::int64_t index, std::int64_t begin, std::int64_t end) const {
    Lanes lanes;
    Mask out_of_range = {};
    const Streams streams{p.input, p.target, p.loss_out, p.grad_out, p.grad_scale};
    std::int64_t i = begin;
    while (i < end) {
      // A run ends where the input range or a weight's period does.
      std::int64_t run_end = end;
      const T* w = nullptr;
      const T* pw = nullptr;
      if constexpr (kWeighted) {
#ifdef FASTLOSS_PLANTED_FAULT_WEIGHT_OFFSET_PER_CHUNK
        const std::int64_t w_offset = (i - begin) % p.weight_period;
#else
        const std::int64_t w_offset = i % p.weight_period;
#endif
        const std::int64_t pw_offset = i % p.pos_weight_period;
        run_end = std::min({end, i + (p.weight_period - w_offset), i + (p.pos_weight_period - pw_offset)});
        w = p.weight + w_offset;
        pw = p.pos_weight + pw_offset;
      }
      run(streams, i, run_end, w, pw, lanes, out_of_range);
      i = run_end;
    }
    if constexpr (kSum) lanes.total(p.chunk_sums + 2 * index);
    return lanes::any(out_of_range) ? 1 : 0;
  }

  LossPassResult run() const {
    const int out_of_range = for_each_chunk(
        p.n, [this](std::int64_t index, std::int64_t begin, std::int64_t end) { return chunk(index, begin, end); });
    LossPassResult result{0.0, 0.0, out_of_range != 0};
    if constexpr (kSum) {
      pairwise_sum(p.chunk_sums, num_chunks(p.n));
      result.sum = p.chunk_sums[0];
      result.sum_lo = p.chunk_sums[1];
      dd::normalize(result.sum, result.sum_lo);
    }
    return result;
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
  return LossPassResult{0.0, 0.0, false};
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
  return LossPassResult{0.0, 0.0, false};
}

// ---- elementwise maps ------------------------------------------------------------------------
// out[i] = f(a[i]) over [begin, end), a vector at a time (out may be a).
template <class T, class F>
void map_chunk(std::int64_t begin, std::int64_t end, T* out, F f, const T* a) {
  std::int64_t i = begin;
  for (; i + kWidth <= end; i += kWidth) store(out + i, f(load(a + i)));
  if (i < end) {
    const int count = static_cast<int>(end - i);
    store_partial(out + i, f(load_partial(a + i, count)), count);
  }
}

// out[i] = f(a[i], b[i]) over [begin, end) (out may be a or b).
template <class T, class F>
void map_chunk(std::int64_t begin, std::int64_t end, T* out, F f, const T* a, const T* b) {
  std::int64_t i = begin;
  for (; i + kWidth <= end; i += kWidth) store(out + i, f(load(a + i), load(b + i)));
  if (i < end) {
    const int count = static_cast<int>(end - i);
    store_partial(out + i, f(load_partial(a + i, count), load_partial(b + i, count)), count);
  }
}

template <class T>
void sigmoid_impl(std::int64_t n, const T* x, T* out) {
  for_each_chunk(n, [=](std::int64_t, std::int64_t begin, std::int64_t end) {
    map_chunk(begin, end, out, [](V v) { return ew::sigmoid<T>(v); }, x);
#ifdef FASTLOSS_PLANTED_FAULT_BASELINE_SIGMOID
#define FASTLOSS_STRING_OF(x) #x
#define FASTLOSS_STRING(x) FASTLOSS_STRING_OF(x)
    if (FASTLOSS_STRING(FASTLOSS_ISA)[0] == 'b') {  // the baseline build only
      map_chunk(begin, end, out, [](V v) { return ew::sigmoid<T>(v) * (1.0 + 0x1p-15); }, x);
    }
#endif
    return 0;
  });
}

// Also reports whether an output lies outside [0, 1] (no sigmoid output: the forward's input
// passed by mistake), from the same pass; compared on the double lanes (exact for float32), which
// costs some time in cache and little from memory (bench/NOTES.md). out may be output
// itself: each element is read before it is written.
template <class T>
bool sigmoid_backward_impl(std::int64_t n, const T* grad_output, const T* output, T* out) {
  const int out_of_range = for_each_chunk(n, [=](std::int64_t, std::int64_t begin, std::int64_t end) {
    Mask not_an_output = {};  // a partial vector's padding lanes are 0: inside [0, 1]
    map_chunk(begin, end, out, [&not_an_output](V g, V y) {
#ifndef FASTLOSS_PLANTED_FAULT_SIGMOID_BACKWARD_RANGE_IGNORED
      not_an_output = not_an_output | ew::outside_unit_interval(y);
#endif
      return ew::sigmoid_backward(g, y);
    }, grad_output, output);
    return lanes::any(not_an_output) ? 1 : 0;
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
