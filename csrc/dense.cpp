// The matrix products of a dense layer's training step (csrc/training.cpp), for the small shapes
// of a mini-batch: a (32, 64) x (64, 64) product is 131k multiply-adds, ~1.1 us at the two
// AVX-512 FMA pipes' 32 a cycle, where a BLAS call costs ~4 us on these machines, mostly its
// per-call work (bench/NOTES.md, the training step). Compiled once per instruction set like
// kernels.cpp; only the x86_64_v4 build has the kernel (AVX-512's masked loads and stores take
// any width without a scalar tail); the others answer false and the layer keeps NumPy's BLAS.
//
// The register tile is up to 4 rows of C by 4 vectors of its columns (16 accumulators); every
// element of C is the sum over k in increasing order, one fma per term: the result does not
// depend on the tile or the thread (there are none: these products are too small to share).
#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "dense.h"

#ifndef FASTLOSS_ISA
#error "compile with -DFASTLOSS_ISA=<namespace>"
#endif

namespace fastloss {
namespace FASTLOSS_ISA {
namespace {

#if defined(__AVX512F__)
template <class T>
struct Wide;

template <>
struct Wide<float> {
  typedef __m512 V;
  typedef __mmask16 Mask;
  static const int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V splat(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};

template <>
struct Wide<double> {
  typedef __m512d V;
  typedef __mmask8 Mask;
  static const int kLanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V splat(double x) { return _mm512_set1_pd(x); }
  static V load(const double* p, Mask m) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(double* p, V v, Mask m) { _mm512_mask_storeu_pd(p, m, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};

// The lanes of a vector that hold columns j .. j + kLanes - 1 of a row of `width` columns.
template <class T>
typename Wide<T>::Mask lanes_below(std::int64_t width, std::int64_t j) {
  const std::int64_t count = std::min<std::int64_t>(Wide<T>::kLanes, std::max<std::int64_t>(0, width - j));
  return static_cast<typename Wide<T>::Mask>(count >= Wide<T>::kLanes ? ~0u : (1u << count) - 1u);
}

// Rows i0 .. i0 + kRows of C, columns j0 .. j0 + kVectors * kLanes (masked past n). The
// fields of p are copied into locals first: read through the reference, GCC reloads them and
// keeps the accumulators in memory on every step of k (16 stores an iteration, measured).
template <class T, int kRows, int kVectors>
void tile(const Product<T>& p, std::int64_t i0, std::int64_t j0) {
  typedef Wide<T> W;
  typedef typename W::V V;
  const std::int64_t depth = p.k, ldb = p.ldb, a_row = p.a_row, a_col = p.a_col;
  typename W::Mask mask[kVectors];
#pragma GCC unroll 4
  for (int v = 0; v < kVectors; ++v) mask[v] = lanes_below<T>(p.n, j0 + v * W::kLanes);
  V acc[kRows][kVectors];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kVectors; ++v) acc[r][v] = W::zero();
  }
  const T* __restrict a = p.a + i0 * a_row;
  const T* __restrict b = p.b + j0;
  for (std::int64_t k = 0; k < depth; ++k) {
    V column[kVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kVectors; ++v) column[v] = W::load(b + k * ldb + v * W::kLanes, mask[v]);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const V s = W::splat(a[r * a_row + k * a_col]);
#pragma GCC unroll 4
      for (int v = 0; v < kVectors; ++v) acc[r][v] = W::fma(s, column[v], acc[r][v]);
    }
  }
  T* const c = p.c + i0 * p.ldc + j0;
  const std::int64_t ldc = p.ldc;
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kVectors; ++v) W::store(c + r * ldc + v * W::kLanes, acc[r][v], mask[v]);
  }
}

template <class T, int kRows>
void row_tiles(const Product<T>& p, std::int64_t i0) {
  const std::int64_t panel = 4 * Wide<T>::kLanes;
  for (std::int64_t j0 = 0; j0 < p.n; j0 += panel) {
    const std::int64_t vectors = std::min<std::int64_t>(4, (p.n - j0 + Wide<T>::kLanes - 1) / Wide<T>::kLanes);
    switch (vectors) {
      case 1: tile<T, kRows, 1>(p, i0, j0); break;
      case 2: tile<T, kRows, 2>(p, i0, j0); break;
      case 3: tile<T, kRows, 3>(p, i0, j0); break;
      default: tile<T, kRows, 4>(p, i0, j0); break;
    }
  }
}

template <class T>
void product(const Product<T>& p) {
  std::int64_t i0 = 0;
  for (; i0 + 4 <= p.m; i0 += 4) row_tiles<T, 4>(p, i0);
  switch (p.m - i0) {
    case 3: row_tiles<T, 3>(p, i0); break;
    case 2: row_tiles<T, 2>(p, i0); break;
    case 1: row_tiles<T, 1>(p, i0); break;
    default: break;
  }
}
#endif

template <class T>
bool run(const Product<T>& p) {
#if defined(__AVX512F__)
  product(p);
  return true;
#else
  (void)p;
  return false;
#endif
}

#if defined(__AVX512F__)
// The 8 x 8 block of floats at src (row stride src_stride) transposed to dst (row stride
// dst_stride): the unpack / shuffle / lane-permute network, 24 shuffles for 64 elements
// instead of 64 scalar stores (a 64 x 64 weight: ~0.3 us instead of ~1.1).
void transpose_8x8(const float* src, std::int64_t src_stride, float* dst, std::int64_t dst_stride) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  _mm256_storeu_ps(dst + 0 * dst_stride, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(dst + 1 * dst_stride, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(dst + 2 * dst_stride, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(dst + 3 * dst_stride, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(dst + 4 * dst_stride, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(dst + 5 * dst_stride, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(dst + 6 * dst_stride, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(dst + 7 * dst_stride, _mm256_permute2f128_ps(s3, s7, 0x31));
}

template <class T>
void transpose_into(const T* b, std::int64_t rows, std::int64_t cols, T* t) {
  std::int64_t r0 = 0;
  if constexpr (sizeof(T) == 4) {
    for (; r0 + 8 <= rows; r0 += 8) {
      std::int64_t c0 = 0;
      for (; c0 + 8 <= cols; c0 += 8) transpose_8x8(b + r0 * cols + c0, cols, t + c0 * rows + r0, rows);
      for (std::int64_t r = r0; r < r0 + 8; ++r) {
        for (std::int64_t c = c0; c < cols; ++c) t[c * rows + r] = b[r * cols + c];
      }
    }
  }
  for (std::int64_t r = r0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) t[c * rows + r] = b[r * cols + c];
  }
}
#endif

// b (rows x cols, row stride cols) transposed into this thread's scratch (cols x rows).
template <class T>
const T* transposed(const T* b, std::int64_t rows, std::int64_t cols) {
  thread_local std::vector<T> scratch;
  scratch.resize(static_cast<std::size_t>(rows * cols));
  T* t = scratch.data();
#if defined(__AVX512F__)
  transpose_into(b, rows, cols, t);
#else
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) t[c * rows + r] = b[r * cols + c];
  }
#endif
  return t;
}

template <class T>
bool run_with_transposed_b(std::int64_t m, std::int64_t n, std::int64_t k, const T* a, const T* b, T* c) {
#if defined(__AVX512F__)
  product(Product<T>{m, n, k, a, k, 1, transposed(b, n, k), n, c, n});
  return true;
#else
  (void)m, (void)n, (void)k, (void)a, (void)b, (void)c;
  return false;
#endif
}

}  // namespace

bool dense_product(const Product<float>& p) { return run(p); }
bool dense_product(const Product<double>& p) { return run(p); }
bool dense_product_bt(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, const float* b, float* c) {
  return run_with_transposed_b(m, n, k, a, b, c);
}
bool dense_product_bt(std::int64_t m, std::int64_t n, std::int64_t k, const double* a, const double* b,
                      double* c) {
  return run_with_transposed_b(m, n, k, a, b, c);
}

}  // namespace FASTLOSS_ISA
}  // namespace fastloss
