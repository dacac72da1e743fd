// The CUDA kernels' double-double sums across a block and across the blocks of a pass
// (cuda/losses.cu and cuda/multiclass.cu): every thread holds a (hi, lo) of dd::add_term; the
// block's threads are combined by dd::accumulate in a fixed tree (the shuffle tree of each
// warp, then the same over the warp sums); a pass's blocks write their pairs unrounded and one
// block adds them in an order that depends on their count alone (add_in_order). Nothing is
// normalized on the way, as on the CPU: add_in_order normalizes once.
//
// Device code only (NVRTC compiles it; the C++ build never includes it). Header rules as for
// lanes.h: no standard headers.
#pragma once

#include "fastloss/double_double.h"

#if FASTLOSS_DEVICE_COMPILER

namespace fastloss {
namespace gpu {
namespace sums {

// The warp's (hi, lo) pairs added in a fixed tree: lane 0 ends with lanes 0 .. kLanes - 1
// ((0 + 16) + (8 + 24)) + ... for kLanes = 32. Lanes whose source lies past the warp read
// their own pair back (__shfl_down_sync) and compute values nothing reads: lanes below 2 *
// offset, the only ones read at the next level, always add a real partner.
template <int kLanes>
__device__ __forceinline__ void warp_tree(double& hi, double& lo) {
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "a power of two");
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
    const double other_hi = __shfl_down_sync(0xffffffffu, hi, offset);
    const double other_lo = __shfl_down_sync(0xffffffffu, lo, offset);
    dd::accumulate(hi, lo, other_hi, other_lo);
  }
}

// The block's (hi, lo) pairs added in a fixed tree (each warp's, then the warp sums' in warp
// 0); the total, not normalized, is valid in thread 0. Every thread of the block must call it.
template <int kThreads>
__device__ __forceinline__ void block_tree(double& hi, double& lo) {
  const int kWarps = kThreads / 32;
  static_assert(kThreads % 32 == 0 && (kWarps & (kWarps - 1)) == 0,
                "a power-of-two number of whole warps per block");
  __shared__ double warp_hi[kWarps];
  __shared__ double warp_lo[kWarps];
  warp_tree<32>(hi, lo);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_hi[warp] = hi;
    warp_lo[warp] = lo;
  }
  __syncthreads();
  if (warp == 0) {
    // lanes past kWarps hold (+0, +0), which no lane below kWarps ever adds (see warp_tree)
    hi = lane < kWarps ? warp_hi[lane] : 0.0;
    lo = lane < kWarps ? warp_lo[lane] : 0.0;
    warp_tree<kWarps>(hi, lo);
  }
}

// The block's pairs added (block_tree) and written unrounded by thread 0 to block_sums[2 b],
// block_sums[2 b + 1], b the block's index. Every thread of the block must call it.
template <int kThreads>
__device__ __forceinline__ void write_block_pair(double hi, double lo, double* block_sums) {
  block_tree<kThreads>(hi, lo);
  if (threadIdx.x == 0) {
    block_sums[2 * static_cast<long long>(blockIdx.x)] = hi;
    block_sums[2 * static_cast<long long>(blockIdx.x) + 1] = lo;
  }
}

// The `count` pairs (partials[2 b], partials[2 b + 1]) added in a fixed order that depends on
// count alone, normalized: valid in thread 0 of the one block that runs it (every thread must
// call it). Thread t adds pairs t, t + kThreads, ... in that order, loading them kBatch at a
// time (a warp issues in order: one load per addition would wait a memory latency each, and a
// pass leaves up to 8192 partials, 32 per thread); block_tree then adds the threads. count may
// be 0: the sum is +0.
template <int kThreads>
__device__ __forceinline__ void add_in_order(const double* partials, long long count, double& hi,
                                             double& lo) {
  const int kBatch = 8;
  // +0.0, never -0.0, like the CPU's lanes (a sum of -0.0 terms is +0 on both): the padding
  // (+0, +0) past count, like the pairs of a pass's threads that had no element, adds exactly
  // nothing, so it changes no bit of the result.
  hi = 0.0;
  lo = 0.0;
  for (long long base = threadIdx.x; base < count; base += kBatch * kThreads) {
    double batch_hi[kBatch], batch_lo[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const long long i = base + static_cast<long long>(k) * kThreads;
      batch_hi[k] = i < count ? partials[2 * i] : 0.0;
      batch_lo[k] = i < count ? partials[2 * i + 1] : 0.0;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) dd::accumulate(hi, lo, batch_hi[k], batch_lo[k]);
  }
  block_tree<kThreads>(hi, lo);
  if (threadIdx.x == 0) dd::normalize(hi, lo);
}

// A reduced loss stored as a T, from the normalized double-double (hi, lo): rounded once, as
// the CPU modules round it (module.cpp final_value, multiclass_module.cpp reduced_loss).
// float64: hi (= RN(hi + lo)). float32 and float16: hi rounded to odd with lo as the sticky
// bit, then converted (round to nearest even: CUDA's double -> float conversion,
// cvt.rn.f32.f64, keeps subnormals under -ftz=false; half.h's rounding for float16), which
// rounds the exact hi + lo once, not twice.
template <class T>
__device__ __forceinline__ T stored_loss(double hi, double lo) {
  return static_cast<T>(dd::round_to_odd(hi, lo));
}
template <>
__device__ __forceinline__ double stored_loss<double>(double hi, double) {
  return hi;
}

}  // namespace sums
}  // namespace gpu
}  // namespace fastloss

#endif  // FASTLOSS_DEVICE_COMPILER
