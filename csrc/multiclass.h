// The contract between the pybind11 entries (multiclass_module.cpp) and the row kernels
// (multiclass.cpp): softmax, log_softmax, their backward passes and cross-entropy.
//
// multiclass.cpp is compiled once per instruction set like kernels.cpp (kernels.h), each build
// in its own namespace. Raw pointers and sizes only: the memory checks, allocation and the GIL
// live in multiclass_module.cpp, validation in fastloss/_dispatch.py.
#pragma once

#include <cstdint>

#include "fastloss/codes.h"
#include "kernels.h"

namespace fastloss {

// A C-contiguous array seen as (outer, classes, inner): element (o, c, i) at
// (o * classes + c) * inner + i. A row is the `classes` elements of one (o, i), `inner` apart;
// rows are numbered o * inner + i (the order of the target of cross_entropy).
struct RowShape {
  std::int64_t outer = 0;
  std::int64_t classes = 0;
  std::int64_t inner = 1;
  std::int64_t rows() const { return outer * inner; }
  std::int64_t elements() const { return outer * classes * inner; }
};

// Deterministic row sums, the why: rows are cut into chunks of a fixed number of rows
// (max(1, kChunkSize / classes): the shape decides it, never the thread count); a chunk sums its
// row losses in 8 double-double lanes, taken round-robin, and the chunk sums are combined in a
// fixed pairwise tree of double-double additions (fastloss/double_double.h). Every addition's
// error is kept, so the sum is the exact sum of the row losses (each a double within ~1e-10
// relative of the exact loss, fastloss/softmax.h) but for terms of order 2^-106: its rounding
// is the same for any grouping of the rows: any OMP_NUM_THREADS, and the Dask blocks of
// fastloss._dask, whose partials (cross_entropy_partial) combine to the in-memory bits. The
// mean's divisor (the summed class weights of the non-ignored targets) is summed the same way,
// and the mean is the one double-double division of dd::divide_by_sum, rounded once.

// Softmax family: RowOp::Softmax and LogSoftmax read `first` (the input); the backward ops
// read `first` (grad_output) and `second` (the forward output). `out` may be any of them.
template <class T>
struct RowPass {
  RowShape shape;
  const T* first = nullptr;
  const T* second = nullptr;
  T* out = nullptr;
};

template <class T>
struct CrossEntropyPass {
  RowShape shape;
  const T* input = nullptr;
  TargetKind target_kind = TargetKind::ClassIndex64;
  const void* target = nullptr;  // rows() int64/int32 class indices, or probabilities (input's shape)
  const T* class_weight = nullptr;  // `classes` weights, or nullptr
  std::int64_t ignore_index = -100;  // class indices only
  double label_smoothing = 0.0;
  const T* grad_output = nullptr;  // one upstream gradient per row (reduction='none'), or nullptr
  double grad_scale = 1.0;         // the scalar upstream gradient
  bool mean = false;               // the gradient is divided by the mean's divisor
  T* loss_out = nullptr;           // Elementwise*: rows() losses
  T* grad_out = nullptr;           // *Grad: the input's shape; may be the input itself
};

struct CrossEntropyResult {
  double sum = 0.0;         // Sum*: the sum of the row losses as a normalized double-double
  double sum_lo = 0.0;      //   (sum, sum_lo)
  double divisor = 0.0;     // the mean's divisor: the summed weights of the non-ignored targets
  double divisor_lo = 0.0;  //   (the row count for probabilities), a normalized double-double
  std::int64_t bad_row = -1;  // the first row whose class index is outside [0, classes) and not
  std::int64_t bad_class = 0;  // ignore_index, and that index; nothing was written then
};

// One storage type's kernels (float, double, Float16, BFloat16: kernels.h; the 16-bit ones
// are read and written as 16-bit values and computed as float32 is).
#define FASTLOSS_DECLARE_MULTICLASS_KERNELS_OF(T)                                       \
  void run_row_op(RowOp op, const RowPass<T>& p);                                       \
  CrossEntropyResult run_cross_entropy(PassOutputs outputs, const CrossEntropyPass<T>& p); \
  void run_activation(Activation op, std::int64_t n, const T* x, const T* y, T* out);

#define FASTLOSS_DECLARE_MULTICLASS_KERNELS(isa)    \
  namespace isa {                                   \
  FASTLOSS_DECLARE_MULTICLASS_KERNELS_OF(float)     \
  FASTLOSS_DECLARE_MULTICLASS_KERNELS_OF(double)    \
  FASTLOSS_DECLARE_MULTICLASS_KERNELS_OF(Float16)   \
  FASTLOSS_DECLARE_MULTICLASS_KERNELS_OF(BFloat16)  \
  }

FASTLOSS_DECLARE_MULTICLASS_KERNELS(baseline)
#if defined(__x86_64__)
FASTLOSS_DECLARE_MULTICLASS_KERNELS(x86_64_v3)
FASTLOSS_DECLARE_MULTICLASS_KERNELS(x86_64_v4)
#endif

}  // namespace fastloss
