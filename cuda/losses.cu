// fastloss CUDA kernels, compiled at run time by NVRTC through cupy.RawModule (see
// python/fastloss/_cuda.py, which also lists every template instantiation it asks for).
//
// The per-element math and the body of a loss pass are the shared headers' (csrc/include/
// fastloss/elementwise.h and loss_pass.h, installed as fastloss/include/fastloss/): this file
// only adds the parallel structure, loads and stores. The math runs on one double per thread
// (the lane type of fastloss/lanes.h) for float32 inputs too, as on the CPU: on the data-centre
// GPUs it targets FP64 runs at half the FP32 rate, ~40 double operations an element stay far
// below what HBM delivers; on a GPU with 1/64-rate FP64 the BCE kernels would be compute-bound. The launch geometry comes from _cuda.py
// as -D options: FASTLOSS_CUDA_THREADS (threads per block) and FASTLOSS_CUDA_GROUP_BYTES.
//
// Rules for this file:
// - No standard headers (NVRTC has none): `long long`, not <cstdint>.
// - No -use_fast_math, no float atomics: the reduction's order is fixed by N alone, so every
//   run (and every GPU) gives the same bits for the same inputs.
// - 64-bit element indices everywhere: N > 2^31 works.
//
// Work split, the same for every kernel here: the N elements form groups of kWidth<T>
// consecutive elements (4 floats or 2 doubles: 16 bytes; 4 halves: 8 bytes); thread t of the grid takes groups
// t, t + T, t + 2T, ... (T = grid threads, a function of N only). A group is read with one
// 16-byte (8-byte) load per array when all the pointers are 16-byte aligned and the group is whole,
// else element by element; the elements of a group are processed in the same order either
// way, so alignment never changes a result's bits.
//
// Reductions (the same arithmetic as the CPU's, csrc/kernels.h; fastloss/double_double.h):
// each thread adds its terms (doubles, for every storage type) into a double-double (hi, lo)
// by dd::add_term; the block adds its threads' pairs by dd::accumulate in a fixed tree (warp
// shuffles of both words, then the same over the warp sums) and writes its pair, unrounded;
// finish_sum (one block, a second launch) adds the pairs in a fixed order, normalizes, divides
// by N as a double-double for 'mean' and rounds once to the storage type exactly as the CPU
// module does (csrc/module.cpp final_value and scalar_of: hi for float64; hi rounded to odd with
// lo as sticky bit, then to float32 or float16). Every order is a function of N only (the grid
// is: _cuda.py), never of timing: no float atomics.
//
// What is guaranteed. A thread adds k <= W * ceil(N / (W * 8192 * 256)) terms (W the group
// width: k <= 1024 up to N = 2^31, k = N / 2^21 beyond), with an error below k^2 u^2 sum|terms|
// (u = 2^-53; the CPU's bound for its lanes), and the < 50 accumulate steps that lead from a
// thread to the total (5 + 3 levels in a block, <= 32 sequential ones and 8 levels in
// finish_sum) add at most 2 u^2 each of what they add: so the result is the exact sum (mean)
// of the per-element terms correctly rounded to the dtype, unless the exact value lies within
// ~(k^2 + 100) u^2 sum|terms| (1.3e-26 relative for N <= 2^31) of a rounding boundary, or a
// partial sum overflows. The CPU's result is the same under the same condition, so the two
// have the same bits wherever their per-element terms do, and so have Dask blocks' partials
// (loss_partial in _cuda.py, added by fastloss._dd) and the whole array's reduced loss. The
// terms are the same bits as the CPU baseline build's (SSE2: the same IEEE operations in the
// same order, no FMA on either side, -fmad=false here; the loss terms never use
// divide_for_float32, the AVX-512 build's one approximate operation, which only gradients and
// the sigmoid call). The x86-64-v3/v4 builds (the CPU default where the CPU has AVX2/AVX-512)
// let GCC contract the header's multiply-adds into FMAs (GNU C++'s default
// -ffp-contract=fast): their squared-error terms are the same bits (x - y, its square, times
// the weight: nothing to contract), but their cross-entropy terms differ from the baseline's
// in the last bit of many elements (float64 BCE on Zen 5's v4 build: 21 % of them; the
// float32-grade polynomials contract too), so a reduced cross-entropy can differ from theirs
// where the exact value lies within ~u sum|terms| of a rounding boundary: often in a float64
// result's last bit, rarely in a float32 one. tests/test_cuda_partials.py compares against
// the baseline build.
#include "fastloss/device_half.h"
#include "fastloss/device_sums.h"
#include "fastloss/double_double.h"
#include "fastloss/loss_pass.h"

#if !defined(FASTLOSS_CUDA_THREADS) || !defined(FASTLOSS_CUDA_GROUP_BYTES)
#error "compile with -DFASTLOSS_CUDA_THREADS=... -DFASTLOSS_CUDA_GROUP_BYTES=... (see _cuda.py)"
#endif

namespace fastloss {
namespace gpu {

namespace ew = fastloss::elementwise;

// float16 storage: fastloss/device_half.h's Float16 (rounded once from double, as on the CPU).
// The grade of the math for storage type T (elementwise.h's MathFor): float16 computes as
// float32 does.
template <class T> struct MathOf { typedef T type; };
template <> struct MathOf<Float16> { typedef float type; };

// Threads per block of every kernel here (a multiple of the warp size).
const int kThreads = FASTLOSS_CUDA_THREADS;
static_assert(kThreads % 32 == 0, "whole warps");

// ---- 16-byte groups ---------------------------------------------------------------------------
// A group is one vector load per array: float4, double2 (16 bytes), or 4 halves as a uint2.
static_assert(FASTLOSS_CUDA_GROUP_BYTES == 16, "the loads below are 16-byte vectors");
template <class T> struct Vec;
template <> struct Vec<float> {
  static const int kWidth = 4;
  static __device__ __forceinline__ void load(const float* p, float* v) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  }
  static __device__ __forceinline__ void store(float* p, const float* v) {
    float4 q;
    q.x = v[0];
    q.y = v[1];
    q.z = v[2];
    q.w = v[3];
    *reinterpret_cast<float4*>(p) = q;
  }
};
template <> struct Vec<double> {
  static const int kWidth = 2;
  static __device__ __forceinline__ void load(const double* p, double* v) {
    const double2 q = *reinterpret_cast<const double2*>(p);
    v[0] = q.x;
    v[1] = q.y;
  }
  static __device__ __forceinline__ void store(double* p, const double* v) {
    double2 q;
    q.x = v[0];
    q.y = v[1];
    *reinterpret_cast<double2*>(p) = q;
  }
};

// 4 halves (8 bytes, a uint2) a group, not 8: with 8 the unrolled double math of a group
// spilled registers (ptxas, sm_90: the weighted loss passes).
template <> struct Vec<Float16> {
  static const int kWidth = 4;
  static __device__ __forceinline__ void load(const Float16* p, Float16* v) {
    const uint2 q = *reinterpret_cast<const uint2*>(p);
    v[0].bits = static_cast<unsigned short>(q.x & 0xffffu);  // little-endian
    v[1].bits = static_cast<unsigned short>(q.x >> 16);
    v[2].bits = static_cast<unsigned short>(q.y & 0xffffu);
    v[3].bits = static_cast<unsigned short>(q.y >> 16);
  }
  static __device__ __forceinline__ void store(Float16* p, const Float16* v) {
    *reinterpret_cast<uint2*>(p) = make_uint2(v[0].bits | (static_cast<unsigned>(v[1].bits) << 16),
                                              v[2].bits | (static_cast<unsigned>(v[3].bits) << 16));
  }
};

__device__ __forceinline__ unsigned long long address_bits(const void* p) {
  return reinterpret_cast<unsigned long long>(p);
}

// Reads the group starting at element `base` of `a` into v (elements past n are left alone).
template <class T>
__device__ __forceinline__ void load_group(const T* a, long long base, long long n, bool whole, T* v) {
  const int W = Vec<T>::kWidth;
  if (whole) {
    Vec<T>::load(a + base, v);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (base + k < n) v[k] = a[base + k];
    }
  }
}

template <class T>
__device__ __forceinline__ void store_group(T* a, long long base, long long n, bool whole, const T* v) {
  const int W = Vec<T>::kWidth;
  if (whole) {
    Vec<T>::store(a + base, v);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (base + k < n) a[base + k] = v[k];
    }
  }
}

// ---- the reduction: double-doubles (fastloss/double_double.h, device_sums.h) ------------------
// Every thread adds its terms into (hi, lo) by dd::add_term; sums::block_tree combines the
// block's threads, thread 0 writing the block's (hi, lo); finish_sum adds the blocks' pairs in
// a fixed order (sums::add_in_order), normalized once.

// Index into a periodic weight buffer: offset + k reduced below period.
__device__ __forceinline__ long long wrap(long long index, long long period) {
  while (index >= period) index -= period;
  return index;
}

// ---- the loss pass ----------------------------------------------------------------------------
// One pass over input/target (and the periodic weights, element i using weight[i % period]),
// producing what kOutputs asks for:
//   kSum*:         block_sums[2 b], block_sums[2 b + 1] = block b's sum of weight * loss, a
//                  double-double (hi, lo), not normalized
//   kElementwise*: loss_out[i] = weight * loss
//   *Grad:         grad_out[i] = grad * weight * grad_scale (grad_scale = grad_output [/ N])
// For binary cross-entropy, *out_of_range is set to 1 (never cleared) if an input lies
// outside [0, 1]. Outputs may be the very arrays of the inputs (in place): every element is
// read before it is written, by the same thread.
// At least 4 resident blocks per SM, i.e. up to 64 registers: without the bound ptxas held the
// float16 BCE pass with both outputs at 48 registers and spilled (the table-driven logs of
// scalar_math.h); 64 is what the widest kernels used anyway, and 4 blocks keep the grid 15.5
// waves deep on an H100 (_cuda.py).
template <class T, int kOp, int kOutputs, bool kWeighted>
__global__ void __launch_bounds__(kThreads, 4)
loss_pass(long long n, const T* input, const T* target, const T* weight, long long weight_period,
          const T* pos_weight, long long pos_weight_period, T* loss_out, T* grad_out,
          double grad_scale, double* block_sums, int* out_of_range) {
  const PassOutputs kPass = static_cast<PassOutputs>(kOutputs);
  typedef typename pass::OpOf<static_cast<LossOp>(kOp)>::type Op;
  const bool kWantSum = pass::Wants<kPass>::kSum;
  const bool kWantElementwise = pass::Wants<kPass>::kElementwise;
  const bool kWantGrad = pass::Wants<kPass>::kGrad;
  const int W = Vec<T>::kWidth;

  const long long groups = (n + W - 1) / W;
  const long long stride = static_cast<long long>(gridDim.x) * kThreads;
  long long g = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  const bool aligned = ((address_bits(input) | address_bits(target) | address_bits(loss_out) |
                         address_bits(grad_out)) & 15ull) == 0ull;

  // Offsets of this thread's current group start in the weight buffers, advanced by a
  // precomputed step instead of a 64-bit modulo per element.
  long long w_offset = 0, w_step = 0, pw_offset = 0, pw_step = 0;
  if (kWeighted) {
    w_offset = (g * W) % weight_period;
    w_step = (stride * W) % weight_period;
    pw_offset = (g * W) % pos_weight_period;
    pw_step = (stride * W) % pos_weight_period;
  }

  double hi = 0.0, lo = 0.0;  // this thread's terms, a double-double (+0.0: see finish_sum)
  int bad = 0;
  for (; g < groups; g += stride) {
    const long long base = g * W;
    const bool whole = aligned & (base + W <= n);
    T x[W], y[W], loss_values[W], grad_values[W];
    load_group(input, base, n, whole, x);
    load_group(target, base, n, whole, y);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (base + k < n) {
        double wk = 1.0;
        double pwk = 1.0;
        if (kWeighted) {
          wk = static_cast<double>(weight[wrap(w_offset + k, weight_period)]);
          pwk = static_cast<double>(pos_weight[wrap(pw_offset + k, pos_weight_period)]);
        }
        double loss, grad;
        pass::element<typename MathOf<T>::type, Op, kPass, kWeighted>(
            static_cast<double>(x[k]), static_cast<double>(y[k]), wk, pwk, grad_scale, loss, grad, bad);
        if constexpr (kWantSum) dd::add_term(hi, lo, loss);
        if constexpr (kWantElementwise) loss_values[k] = static_cast<T>(loss);
        if constexpr (kWantGrad) grad_values[k] = static_cast<T>(grad);
      }
    }
    if constexpr (kWantElementwise) store_group(loss_out, base, n, whole, loss_values);
    if constexpr (kWantGrad) store_group(grad_out, base, n, whole, grad_values);
    if (kWeighted) {
      w_offset += w_step;
      if (w_offset >= weight_period) w_offset -= weight_period;
      pw_offset += pw_step;
      if (pw_offset >= pos_weight_period) pw_offset -= pos_weight_period;
    }
  }

  if constexpr (kWantSum) sums::write_block_pair<kThreads>(hi, lo, block_sums);
  if constexpr (Op::kInputIsProbability) {
    // A block-wide OR, then one integer atomic per block that found something.
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(out_of_range, 1);
  }
}

// Adds the `count` block partials (hi, lo) of a loss pass (partials[2 b], partials[2 b + 1])
// in a fixed order, which depends on count alone (and so on N alone), and normalizes the
// total. Then, where the pointers are not null:
//   sum_out[0], sum_out[1] = the normalized total (hi, lo) (loss_partial: a Dask block's sum);
//   *out = the total divided by n for `mean` (dd::divide, as a double-double), rounded once to
//          T (stored_loss).
// Launched with one block of kThreads threads. count may be 0 (empty input): the sum is +0,
// and 0 / 0 = NaN for 'mean', as on the CPU.
template <class T>
__global__ void __launch_bounds__(kThreads)
finish_sum(const double* partials, long long count, long long n, int mean, T* out, double* sum_out) {
  double hi, lo;
  sums::add_in_order<kThreads>(partials, count, hi, lo);
  if (threadIdx.x != 0) return;
  if (sum_out != nullptr) {
    sum_out[0] = hi;
    sum_out[1] = lo;
  }
  if (out != nullptr) {
    if (mean) dd::divide(hi, lo, static_cast<double>(n), hi, lo);
    *out = sums::stored_loss<T>(hi, lo);
  }
}

// ---- sigmoid ----------------------------------------------------------------------------------
// out[i] = sigmoid(x[i]), evaluated in double at the grade of T (the header's definition).
// out may be x.
template <class T>
__global__ void __launch_bounds__(kThreads)
sigmoid(long long n, const T* x, T* out) {
  const int W = Vec<T>::kWidth;
  const long long groups = (n + W - 1) / W;
  const long long stride = static_cast<long long>(gridDim.x) * kThreads;
  const bool aligned = ((address_bits(x) | address_bits(out)) & 15ull) == 0ull;
  for (long long g = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const long long base = g * W;
    const bool whole = aligned & (base + W <= n);
    T v[W], r[W];
    load_group(x, base, n, whole, v);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (base + k < n) r[k] = static_cast<T>(ew::sigmoid<typename MathOf<T>::type>(static_cast<double>(v[k])));
    }
    store_group(out, base, n, whole, r);
  }
}

// out[i] = grad_output[i] * output[i] * (1 - output[i]) (from sigmoid's output, like PyTorch).
// *out_of_range is set to 1 (never cleared) if an output lies outside [0, 1]: no sigmoid output.
template <class T>
__global__ void __launch_bounds__(kThreads)
sigmoid_backward(long long n, const T* grad_output, const T* output, T* out, int* out_of_range) {
  const int W = Vec<T>::kWidth;
  const long long groups = (n + W - 1) / W;
  const long long stride = static_cast<long long>(gridDim.x) * kThreads;
  const bool aligned =
      ((address_bits(grad_output) | address_bits(output) | address_bits(out)) & 15ull) == 0ull;
  int bad = 0;
  for (long long g = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const long long base = g * W;
    const bool whole = aligned & (base + W <= n);
    T go[W], y[W], r[W];
    load_group(grad_output, base, n, whole, go);
    load_group(output, base, n, whole, y);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (base + k < n) {
        bad |= ew::outside_unit_interval(static_cast<double>(y[k]));
        r[k] = static_cast<T>(ew::sigmoid_backward(static_cast<double>(go[k]), static_cast<double>(y[k])));
      }
    }
    store_group(out, base, n, whole, r);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(out_of_range, 1);
}

}  // namespace gpu
}  // namespace fastloss
