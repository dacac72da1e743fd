// The contract between the pybind11 module (module.cpp) and the kernels (kernels.cpp).
//
// kernels.cpp is compiled once per instruction set, each time into its own namespace
// (fastloss::baseline, and on x86-64 fastloss::x86_64_v3 = AVX2+FMA and fastloss::x86_64_v4 =
// AVX-512); module.cpp picks one at import time. Raw pointers and sizes only: validation, allocation and the GIL live in module.cpp.
#pragma once

#include <cstdint>

#include "fastloss/codes.h"

namespace fastloss {

// Deterministic reduction, the why and the bound.
// The n elements are cut into chunks of kChunkSize, a constant: chunk boundaries depend on n
// only, never on the thread count, and each thread sums whole chunks. Inside a chunk, the
// terms go round-robin, a vector of them at a time, into 4 vectors of double accumulators
// (float64 input: 8 vectors of Kahan-compensated ones): 8 to 64 lanes, depending on the
// instruction set's vector width, never on the thread count; the lanes and then the chunk sums
// are combined in fixed pairwise trees. Each term is a double, each lane sees at most 1024
// terms and the trees have depth log2(n / 8192) + 6, so the relative error of a sum of
// non-negative terms is below (1024 + 45) * 2^-53 ~ 1.2e-13 before the final rounding: a
// float32 sum is the exact sum of its terms correctly rounded in all but vanishingly rare
// cases (each float32 term is within ~1e-9 relative of exact: elementwise.h), and the bits are
// the same for any OMP_NUM_THREADS (the serial small-array path walks the same chunks).
constexpr std::int64_t kChunkSize = 8192;
// Below this many elements a call runs serially and keeps the GIL: an OpenMP region costs
// ~0.6 us, more than the whole computation on a few thousand elements.
constexpr std::int64_t kParallelThreshold = 1 << 15;

constexpr std::int64_t num_chunks(std::int64_t n) { return (n + kChunkSize - 1) / kChunkSize; }

// False in a process created by fork() after fastloss was loaded (module.cpp sets it from a
// pthread_atfork handler). libgomp's thread pool does not survive fork: a child that enters a
// parallel region its parent had used waits forever for threads that are gone. Kernels then
// take their serial path, which walks the same chunks, so the bits are the same.
bool openmp_usable();

// The 16-bit storage types: the bits of a float16 (IEEE binary16) or bfloat16 value. The
// kernels widen them to double on load and round once to them on store (fastloss/half.h);
// the math is the float32 path's (kernels.cpp, MathOf).
struct Float16 {
  std::uint16_t bits;
};
struct BFloat16 {
  std::uint16_t bits;
};

template <class T>
struct LossPass {
  std::int64_t n = 0;
  const T* input = nullptr;
  const T* target = nullptr;
  // Weights broadcast like a trailing block of the input: element i uses weight[i % period].
  // Either both are null (unweighted) or both are set (an absent one is a buffer of ones).
  const T* weight = nullptr;
  std::int64_t weight_period = 1;
  const T* pos_weight = nullptr;
  std::int64_t pos_weight_period = 1;
  T* loss_out = nullptr;       // Elementwise*
  T* grad_out = nullptr;       // *Grad
  double grad_scale = 1.0;     // grad_output, divided by n for reduction='mean'
  double* chunk_sums = nullptr;  // num_chunks(n) doubles of workspace for Sum*
};

struct LossPassResult {
  double sum;               // Sum* only
  bool input_out_of_range;  // binary_cross_entropy: some input outside [0, 1]
};

#define FASTLOSS_DECLARE_KERNELS_OF(T)                                                       \
  LossPassResult run_loss_pass(LossOp op, PassOutputs outputs, const LossPass<T>& p);        \
  void sigmoid(std::int64_t n, const T* x, T* out);                                          \
  /* true if an output lies outside [0, 1] (no sigmoid output) */                            \
  bool sigmoid_backward(std::int64_t n, const T* grad_output, const T* output, T* out);

#define FASTLOSS_DECLARE_KERNELS(isa)       \
  namespace isa {                           \
  FASTLOSS_DECLARE_KERNELS_OF(float)        \
  FASTLOSS_DECLARE_KERNELS_OF(double)       \
  FASTLOSS_DECLARE_KERNELS_OF(Float16)      \
  FASTLOSS_DECLARE_KERNELS_OF(BFloat16)     \
  }

FASTLOSS_DECLARE_KERNELS(baseline)
#if defined(__x86_64__)
FASTLOSS_DECLARE_KERNELS(x86_64_v3)
FASTLOSS_DECLARE_KERNELS(x86_64_v4)
#endif

}  // namespace fastloss
