// The contract between the pybind11 module (module.cpp) and the kernels (kernels.cpp).
//
// kernels.cpp is compiled once per instruction set, each time into its own namespace
// (fastloss::baseline, and on x86-64 fastloss::x86_64_v3 = AVX2+FMA and fastloss::x86_64_v4 =
// AVX-512); module.cpp picks one at import time. Raw pointers and sizes only: validation, allocation and the GIL live in module.cpp.
#pragma once

#include <cstdint>

#include "fastloss/codes.h"

namespace fastloss {

// The reduction: near exact, hence deterministic and independent of any grouping.
// The n elements are cut into chunks of kChunkSize, a constant, each summed by one thread.
// Inside a chunk the terms (doubles, for float32 input too) go round-robin, a vector of them at
// a time, into 4 vectors of double-double accumulators (fastloss/double_double.h: the rounded
// sum and the exact error of every addition): 8 to 32 lanes by the vector width, at most 1024
// terms each. The lanes, then the chunks' (hi, lo) partials, are added in fixed pairwise
// trees of double-double additions, and the caller rounds the total (divided by N for 'mean',
// as a double-double) once, to the dtype (module.cpp).
// The bound: a lane of k terms has an error below k^2 u^2 sum|terms| (u = 2^-53: the plain
// summation of the k exact errors, Ogita, Rump and Oishi 2005), at most 2^-86 ~ 1.3e-26 of
// sum|terms| for k = 1024; each of the <= 45 tree levels adds at most 2 u^2 of the magnitudes
// it adds (dd::accumulate). So the result is the exact sum of the terms (or the exact mean) correctly
// rounded to float32 or float64 unless that exact value lies within ~1.3e-26 (relative to
// sum|terms|) of a rounding boundary, where the bits could depend on the grouping. Any other
// grouping of the same terms (another N split into Dask blocks, each summed by
// block_partial below and added with the same arithmetic) gets the same bits under the same
// condition: that is what makes a Dask result equal to the in-memory one. The terms
// themselves depend on each element only (and on the instruction-set build: elementwise.h).
constexpr std::int64_t kChunkSize = 8192;
// The unweighted sums in float32 and the 16-bit dtypes (squared error, BCE, BCE with logits) may
// instead add plain doubles inside a chunk (LossPass::plain_sum), one add a term instead of the
// double-double's six, which bound the small-call and 16-bit passes and a sixth of the BCE ones.
// Where the terms are >= 0, recursive summation's bound is relative to the sum itself: a lane of
// k terms (k <= kChunkSize / (4 * width) <= 1024, SSE2's 2 lanes) is within (k - 1) u, each of
// the <= 5 levels of the fixed tree over a chunk's vectors and lanes adds at most u, and the
// chunks' sums (>= 0, each within that of its own) are added as double-doubles: the total is
// within ~1027 u < kPlainSumRelativeError of the exact sum of the terms (u = 2^-53). (GCC may
// contract a term's last multiply, the squared error's d * d, into its addition, an fma: that
// sums the unrounded product, within u of the rounded term the exact path adds: 1028 u, still
// inside.) The squared error's terms are >= 0 for any input; BCE's only for targets in [0, 1],
// so its plain sums keep their least term too and give NaN for a chunk with a negative one.
// The caller (module.cpp) rounds the result only where every value within that distance rounds
// alike, so it is the exact path's bits; where one does not (one call in ~2^16 for float32), or
// the sum is not finite, it sums again exactly.
constexpr double kPlainSumRelativeError = 0x1p-42;
// The float16 and bfloat16 squared error's plain sums go further in the x86-64-v3 and v4 builds:
// a whole block's terms (kernels.cpp, add_squared_errors_in_float32) are formed and first added
// in float32 lanes, twice the doubles' and with no widening per element. The difference of two
// 16-bit values rounded to float32 is within u = 2^-24 of its own (exact where their exponents
// are within 13 of each other, float16), its square then within 2u + u^2, and each term goes
// through at most 10 float32 roundings (a multiply-add chain of 8, a tree of 2) before it is a
// double: (10 + 2) u (1 + 12 u) relative to the exact sum of the terms, all >= 0, plus the
// double lanes' kPlainSumRelativeError: within kFloat32TermsRelativeError. A float32 rounding
// in bfloat16's range may also underflow, off by at most 2^-150 each (a float16 term is
// >= 2^-48 when not 0): with at most 2 roundings per term, kFloat32TermsAbsoluteErrorPerTerm
// per element. Checked like the plain sums (module.cpp): the window is 2^-19 of a value where
// float16's ulp is 2^-10 to 2^-11 of it, so one random call in ~2^7 to 2^8 sums again exactly.
constexpr double kFloat32TermsRelativeError = 0x1p-20;
constexpr double kFloat32TermsAbsoluteErrorPerTerm = 0x1p-149;
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
  double* chunk_sums = nullptr;  // 2 num_chunks(n) doubles of workspace for Sum*: (hi, lo) per chunk
  // Plain double sums inside the chunks (see kPlainSumRelativeError) where the pass allows them:
  // the unweighted Sum* passes in float32, float16 and bfloat16 (kernels.cpp,
  // kPlainSumAllowed); ignored elsewhere. LossPassResult::summed_plainly tells which it was.
  bool plain_sum = false;
};

struct LossPassResult {
  double sum;               // Sum* only: the sum as a normalized double-double sum + sum_lo
  double sum_lo;
  bool input_out_of_range;  // binary_cross_entropy: some input outside [0, 1]
  bool summed_plainly;      // the chunks took LossPass::plain_sum: the caller checks the rounding
  bool float32_terms;       // ... and some terms were summed in float32 (kFloat32TermsRelativeError)
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
