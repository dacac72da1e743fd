// The contract between csrc/training.cpp and the dense-layer products of csrc/dense.cpp
// (compiled once per instruction set, each build in its own namespace, like kernels.cpp).
#pragma once

#include <cstdint>

namespace fastloss {

// C = A B: C (m x n, row stride ldc), A(i, k) = a[i * a_row + k * a_col] (either layout, so
// that A may be a transposed view), B row-major (k x n, row stride ldb). C is written, not
// added to; it may not overlap A or B. Built as Product<T>{m, n, k, a, a_row, a_col, b, ldb,
// c, ldc}, the fields' order.
template <class T>
struct Product {
  std::int64_t m = 0, n = 0, k = 0;
  const T* a = nullptr;
  std::int64_t a_row = 0, a_col = 0;
  const T* b = nullptr;
  std::int64_t ldb = 0;
  T* c = nullptr;
  std::int64_t ldc = 0;
};

// Each returns false, having done nothing, where the build has no kernel for it (then the
// caller keeps NumPy's BLAS). dense_product_bt: C = A B^T for row-major A (m x k) and B
// (n x k), C (m x n), through a transposed copy of B.
#define FASTLOSS_DECLARE_DENSE_KERNELS(isa)                                                                  \
  namespace isa {                                                                                            \
  bool dense_product(const Product<float>& p);                                                              \
  bool dense_product(const Product<double>& p);                                                             \
  bool dense_product_bt(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, const float* b,     \
                        float* c);                                                                           \
  bool dense_product_bt(std::int64_t m, std::int64_t n, std::int64_t k, const double* a, const double* b,   \
                        double* c);                                                                          \
  }

FASTLOSS_DECLARE_DENSE_KERNELS(baseline)
#if defined(__x86_64__)
FASTLOSS_DECLARE_DENSE_KERNELS(x86_64_v3)
FASTLOSS_DECLARE_DENSE_KERNELS(x86_64_v4)
#endif

}  // namespace fastloss
