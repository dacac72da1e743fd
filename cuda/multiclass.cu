// fastloss CUDA kernels of the multi-class family: softmax, log_softmax and their backward
// passes, cross-entropy, tanh and relu. Compiled at run time by NVRTC like losses.cu (see
// python/fastloss/_cuda.py, which lists every instantiation it asks for), with the same
// options and rules: no standard headers, IEEE arithmetic, no float atomics, 64-bit indices.
//
// The per-row math is fastloss/softmax.h's and the per-element activations
// fastloss/activations.h's (the C++ kernels run the same code); this file adds the walk:
// a row is taken by a group of kGroup threads, a warp (kGroup = 32, rows of up to
// kWarpRowsUpTo classes: the dispatch picks) or the whole block (kGroup = kThreads, longer
// rows). Thread `lane` of the group takes the row's classes lane, lane + kGroup, ..., keeping
// an online softmax state (max, sum of exps, and for cross-entropy the sums of
// fastloss/softmax.h) in double; the group merges the states in a fixed butterfly (warp
// shuffles, then the warps' states in order through shared memory), so a row's result
// depends only on its length. Groups take rows grid-stride; the grid is a function of the row
// count only (_cuda.py), so sums have the same bits on every GPU.
//
// Loss sums: double-doubles, as on the CPU (fastloss/device_sums.h): a group adds its rows'
// losses in order (dd::add_term), the block adds its groups' pairs in a fixed tree and writes
// one unrounded pair; finish_pairs (one block) adds the pairs in a fixed order and rounds once
// (the mean by dd::divide_by_sum). The mean's divisor (the summed weights of the non-ignored
// targets) is summed the same way by check_targets before the loss pass, on the device; a
// class index outside [0, C) is reported as the lowest such row (an integer atomicMin:
// deterministic). A row's loss is the CPU's per-row math, but its exps and logs are evaluated
// on other paths than the CPU's short-row kernel, so the GPU's sums equal the CPU's bits only
// where the row losses agree bit for bit (the general scan, with the baseline build).
//
// Storage types: float, double and float16 (fastloss/device_half.h's Float16, as in
// losses.cu). Every value is widened to double where it is read (static_cast<double>: exact
// for each) and every stored value, a row's loss and a reduced loss (sums::stored_loss) is
// rounded once from its double (static_cast<T>): to nearest even, for float16 never through
// float32, as csrc/multiclass.cpp and activations.cpp do. The math between is the double math
// above for every storage type, so a float16 result is the float32 kernel's double value
// rounded to float16 instead of float32. (The CPU's float32 and float16 rows take float32-grade
// exps, softmax.h's exp_for_float_rows (~1e-10) or the AVX-512 build's table exp (~6e-12),
// these kernels math::exp for every type: the two doubles lie within ~1e-10 relative of each
// other, so a stored float16 has the CPU's bits except where the exact value lies about that
// close to a half-way point between two float16s.)
#include "fastloss/activations.h"
#include "fastloss/device_half.h"
#include "fastloss/device_sums.h"
#include "fastloss/loss_pass.h"
#include "fastloss/softmax.h"

#if !defined(FASTLOSS_CUDA_THREADS)
#error "compile with -DFASTLOSS_CUDA_THREADS=... (see _cuda.py)"
#endif

namespace fastloss {
namespace gpu {

namespace rw = fastloss::rows;

const int kThreads = FASTLOSS_CUDA_THREADS;
const int kWarps = kThreads / 32;
static_assert(kThreads % 32 == 0, "whole warps");

// ---- a row's state and its merge across a group ------------------------------------------------
struct RowState {
  double max, sum, offsets, coefficients;
};

__device__ __forceinline__ RowState empty_state() {
  RowState s;
  s.max = rw::negative_infinity();
  s.sum = 0.0;
  s.offsets = 0.0;
  s.coefficients = 0.0;
  return s;
}

__device__ __forceinline__ void merge_into(RowState& a, const RowState& b) {
  rw::merge(a.max, a.sum, a.offsets, a.coefficients, b.max, b.sum, b.offsets, b.coefficients);
}

__device__ __forceinline__ RowState shuffle_xor(const RowState& s, int mask) {
  RowState r;
  r.max = __shfl_xor_sync(0xffffffffu, s.max, mask);
  r.sum = __shfl_xor_sync(0xffffffffu, s.sum, mask);
  r.offsets = __shfl_xor_sync(0xffffffffu, s.offsets, mask);
  r.coefficients = __shfl_xor_sync(0xffffffffu, s.coefficients, mask);
  return r;
}

// Every lane of the warp ends with the merge of the warp's 32 states, in the same order
// (the lower half of each butterfly pair first, so all lanes compute identical bits).
__device__ __forceinline__ RowState warp_merge(RowState s) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int mask = 1; mask < 32; mask <<= 1) {
    const RowState other = shuffle_xor(s, mask);
    if (lane & mask) {
      RowState low = other;
      merge_into(low, s);
      s = low;
    } else {
      merge_into(s, other);
    }
  }
  return s;
}

__device__ __forceinline__ double warp_sum(double v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int mask = 1; mask < 32; mask <<= 1) {
    const double other = __shfl_xor_sync(0xffffffffu, v, mask);
    v = (lane & mask) ? other + v : v + other;
  }
  return v;
}

// The group of threads taking one row: a warp, or the whole block.
template <int kGroup>
struct Group {
  static __device__ __forceinline__ int lane() { return threadIdx.x & 31; }
  static __device__ __forceinline__ int index() { return threadIdx.x >> 5; }
  static const int kPerBlock = kWarps;
  static __device__ __forceinline__ RowState merge(RowState s) { return warp_merge(s); }
  static __device__ __forceinline__ double sum(double v) { return warp_sum(v); }
};

template <>
struct Group<kThreads> {
  static __device__ __forceinline__ int lane() { return threadIdx.x; }
  static __device__ __forceinline__ int index() { return 0; }
  static const int kPerBlock = 1;
  static __device__ __forceinline__ RowState merge(RowState s) {
    __shared__ RowState warp_states[kWarps];
    s = warp_merge(s);
    if ((threadIdx.x & 31) == 0) warp_states[threadIdx.x >> 5] = s;
    __syncthreads();
    RowState total = warp_states[0];
    for (int w = 1; w < kWarps; ++w) merge_into(total, warp_states[w]);
    __syncthreads();  // the states may be written again for the next row
    return total;
  }
  static __device__ __forceinline__ double sum(double v) {
    __shared__ double warp_sums[kWarps];
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
    __syncthreads();
    return total;
  }
};

// The first element of row r of a (outer, classes, inner) array; its classes are inner apart.
__device__ __forceinline__ long long row_start(long long r, long long classes, long long inner) {
  const long long o = r / inner;
  return o * classes * inner + (r - o * inner);
}

// One online step: element x (coefficient a, used when kCoefficients) into the state.
template <bool kCoefficients>
__device__ __forceinline__ void absorb(RowState& s, double x, double a) {
  const double m = rw::max_propagating_nan(s.max, x);
  s.sum = s.sum * rw::rescale(s.max, m) + rw::exp_shifted(x, m);
  if (kCoefficients) {
    s.offsets = rw::shift_offsets(s.offsets, s.coefficients, s.max, m) + (a == 0.0 ? 0.0 : a * (m - x));
    s.coefficients += a;
  }
  s.max = m;
}

// ---- softmax family ---------------------------------------------------------------------------
// kOp: RowOp. Forward ops read `first` (the input); backward ops read `first` (grad_output)
// and `second` (the forward output). out may be any of them (each thread reads its elements
// before the group's merge and writes them after it).
template <class T, int kOp, int kGroup>
__global__ void __launch_bounds__(kThreads)
row_pass(long long rows, long long classes, long long inner, const T* first, const T* second, T* out) {
  typedef Group<kGroup> G;
  const RowOp op = static_cast<RowOp>(kOp);
  const int lane = G::lane();
  for (long long r = static_cast<long long>(blockIdx.x) * G::kPerBlock + G::index(); r < rows;
       r += static_cast<long long>(gridDim.x) * G::kPerBlock) {
    const long long start = row_start(r, classes, inner);
    if (op == RowOp::Softmax || op == RowOp::LogSoftmax) {
      RowState s = empty_state();
      for (long long c = lane; c < classes; c += kGroup) absorb<false>(s, static_cast<double>(first[start + c * inner]), 0.0);
      s = G::merge(s);
      const double log_sum = math::log(s.sum);
      const double inverse_sum = 1.0 / s.sum;
      for (long long c = lane; c < classes; c += kGroup) {
        const double x = static_cast<double>(first[start + c * inner]);
        out[start + c * inner] = static_cast<T>(op == RowOp::LogSoftmax ? rw::log_softmax_element(x, s.max, log_sum)
                                                                        : rw::softmax_element(x, s.max, inverse_sum));
      }
    } else {
      double partial = 0.0;
      for (long long c = lane; c < classes; c += kGroup) {
        const double g = static_cast<double>(first[start + c * inner]);
        partial += op == RowOp::SoftmaxBackward ? g * static_cast<double>(second[start + c * inner]) : g;
      }
      const double total = G::sum(partial);
      for (long long c = lane; c < classes; c += kGroup) {
        const double g = static_cast<double>(first[start + c * inner]);
        const double y = static_cast<double>(second[start + c * inner]);
        out[start + c * inner] = static_cast<T>(op == RowOp::SoftmaxBackward ? rw::softmax_backward_element(g, y, total)
                                                                             : rw::log_softmax_backward_element(g, y, total));
      }
    }
  }
}

// ---- cross-entropy ------------------------------------------------------------------------------
// The targets before the loss pass: per block, the summed weights of its non-ignored class
// indices as an unrounded double-double (thread t takes rows t, t + T, ... of the grid; pairs
// into block_sums[2 b], [2 b + 1]), and the lowest row holding an index outside [0, classes)
// (*bad_row starts at rows: none).
template <class T, class Index>
__global__ void __launch_bounds__(kThreads)
check_targets(long long rows, long long classes, const Index* target, const T* class_weight, long long ignore_index,
              double* block_sums, unsigned long long* bad_row) {
  double hi = 0.0, lo = 0.0;
  const long long stride = static_cast<long long>(gridDim.x) * kThreads;
  for (long long r = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; r < rows; r += stride) {
    const long long y = static_cast<long long>(target[r]);
    if (y == ignore_index) continue;
    if (y < 0 || y >= classes) {
      atomicMin(bad_row, static_cast<unsigned long long>(r));
      continue;
    }
    dd::add_term(hi, lo, class_weight != nullptr ? static_cast<double>(class_weight[y]) : 1.0);
  }
  sums::write_block_pair<kThreads>(hi, lo, block_sums);
}

// The `count` block pairs of check_targets or of a loss pass added in a fixed order
// (sums::add_in_order) into the normalized double-double (hi, lo); then, where the pointers
// are not null: pair_out[0], [1] = (hi, lo) (the divisor; a Dask block's partial), and
// *out_t = (hi, lo), divided by the divisor pair for 'mean' (dd::divide_by_sum, as the CPU's
// reduced_loss), rounded once to T. One block.
template <class T>
__global__ void __launch_bounds__(kThreads)
finish_pairs(const double* partials, long long count, const double* divisor, T* out_t, double* pair_out) {
  double hi, lo;
  sums::add_in_order<kThreads>(partials, count, hi, lo);
  if (threadIdx.x != 0) return;
  if (pair_out != nullptr) {
    pair_out[0] = hi;
    pair_out[1] = lo;
  }
  if (out_t != nullptr) {
    if (divisor != nullptr) dd::divide_by_sum(hi, lo, divisor[0], divisor[1], hi, lo);
    *out_t = sums::stored_loss<T>(hi, lo);
  }
}

// A row's loss into loss_out (kElementwise) and the group's double-double sum (kSum).
template <bool kSum, bool kElementwise, class T>
__device__ __forceinline__ void add_loss(double loss, long long r, T* loss_out, double& hi, double& lo) {
  if (kElementwise) loss_out[r] = static_cast<T>(loss);
  if (kSum) dd::add_term(hi, lo, loss);
}

// One cross-entropy pass of kOutputs (PassOutputs) over rows of logits; kTargetKind:
// TargetKind (the class indices' type, or probabilities of the input's shape). grad_output:
// one upstream gradient per row or null (then grad_scale); divisor: the mean's divisor on the
// device (a normalized double-double; the gradient divides by its high word, as the CPU's
// row_scale), or null ('sum', 'none'). Writes block_sums (Sum*: pairs, as check_targets'),
// loss_out (Elementwise*) and
// grad_out (*Grad; may be the input: each element is read before the group's merge and
// written after it, by the thread that read it).
template <class T, int kOutputs, int kTargetKind, int kGroup>
__global__ void __launch_bounds__(kThreads)
cross_entropy(long long rows, long long classes, long long inner, const T* input, const void* target_data,
              const T* class_weight, long long ignore_index, double label_smoothing, const T* grad_output,
              double grad_scale, const double* divisor, T* loss_out, T* grad_out, double* block_sums) {
  typedef Group<kGroup> G;
  const PassOutputs kPass = static_cast<PassOutputs>(kOutputs);
  const bool kSum = pass::Wants<kPass>::kSum;
  const bool kElementwise = pass::Wants<kPass>::kElementwise;
  const bool kGrad = pass::Wants<kPass>::kGrad;
  const TargetKind kind = static_cast<TargetKind>(kTargetKind);
  const bool probabilities = kind == TargetKind::Probabilities;
  const int lane = G::lane();
  const double keep = 1.0 - label_smoothing;
  const double spread = label_smoothing / static_cast<double>(classes);
  const bool coefficients = probabilities || label_smoothing != 0.0;
  double group_hi = 0.0, group_lo = 0.0;

  for (long long r = static_cast<long long>(blockIdx.x) * G::kPerBlock + G::index(); r < rows;
       r += static_cast<long long>(gridDim.x) * G::kPerBlock) {
    const long long start = row_start(r, classes, inner);
    long long y = -1;
    if (kind == TargetKind::ClassIndex64) y = static_cast<const long long*>(target_data)[r];
    if (kind == TargetKind::ClassIndex32) y = static_cast<const int*>(target_data)[r];
    double loss = 0.0;
    if (probabilities || y != ignore_index) {
      const T* probs = probabilities ? static_cast<const T*>(target_data) + start : nullptr;
      const double x_target = probabilities ? 0.0 : static_cast<double>(input[start + y * inner]);
      const double w_target =
          probabilities ? 0.0 : (class_weight != nullptr ? static_cast<double>(class_weight[y]) : 1.0);
      RowState s = empty_state();
      for (long long c = lane; c < classes; c += kGroup) {
        const double x = static_cast<double>(input[start + c * inner]);
        if (coefficients) {
          const double w = class_weight != nullptr ? static_cast<double>(class_weight[c]) : 1.0;
          const double t = probabilities ? static_cast<double>(probs[c * inner]) : 0.0;
          absorb<true>(s, x, rw::coefficient(w, t, keep, spread));
        } else {
          absorb<false>(s, x, 0.0);
        }
      }
      s = G::merge(s);
      if (!probabilities) {
        const double a = keep * w_target;
        s.offsets += a == 0.0 ? 0.0 : a * (s.max - x_target);
        s.coefficients += a;
      }
      const double log_sum = math::log(s.sum);
      loss = s.coefficients == 0.0 ? 0.0 : rw::row_loss(s.offsets, s.coefficients, log_sum);
      if (kGrad) {
        double scale = grad_output != nullptr ? static_cast<double>(grad_output[r]) : grad_scale;
        if (divisor != nullptr) scale = scale / divisor[0];
        const double k = s.coefficients * scale / s.sum;
        for (long long c = lane; c < classes; c += kGroup) {
          const double x = static_cast<double>(input[start + c * inner]);
          const double e = rw::exp_shifted(x, s.max);
          double g = e * k;
          if (coefficients) {
            const double w = class_weight != nullptr ? static_cast<double>(class_weight[c]) : 1.0;
            const double t = probabilities ? static_cast<double>(probs[c * inner]) : 0.0;
            double a = rw::coefficient(w, t, keep, spread);
            if (c == y) a += keep * w_target;
            g = rw::grad_element(e, k, scale * a);
          } else if (c == y) {
            g = rw::target_grad(e, s.sum, scale * w_target);
          }
          grad_out[start + c * inner] = static_cast<T>(s.coefficients == 0.0 ? 0.0 : g);
        }
      }
    } else if (kGrad) {
      for (long long c = lane; c < classes; c += kGroup) grad_out[start + c * inner] = static_cast<T>(0.0);
    }
    if (lane == 0) add_loss<kSum, kElementwise>(loss, r, loss_out, group_hi, group_lo);
  }
  if (kSum) {
    // the groups' sums in the block's fixed tree (lane 0 of each holds one; the others add 0)
    sums::write_block_pair<kThreads>(lane == 0 ? group_hi : 0.0, lane == 0 ? group_lo : 0.0, block_sums);
  }
}

// ---- tanh and relu -----------------------------------------------------------------------------
// relu of a float or double: fastloss/activations.h's on the value itself; of a Float16 (which
// has no comparisons) through its double, exact both ways, as csrc/activations.cpp's 16-bit
// relu: a value passes or becomes +0, -0.0 keeps its sign, a NaN comes out quiet (its payload
// dropped by the rounding, on both).
template <class T>
__device__ __forceinline__ T relu_of(T x) {
  return activations::relu(x);
}
__device__ __forceinline__ Float16 relu_of(Float16 x) {
  return Float16(activations::relu(static_cast<double>(x)));
}
template <class T>
__device__ __forceinline__ T relu_backward_of(T grad_output, T y) {
  return activations::relu_backward(grad_output, y);
}
__device__ __forceinline__ Float16 relu_backward_of(Float16 grad_output, Float16 y) {
  return Float16(activations::relu_backward(static_cast<double>(grad_output), static_cast<double>(y)));
}

// kOp: Activation. Forward ops read x; backward ops read grad_output (x) and the output (y).
template <class T, int kOp>
__global__ void __launch_bounds__(kThreads)
activation(long long n, const T* x, const T* y, T* out) {
  const Activation op = static_cast<Activation>(kOp);
  const long long stride = static_cast<long long>(gridDim.x) * kThreads;
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    T r;
    if (op == Activation::Tanh) r = static_cast<T>(activations::tanh(static_cast<double>(x[i])));
    if (op == Activation::TanhBackward) {
      r = static_cast<T>(activations::tanh_backward(static_cast<double>(x[i]), static_cast<double>(y[i])));
    }
    if (op == Activation::Relu) r = relu_of(x[i]);
    if (op == Activation::ReluBackward) r = relu_backward_of(x[i], y[i]);
    out[i] = r;
  }
}

}  // namespace gpu
}  // namespace fastloss
