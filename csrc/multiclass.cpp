// The row kernels of softmax, log_softmax, their backward passes and cross-entropy (CPU).
// Compiled once per instruction set with -DFASTLOSS_ISA=<namespace>, like kernels.cpp; the
// per-row math is fastloss/softmax.h's. This file adds how a row is walked (blocks of kBlock
// elements, each loaded once into an L1 tile of doubles: the block's max, the rescale of the
// running sum, its exps, all from the tile; contiguous float32 blocks in the AVX-512 build read
// from the floats instead, which are in L1 just the same) and the chunks and threads over the rows.
// Never -ffast-math: the row scans and the sums depend on the order of every addition.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "fastloss/double_double.h"
#include "fastloss/loss_pass.h"
#include "fastloss/softmax.h"
#include "kernels.h"
#include "multiclass.h"
#include "storage.h"

#ifndef FASTLOSS_ISA
#error "compile with -DFASTLOSS_ISA=<namespace>"
#endif

namespace fastloss {
namespace FASTLOSS_ISA {
namespace {

namespace rw = fastloss::rows;

constexpr int kBlock = 256;  // the elements of a row held in one L1 tile
constexpr int kLanes = 8;    // independent accumulators of a tile's sum and max
// Rows of up to kShortRow classes (contiguous) share tiles of kShortTile elements in the
// cross-entropy loss (CrossEntropyKernel::short_rows).
constexpr int kShortRow = 64;
constexpr int kShortTile = 1024;

// Sums values[0..count) in a fixed pairwise tree, in place. The shape depends on count only.
double pairwise_sum(double* values, std::int64_t count) {
  if (count == 0) return 0.0;
  for (std::int64_t width = 1; width < count; width *= 2) {
    for (std::int64_t i = 0; i + width < count; i += 2 * width) values[i] += values[i + width];
  }
  return values[0];
}

double tile_sum(const double* tile, int count) {
  double lane[kLanes] = {};
  int j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) lane[k] += tile[j + k];
  }
  for (int k = 0; j < count; ++j, ++k) lane[k] += tile[j];
  return pairwise_sum(lane, kLanes);
}

// The max of a tile; NaN if it holds a NaN. Written with GCC's vector types: GCC 12 vectorises
// no select-based max of doubles by itself (it may not assume -0.0 and NaN away), and a scalar
// max was a third of the short-row kernel's time. Two vectors of 4 lanes take the elements
// round-robin; a NaN is remembered in a select of its own.
typedef double Double4 __attribute__((vector_size(32)));

double tile_max(const double* tile, int count) {
  const double low = rw::negative_infinity();
  Double4 max_a = {low, low, low, low}, max_b = max_a;
  Double4 nan_a = {0.0, 0.0, 0.0, 0.0}, nan_b = nan_a;
  int j = 0;
  for (; j + 8 <= count; j += 8) {
    Double4 a, b;
    __builtin_memcpy(&a, tile + j, sizeof a);
    __builtin_memcpy(&b, tile + j + 4, sizeof b);
    max_a = a > max_a ? a : max_a;
    max_b = b > max_b ? b : max_b;
    nan_a = a != a ? a : nan_a;
    nan_b = b != b ? b : nan_b;
  }
  double m = low, nan = 0.0;
  for (int k = 0; k < 4; ++k) {
    m = max_a[k] > m ? max_a[k] : m;
    m = max_b[k] > m ? max_b[k] : m;
    nan = nan_a[k] != nan_a[k] ? nan_a[k] : nan;
    nan = nan_b[k] != nan_b[k] ? nan_b[k] : nan;
  }
  for (; j < count; ++j) {
    m = tile[j] > m ? tile[j] : m;
    nan = tile[j] != tile[j] ? tile[j] : nan;
  }
  return nan != nan ? nan : m;
}

// Elements c0 .. c0 + count of a row, `stride` apart, widened into the tile (storage.h).
template <class T>
void load(const T* row, std::int64_t stride, std::int64_t c0, int count, double* tile) {
  if (stride == 1) {
    for (int j = 0; j < count; ++j) tile[j] = to_double(row[c0 + j]);
  } else {
    for (int j = 0; j < count; ++j) tile[j] = to_double(row[(c0 + j) * stride]);
  }
}

template <class T>
void store(T* row, std::int64_t stride, std::int64_t c0, int count, const double* tile) {
  if (stride == 1) {
    for (int j = 0; j < count; ++j) row[c0 + j] = from_double<T>(tile[j]);
  } else {
    for (int j = 0; j < count; ++j) row[(c0 + j) * stride] = from_double<T>(tile[j]);
  }
}

struct Tiles {
  alignas(64) double x[kBlock];
  alignas(64) double a[kBlock];
  alignas(64) double t[kBlock];
};

// The online scan of one row: its max, sum of exps and, with coefficients, the cross-entropy
// sums of fastloss/softmax.h (sum_c a_c (m - x_c), sum_c a_c).
struct Scan {
  double max = rw::negative_infinity();
  double sum = 0.0;
  double offsets = 0.0;
  double coefficients = 0.0;
};

// Where a row's coefficients a_c come from: weight_c ((1 - eps) target_c + eps / C), target_c
// from a probability row (or 0 for class indices, whose one class y the caller adds).
template <class T>
struct Coefficients {
  const T* weight = nullptr;   // classes weights or nullptr (1)
  const T* target = nullptr;   // probability row (stride as the input's) or nullptr (0)
  double keep = 1.0;           // 1 - eps
  double spread = 0.0;         // eps / C

  void fill(std::int64_t stride, std::int64_t c0, int count, double* a) const {
    for (int j = 0; j < count; ++j) {
      const double w = weight != nullptr ? to_double(weight[c0 + j]) : 1.0;
      const double t = target != nullptr ? to_double(target[(c0 + j) * stride]) : 0.0;
      a[j] = rw::coefficient(w, t, keep, spread);
    }
  }
};

// The exps of a row's scan, kept for its second pass (the gradient, softmax's output) so that
// it reads them instead of computing them again: values[c] = exp(x_c - block_max[c / kBlock]).
struct KeptExps {
  double* values = nullptr;
  double* block_max = nullptr;
};

// This thread's buffers for the kept exps of a row of `classes` (reused from call to call).
KeptExps kept_exps(std::int64_t classes) {
  thread_local std::vector<double> values, block_max;
  const std::size_t blocks = static_cast<std::size_t>((classes + kBlock - 1) / kBlock);
  if (values.size() < static_cast<std::size_t>(classes)) values.resize(static_cast<std::size_t>(classes));
  if (block_max.size() < blocks) block_max.resize(blocks);
  return KeptExps{values.data(), block_max.data()};
}

#if defined(__AVX512F__)
// exp(x[j] - max) into out[j], j < count, for float32-grade rows in the AVX-512 build: the table
// exp of the short rows (short_avx512::GapExp, 12 instructions per 8 against ~17 for the
// portable polynomial, and 6e-12 relative against 1e-10). Defined below.
void tile_exps(const double* x, double max, double* out, int count);
constexpr bool kDirectFloatBlocks = true;
#else
constexpr bool kDirectFloatBlocks = false;
#endif

// A float32 block of a contiguous row in the AVX-512 build, read from the floats themselves
// instead of from a tile of their doubles: one pass for the max, one for the exps (kept in out
// where out is not null) and their sum, the gradient or softmax output scaled and narrowed in
// one. Each gives what load + tile_max, tile_exps + tile_sum, and the scaled tile + store give
// (the same values added in the same order: tile_sum's 8 lanes are the vector's), so the same
// bits. Defined with tile_exps; declared in every build for scan_row's discarded branches.
double float_block_max(const float* x, int count, double* scratch);
template <bool kKeep, bool kNaNs>
double float_block_exps(const float* x, int count, double max, double* out);
void float_block_scaled(const double* e, int count, double factor, float* out);

// out[c0 + j] = e[j] factor, j < count, rounded to T: the softmax output and the gradient of
// the kept exps.
template <class T>
void store_scaled(T* out, std::int64_t stride, std::int64_t c0, int count, const double* e, double factor,
                  Tiles& tiles) {
  if constexpr (kDirectFloatBlocks && std::is_same<T, float>::value) {
    if (stride == 1) return float_block_scaled(e, count, factor, out + c0);
  }
  for (int j = 0; j < count; ++j) tiles.x[j] = e[j] * factor;
  store(out, stride, c0, count, tiles.x);
}

// The scan of fastloss/softmax.h over a row, block by block; with `kept`, each block's exps and
// its max are stored there.
template <class T, bool kCoefficients>
Scan scan_row(const T* row, std::int64_t stride, std::int64_t classes, const Coefficients<T>& coef,
              Tiles& tiles, const KeptExps* kept = nullptr) {
  constexpr bool kDirect = kDirectFloatBlocks && std::is_same<T, float>::value && !kCoefficients;
  const bool direct = kDirect && stride == 1;
  Scan s;
  for (std::int64_t c0 = 0; c0 < classes; c0 += kBlock) {
    const int count = static_cast<int>(std::min<std::int64_t>(kBlock, classes - c0));
    double maximum;
    if constexpr (kDirect) {
      if (direct) maximum = float_block_max(row + c0, count, tiles.x);
    }
    if (!direct) {
      load(row, stride, c0, count, tiles.x);
      maximum = tile_max(tiles.x, count);
    }
    const double block_max = rw::max_propagating_nan(s.max, maximum);
    s.sum *= rw::rescale(s.max, block_max);
    if (kCoefficients) s.offsets = rw::shift_offsets(s.offsets, s.coefficients, s.max, block_max);
    s.max = block_max;
    if (kCoefficients) {
      coef.fill(stride, c0, count, tiles.a);
      for (int j = 0; j < count; ++j) {
        // a class of coefficient 0 adds 0, also at x = -inf (where 0 * inf would be NaN)
        tiles.t[j] = tiles.a[j] == 0.0 ? 0.0 : tiles.a[j] * (block_max - tiles.x[j]);
      }
      s.offsets += tile_sum(tiles.t, count);
      s.coefficients += tile_sum(tiles.a, count);
    }
    // the exps go straight where they are kept (the tile otherwise)
    double* exps = kept != nullptr ? kept->values + c0 : tiles.x;
    double block_sum;
    if constexpr (kDirect) {
      if (direct) {
        // a finite max: the block holds no NaN (tile_max's would be NaN) and no x - max is NaN
        const bool finite = block_max - block_max == 0.0;
        if (kept != nullptr) {
          block_sum = finite ? float_block_exps<true, false>(row + c0, count, block_max, exps)
                             : float_block_exps<true, true>(row + c0, count, block_max, exps);
        } else {
          block_sum = finite ? float_block_exps<false, false>(row + c0, count, block_max, nullptr)
                             : float_block_exps<false, true>(row + c0, count, block_max, nullptr);
        }
      }
    }
    if (!direct) {
#if defined(__AVX512F__)
      if constexpr (std::is_same<typename MathOf<T>::type, float>::value) {
        tile_exps(tiles.x, block_max, exps, count);
      } else
#endif
      {
        for (int j = 0; j < count; ++j) exps[j] = rw::row_exp(tiles.x[j], block_max, typename MathOf<T>::type());
      }
      block_sum = tile_sum(exps, count);
    }
    if (kept != nullptr) kept->block_max[c0 / kBlock] = block_max;
#ifdef FASTLOSS_PLANTED_FAULT_SOFTMAX_BLOCK_RESCALE_DROPPED
    if (c0 > 0) s.sum = 0.0;
#endif
    s.sum += block_sum;
  }
  return s;
}

// Calls chunk(index, begin_row, end_row) for every chunk of `rows_per_chunk` rows: serially for
// small arrays or in a forked child, else over the OpenMP threads. The chunks depend on the
// shape only. Returns nothing: each chunk writes its own results.
template <class ChunkFn>
void for_each_row_chunk(std::int64_t rows, std::int64_t rows_per_chunk, std::int64_t elements,
                        ChunkFn chunk) {
  const std::int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  if (elements < kParallelThreshold || !openmp_usable() || chunks < 2) {
    for (std::int64_t c = 0; c < chunks; ++c) {
      chunk(c, c * rows_per_chunk, std::min(rows, (c + 1) * rows_per_chunk));
    }
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    chunk(c, c * rows_per_chunk, std::min(rows, (c + 1) * rows_per_chunk));
  }
}

std::int64_t rows_per_chunk(std::int64_t classes) {
  const std::int64_t per_chunk = std::max<std::int64_t>(1, kChunkSize / std::max<std::int64_t>(classes, 1));
  return per_chunk;
}

// The first element of row r of a (outer, classes, inner) array.
std::int64_t row_start(const RowShape& shape, std::int64_t r) {
  const std::int64_t o = r / shape.inner;
  const std::int64_t i = r - o * shape.inner;
  return o * shape.classes * shape.inner + i;
}

// A double-double (hi, lo) as the chunk sums hold it.
struct ExactSum {
  double hi = 0.0;
  double lo = 0.0;
};

// Double-double lanes for the row losses (and the divisor's weights): row k of a chunk goes to
// lane k % kLanes (dd::add_term), the lanes are then added in a fixed pairwise tree
// (dd::accumulate). Each addition's error is kept, so the chunk's sum is the exact sum of its
// row losses but for terms of order u^2: the total does not depend on how rows are grouped
// (multiclass.h), which is what lets a Dask block's partial combine to the in-memory bits.
struct ExactLanes {
  double hi[kLanes] = {};
  double lo[kLanes] = {};
  void add(std::int64_t index, double term) {
    const int k = static_cast<int>(index % kLanes);
    dd::add_term(hi[k], lo[k], term);
  }
  // add(j, terms[j]) for j in [0, count): the same additions, lane by lane, a vector of kLanes
  // rows at a time (the per-row scalar add was a fifth of the short-row kernel's time).
  void add_all(const double* terms, std::int64_t count) {
    static_assert(kLanes == 8, "one Double8 of lanes");
    lanes::Double8 h, l;
    __builtin_memcpy(&h, hi, sizeof h);
    __builtin_memcpy(&l, lo, sizeof l);
    std::int64_t j = 0;
    for (; j + kLanes <= count; j += kLanes) {
      lanes::Double8 t;
      __builtin_memcpy(&t, terms + j, sizeof t);
      dd::add_term(h, l, t);
    }
    __builtin_memcpy(hi, &h, sizeof h);
    __builtin_memcpy(lo, &l, sizeof l);
    for (; j < count; ++j) add(j, terms[j]);
  }
  ExactSum total() const {
    double h[kLanes], l[kLanes];
    for (int k = 0; k < kLanes; ++k) {
      h[k] = hi[k];
      l[k] = lo[k];
#ifdef FASTLOSS_PLANTED_FAULT_CE_LANE_LO_DROPPED
      l[k] = 0.0;
#endif
    }
    for (int width = kLanes / 2; width >= 1; width /= 2) {
      for (int k = 0; k < width; ++k) {
        h[k] = h[2 * k];
        l[k] = l[2 * k];
        dd::accumulate(h[k], l[k], h[2 * k + 1], l[2 * k + 1]);
      }
    }
    return ExactSum{h[0], l[0]};
  }
};

// The chunk sums in a fixed pairwise tree, normalized; the shape depends on count only.
ExactSum pairwise_exact_sum(ExactSum* values, std::int64_t count) {
  if (count == 0) return ExactSum{};
  for (std::int64_t width = 1; width < count; width *= 2) {
    for (std::int64_t i = 0; i + width < count; i += 2 * width) {
      dd::accumulate(values[i].hi, values[i].lo, values[i + width].hi, values[i + width].lo);
    }
  }
  ExactSum total = values[0];
  dd::normalize(total.hi, total.lo);
  return total;
}

// ---- softmax family ----------------------------------------------------------------------------
template <class T>
void softmax_forward_row(RowOp op, const T* x, T* out, std::int64_t stride, std::int64_t classes, Tiles& tiles) {
  // softmax's output is the kept exps rescaled; log_softmax's needs only x again
  const KeptExps kept = op == RowOp::Softmax ? kept_exps(classes) : KeptExps{};
  const Scan s = scan_row<T, false>(x, stride, classes, Coefficients<T>{}, tiles,
                                    op == RowOp::Softmax ? &kept : nullptr);
  const double log_sum = math::log(s.sum);
  const double inverse_sum = 1.0 / s.sum;
  for (std::int64_t c0 = 0; c0 < classes; c0 += kBlock) {
    const int count = static_cast<int>(std::min<std::int64_t>(kBlock, classes - c0));
    if (op == RowOp::LogSoftmax) {
      load(x, stride, c0, count, tiles.x);
      for (int j = 0; j < count; ++j) tiles.x[j] = rw::log_softmax_element(tiles.x[j], s.max, log_sum);
      store(out, stride, c0, count, tiles.x);
    } else {
      const double factor = rw::rescale(kept.block_max[c0 / kBlock], s.max) * inverse_sum;
      store_scaled(out, stride, c0, count, kept.values + c0, factor, tiles);
    }
  }
}

template <class T>
void softmax_backward_row(RowOp op, const T* g, const T* y, T* out, std::int64_t stride, std::int64_t classes,
                          Tiles& tiles) {
  // the row's sum of g * y (softmax) or of g (log_softmax), block by block in a fixed order
  double total = 0.0;
  for (std::int64_t c0 = 0; c0 < classes; c0 += kBlock) {
    const int count = static_cast<int>(std::min<std::int64_t>(kBlock, classes - c0));
    load(g, stride, c0, count, tiles.x);
    if (op == RowOp::SoftmaxBackward) {
      load(y, stride, c0, count, tiles.a);
      for (int j = 0; j < count; ++j) tiles.x[j] *= tiles.a[j];
    }
    total += tile_sum(tiles.x, count);
  }
  for (std::int64_t c0 = 0; c0 < classes; c0 += kBlock) {
    const int count = static_cast<int>(std::min<std::int64_t>(kBlock, classes - c0));
    load(g, stride, c0, count, tiles.x);
    load(y, stride, c0, count, tiles.a);
    if (op == RowOp::SoftmaxBackward) {
      for (int j = 0; j < count; ++j) tiles.x[j] = rw::softmax_backward_element(tiles.x[j], tiles.a[j], total);
    } else {
      for (int j = 0; j < count; ++j) tiles.x[j] = rw::log_softmax_backward_element(tiles.x[j], tiles.a[j], total);
    }
    store(out, stride, c0, count, tiles.x);
  }
}

template <class T>
void run_row_op_impl(RowOp op, const RowPass<T>& p) {
  const RowShape shape = p.shape;
  const std::int64_t stride = shape.inner;
  for_each_row_chunk(shape.rows(), rows_per_chunk(shape.classes), shape.elements(),
                     [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                       Tiles tiles;
                       for (std::int64_t r = begin; r < end; ++r) {
                         const std::int64_t start = row_start(shape, r);
                         if (op == RowOp::Softmax || op == RowOp::LogSoftmax) {
                           softmax_forward_row(op, p.first + start, p.out + start, stride, shape.classes, tiles);
                         } else {
                           softmax_backward_row(op, p.first + start, p.second + start, p.out + start, stride,
                                                shape.classes, tiles);
                         }
                       }
                     });
}

// ---- cross-entropy ---------------------------------------------------------------------------
template <class Index>
struct ClassIndexTargets {
  static constexpr bool kIndices = true;
  const Index* index;
  std::int64_t at(std::int64_t r) const { return static_cast<std::int64_t>(index[r]); }
  void prefetch(std::int64_t r) const { __builtin_prefetch(index + r); }
};

// The targets' pass before any output is written: every class index in range (or
// ignore_index), and the mean's divisor, the summed weights of the non-ignored targets. Without
// weights that sum is a count, kept in an integer (exact, and what the double-double lanes
// would hold: whole numbers below 2^53); the rows are then scanned without a branch and only
// a chunk holding a bad index looks for its first one.
template <class T, class Index>
CrossEntropyResult check_class_indices(const CrossEntropyPass<T>& p, const Index* index) {
  const std::int64_t rows = p.shape.rows();
  const std::int64_t chunks = num_chunks(rows);
  std::vector<ExactSum> sums(static_cast<std::size_t>(chunks));
  std::vector<std::int64_t> bad(static_cast<std::size_t>(chunks), -1);
  const std::int64_t classes = p.shape.classes, ignore_index = p.ignore_index;
  for_each_row_chunk(rows, kChunkSize, rows, [&](std::int64_t c, std::int64_t begin, std::int64_t end) {
    if (p.class_weight == nullptr) {
      std::int64_t kept = 0, out_of_range = 0;
      for (std::int64_t r = begin; r < end; ++r) {
        const std::int64_t y = static_cast<std::int64_t>(index[r]);
        const std::int64_t counted = y != ignore_index;
        const std::int64_t in_range = static_cast<std::uint64_t>(y) < static_cast<std::uint64_t>(classes);
        kept += counted & in_range;
        out_of_range |= counted & (in_range ^ 1);
      }
      sums[c] = ExactSum{static_cast<double>(kept), 0.0};
      if (out_of_range == 0) return;
    }
    ExactLanes lanes;
    for (std::int64_t r = begin; r < end; ++r) {
      const std::int64_t y = static_cast<std::int64_t>(index[r]);
      if (y == ignore_index) continue;
      if (y < 0 || y >= classes) {
        if (bad[c] < 0) bad[c] = r;
        continue;
      }
      if (p.class_weight != nullptr) lanes.add(r - begin, to_double(p.class_weight[y]));
    }
    if (p.class_weight != nullptr) sums[c] = lanes.total();
  });
  CrossEntropyResult result;
  const ExactSum divisor = pairwise_exact_sum(sums.data(), chunks);
  result.divisor = divisor.hi;
  result.divisor_lo = divisor.lo;
  for (std::int64_t c = 0; c < chunks; ++c) {
    if (bad[c] >= 0) {
      result.bad_row = bad[c];
      result.bad_class = static_cast<std::int64_t>(index[bad[c]]);
      break;
    }
  }
  return result;
}

#if defined(__AVX512F__)
// ---- AVX-512 short rows: the per-element math -------------------------------------------------
// CrossEntropyKernel::short_rows_avx512 takes float32 rows of up to kShortRow classes in groups
// that share one tile; these are its pieces. Intrinsics, not lanes.h's generic vectors: the
// table lookup (vpermt2pd), vscalefpd and the masked loads have no portable spelling, and
// the other builds keep the portable short_rows.
namespace short_avx512 {

// 2^(j/16), j = 0..15, in two registers for vpermt2pd (rounded to double: 1.1e-16).
alignas(64) constexpr double kExp2Sixteenths[16] = {
    0x1.0000000000000p+0, 0x1.0b5586cf9890fp+0, 0x1.172b83c7d517bp+0, 0x1.2387a6e756238p+0,
    0x1.306fe0a31b715p+0, 0x1.3dea64c123422p+0, 0x1.4bfdad5362a27p+0, 0x1.5ab07dd485429p+0,
    0x1.6a09e667f3bcdp+0, 0x1.7a11473eb0187p+0, 0x1.8ace5422aa0dbp+0, 0x1.9c49182a3f090p+0,
    0x1.ae89f995ad3adp+0, 0x1.c199bdd85529cp+0, 0x1.d5818dcfba487p+0, 0x1.ea4afa2a490dap+0};

constexpr double kSixteenOverLn2 = 23.083120654223414;
constexpr double kLn2OverSixteen = 0x1.62e42fefa39efp-5;
constexpr double kRoundShift = 0x1.8p52;  // adding it rounds to an integer held in the low bits

// exp(d) of a row's gap d = x_c - x_y, to 6e-12 relative, in 12 FP instructions and no
// divide. d is clamped to [-746, 746] first (one vrangepd: e^-746 gives exactly 0, also for
// d = -inf, e^746 gives inf; NaN becomes 746 too, so a NaN gives inf: either way the row's
// other exps sum past 2^1000 and it takes the general scan), which also keeps n small: n = round(d 16/ln2)
// in the low bits of `shifted`, r = d - n ln2/16 in one fma (|n| < 2^14, so ln2/16 rounded
// once moves r by < 6e-14), 2^((n mod 16)/16) from a table by vpermt2pd, e^r - 1 by a degree-4
// polynomial on |r| <= ln2/32 (its constant and linear terms exact, so d = 0 gives exactly 1;
// c2..c4 fitted for relative error: 5.3e-12 against Taylor's 4.1e-11) and 2^floor(n/16) by
// vscalefpd (inf past the double range).
struct GapExp {
  __m512d table_low = _mm512_load_pd(kExp2Sixteenths);
  __m512d table_high = _mm512_load_pd(kExp2Sixteenths + 8);

  __attribute__((always_inline)) __m512d operator()(__m512d d) const {
    d = _mm512_range_pd(d, _mm512_set1_pd(746.0), 0x02);  // the smaller magnitude, d's sign
    const __m512d rounding = _mm512_set1_pd(kRoundShift);
    const __m512d shifted = _mm512_fmadd_pd(d, _mm512_set1_pd(kSixteenOverLn2), rounding);
    const __m512d n = _mm512_sub_pd(shifted, rounding);
    const __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(kLn2OverSixteen), d);
    const __m512d t = _mm512_permutex2var_pd(table_low, _mm512_castpd_si512(shifted), table_high);
    const __m512d r2 = _mm512_mul_pd(r, r);
    __m512d c = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.55571de0af64cp-3), _mm512_set1_pd(0x1.00000006dc454p-1));
    c = _mm512_fmadd_pd(r2, _mm512_set1_pd(0x1.55520f97ba200p-5), c);
    const __m512d q = _mm512_fmadd_pd(r2, c, r);  // e^r - 1
    const __m512d p = _mm512_fmadd_pd(t, q, t);
    return _mm512_scalef_pd(p, _mm512_mul_pd(n, _mm512_set1_pd(0.0625)));
  }
};

// The low `count` lanes (count in [0, 8]).
FASTLOSS_HD __mmask8 low_lanes8(int count) { return static_cast<__mmask8>((1u << count) - 1u); }

// 1/c_j rounded, c_j = 1 + j/16, and -log of that rounded value (to 1.1e-16): log m =
// log1p(m/c_j' - 1) - log(1/c_j') for m in [c_j, c_j + 1/16), the one-sided interval, so
// that every term is non-negative (no cancellation near m = 1: j = 0 is 1 and 0 exactly).
alignas(64) constexpr double kInverseCenters[16] = {
    0x1.0000000000000p+0, 0x1.e1e1e1e1e1e1ep-1, 0x1.c71c71c71c71cp-1, 0x1.af286bca1af28p-1,
    0x1.999999999999ap-1, 0x1.8618618618618p-1, 0x1.745d1745d1746p-1, 0x1.642c8590b2164p-1,
    0x1.5555555555555p-1, 0x1.47ae147ae147bp-1, 0x1.3b13b13b13b14p-1, 0x1.2f684bda12f68p-1,
    0x1.2492492492492p-1, 0x1.1a7b9611a7b96p-1, 0x1.1111111111111p-1, 0x1.0842108421084p-1};
alignas(64) constexpr double kLogCenters[16] = {
    0.0, 0x1.f0a30c01162a8p-5, 0x1.e27076e2af2eap-4, 0x1.5ff3070a793d6p-3,
    0x1.c8ff7c79a9a20p-3, 0x1.1675cababa60fp-2, 0x1.4618bc21c5ec2p-2, 0x1.739d7f6bbd007p-2,
    0x1.9f323ecbf984dp-2, 0x1.c8ff7c79a9a21p-2, 0x1.f128f5faf06ecp-2, 0x1.0be72e4252a83p-1,
    0x1.1e85f5e7040d1p-1, 0x1.307d7334f10bep-1, 0x1.41d8fe84672afp-1, 0x1.52a2d265bc5abp-1};

// log1p(t) for t >= 0 as rw::log1p_nonnegative, log(u) + (t - (u - 1)) / u with u = 1 + t, to
// ~1e-13 relative without a divide (math::log has one, and special cases u in [1, 2^100) does
// not need; a NaN t gives a meaningless value: the caller takes such rows apart). log u =
// k ln2 + log(1/c_j') + log1p(r), u = 2^k m (vgetexppd, vgetmantpd), j = m's top 4 mantissa
// bits, r = m c_j' - 1 in [0, 1/16) by one fma, log1p(r) = r + r^2 Q(r) with a degree-5 Q
// fitted for relative error (5.1e-14). The bracket, u's rounding error (at most half an ulp of
// u), needs only 2^-27 of relative accuracy: rcp14 and a Newton step.
FASTLOSS_HD lanes::Double8 log1p_nonnegative(lanes::Double8 t) {
  const lanes::Double8 u = 1.0 + t;
  const __m512d uv = (__m512d)u;
  const __m512d k = _mm512_getexp_pd(uv);
  const __m512d m = _mm512_getmant_pd(uv, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  const __m512i j = _mm512_srli_epi64(_mm512_castpd_si512(uv), 48);  // vpermt2pd reads its low 4 bits
  const __m512d inverse = _mm512_permutex2var_pd(_mm512_load_pd(kInverseCenters), j,
                                                 _mm512_load_pd(kInverseCenters + 8));
  const __m512d log_center = _mm512_permutex2var_pd(_mm512_load_pd(kLogCenters), j,
                                                    _mm512_load_pd(kLogCenters + 8));
  const __m512d r = _mm512_fmsub_pd(m, inverse, _mm512_set1_pd(1.0));
  const __m512d r2 = _mm512_mul_pd(r, r);
  const __m512d r4 = _mm512_mul_pd(r2, r2);
  const __m512d q01 = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.5555544390756p-2), _mm512_set1_pd(-0x1.ffffffff1faa3p-2));
  const __m512d q23 = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.996faec480846p-3), _mm512_set1_pd(-0x1.ffff21028880ap-3));
  const __m512d q45 = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.e65cb4a9cde03p-4), _mm512_set1_pd(-0x1.51517131b9c21p-3));
  const __m512d q = _mm512_fmadd_pd(r4, q45, _mm512_fmadd_pd(r2, q23, q01));
  const __m512d log1p_r = _mm512_fmadd_pd(r2, q, r);
  const __m512d log_u = _mm512_add_pd(_mm512_fmadd_pd(k, _mm512_set1_pd(0x1.62e42fefa39efp-1), log_center), log1p_r);
  return (lanes::Double8)log_u + lanes::divide_for_float32(t - (u - 1.0), u);
}

// lane l of the result = the sum of the 8 lanes of v[l], in a fixed tree (21 instructions for
// 8 rows instead of 8 horizontal sums of 6).
FASTLOSS_HD __m512d transpose_sums(const __m512d* v) {
  __m512d pairs[4];
  for (int i = 0; i < 4; ++i) {
    // 128-bit block b of pairs[i]: the sums of lanes 2b, 2b+1 of v[2i] and of v[2i+1]
    pairs[i] = _mm512_add_pd(_mm512_unpacklo_pd(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_pd(v[2 * i], v[2 * i + 1]));
  }
  __m512d quads[2];
  for (int i = 0; i < 2; ++i) {
    quads[i] = _mm512_add_pd(_mm512_shuffle_f64x2(pairs[2 * i], pairs[2 * i + 1], 0x88),
                             _mm512_shuffle_f64x2(pairs[2 * i], pairs[2 * i + 1], 0xdd));
  }
  return _mm512_add_pd(_mm512_shuffle_f64x2(quads[0], quads[1], 0x88),
                       _mm512_shuffle_f64x2(quads[0], quads[1], 0xdd));
}

}  // namespace short_avx512

// exp(d) of a row's x - max, where GapExp takes a NaN d to inf: here NaN stays NaN, as the
// portable exp keeps it.
__attribute__((always_inline)) inline __m512d exp_keeping_nan(const short_avx512::GapExp& gap_exp, __m512d d) {
  return _mm512_mask_mov_pd(gap_exp(d), _mm512_cmp_pd_mask(d, d, _CMP_UNORD_Q), d);
}

void tile_exps(const double* x, double max, double* out, int count) {
  const short_avx512::GapExp gap_exp;
  const __m512d m = _mm512_set1_pd(max);
  const auto exps = [&](__m512d v) { return exp_keeping_nan(gap_exp, _mm512_sub_pd(v, m)); };
  int j = 0;
  for (; j + 8 <= count; j += 8) _mm512_storeu_pd(out + j, exps(_mm512_loadu_pd(x + j)));
  if (j < count) {
    const __mmask8 lanes = short_avx512::low_lanes8(count - j);
    _mm512_mask_storeu_pd(out + j, lanes, exps(_mm512_maskz_loadu_pd(lanes, x + j)));
  }
}

// A block with a NaN, or whose max is a zero (+0 and -0 tie: which one tile_max returns depends
// on its order), takes tile_max itself.
double float_block_max(const float* x, int count, double* scratch) {
  const __m512 low = _mm512_set1_ps(-__builtin_inff());
  __m512 max = low;
  __mmask16 unordered = 0;
  int j = 0;
  for (; j + 16 <= count; j += 16) {
    const __m512 v = _mm512_loadu_ps(x + j);
    max = _mm512_max_ps(v, max);
    unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  if (j < count) {
    const __m512 v = _mm512_mask_loadu_ps(low, static_cast<__mmask16>((1u << (count - j)) - 1u), x + j);
    max = _mm512_max_ps(v, max);
    unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  const float result = _mm512_reduce_max_ps(max);
  if (unordered != 0 || result == 0.0f) {
    load(x, 1, 0, count, scratch);
    return tile_max(scratch, count);
  }
  return static_cast<double>(result);
}

// kNaNs: some x - max may be NaN, and must stay NaN (exp_keeping_nan).
template <bool kKeep, bool kNaNs>
double float_block_exps(const float* x, int count, double max, double* out) {
  const short_avx512::GapExp gap_exp;
  const __m512d m = _mm512_set1_pd(max);
  const auto exps = [&](__m512d v) {
    const __m512d d = _mm512_sub_pd(v, m);
    return kNaNs ? exp_keeping_nan(gap_exp, d) : gap_exp(d);
  };
  __m512d sum = _mm512_setzero_pd();
  int j = 0;
  for (; j + 8 <= count; j += 8) {
    const __m512d e = exps(_mm512_cvtps_pd(_mm256_loadu_ps(x + j)));
    if (kKeep) _mm512_storeu_pd(out + j, e);
    sum = _mm512_add_pd(sum, e);
  }
  if (j < count) {
    const __mmask8 lanes = short_avx512::low_lanes8(count - j);
    const __m512d e = exps(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(lanes, x + j)));
    if (kKeep) _mm512_mask_storeu_pd(out + j, lanes, e);
    sum = _mm512_mask_add_pd(sum, lanes, sum, e);
  }
  alignas(64) double lane[kLanes];
  _mm512_store_pd(lane, sum);
  return pairwise_sum(lane, kLanes);
}

void float_block_scaled(const double* e, int count, double factor, float* out) {
  const __m512d k = _mm512_set1_pd(factor);
  int j = 0;
  for (; j + 8 <= count; j += 8) _mm256_storeu_ps(out + j, _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_loadu_pd(e + j), k)));
  if (j < count) {
    const __mmask8 lanes = short_avx512::low_lanes8(count - j);
    _mm256_mask_storeu_ps(out + j, lanes, _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_maskz_loadu_pd(lanes, e + j), k)));
  }
}
#endif

template <class T, bool kSum, bool kElementwise, bool kGrad>
struct CrossEntropyKernel {
  const CrossEntropyPass<T>& p;
  double divisor;
  ExactSum* chunk_sums;

  // One row: its loss (returned), its gradient written. y < 0: probability targets.
  template <bool kCoefficients>
  double row(std::int64_t r, std::int64_t y, Tiles& tiles) const {
    const RowShape& shape = p.shape;
    const std::int64_t stride = shape.inner;
    const std::int64_t start = row_start(shape, r);
    const T* x = p.input + start;
    T* grad = kGrad ? p.grad_out + start : nullptr;
    const double eps = p.label_smoothing;
    Coefficients<T> coef;
    coef.weight = p.class_weight;
    coef.keep = 1.0 - eps;
    coef.spread = eps / static_cast<double>(shape.classes);
    const bool probabilities = y < 0;
    if (probabilities) coef.target = static_cast<const T*>(p.target) + start;
    // read before the gradient overwrites it (out may be the input)
    const double x_target = probabilities ? 0.0 : to_double(x[y * stride]);
    const double w_target =
        probabilities ? 0.0 : (p.class_weight != nullptr ? to_double(p.class_weight[y]) : 1.0);

    const KeptExps kept = kGrad ? kept_exps(shape.classes) : KeptExps{};
    Scan s = scan_row<T, kCoefficients>(x, stride, shape.classes, coef, tiles, kGrad ? &kept : nullptr);
    if (!probabilities) {  // the (1 - eps) weight_y [c == y] part of a class index's coefficients
      const double a = coef.keep * w_target;
      s.offsets += a == 0.0 ? 0.0 : a * (s.max - x_target);
      s.coefficients += a;
    }
    const double log_sum = math::log(s.sum);
    // a row whose coefficients are all 0 (a zero weight, a zero probability row) adds 0
    const double loss = s.coefficients == 0.0 ? 0.0 : rw::row_loss(s.offsets, s.coefficients, log_sum);
    if (kGrad) {
      double scale = row_scale(r);
#ifdef FASTLOSS_PLANTED_FAULT_CE_GRAD_IGNORES_WEIGHT
      if (!probabilities && w_target != 0.0) scale /= w_target;
#endif
      if (s.coefficients == 0.0) {
        zero_row(grad, stride, shape.classes, tiles);
        return loss;
      }
      const double k = s.coefficients * scale / s.sum;
      for (std::int64_t c0 = 0; c0 < shape.classes; c0 += kBlock) {
        const int count = static_cast<int>(std::min<std::int64_t>(kBlock, shape.classes - c0));
        // the kept exps, from their block's max to the row's: e = exp(x - m) k
        const double* e = kept.values + c0;
        const double block_k = rw::rescale(kept.block_max[c0 / kBlock], s.max) * k;
        if (kCoefficients) {
          coef.fill(stride, c0, count, tiles.a);
          for (int j = 0; j < count; ++j) tiles.x[j] = rw::grad_element(e[j], block_k, scale * tiles.a[j]);
          store(grad, stride, c0, count, tiles.x);
        } else {
          store_scaled(grad, stride, c0, count, e, block_k, tiles);
        }
      }
      if (!probabilities) {
        const double e_target = rw::row_exp(x_target, s.max, typename MathOf<T>::type());
        const double g = kCoefficients
                             ? rw::grad_element(e_target, k, scale * (coef.keep * w_target + coef.spread * w_target))
                             : rw::target_grad(e_target, s.sum, scale * w_target);
        grad[y * stride] = from_double<T>(g);
      }
    }
    return loss;
  }

  static void zero_row(T* grad, std::int64_t stride, std::int64_t classes, Tiles&) {
    for (std::int64_t c = 0; c < classes; ++c) grad[c * stride] = from_double<T>(0.0);
  }

  // The upstream gradient of row r, divided by the mean's divisor for reduction='mean'.
  double row_scale(std::int64_t r) const {
    const double scale = p.grad_output != nullptr ? to_double(p.grad_output[r]) : p.grad_scale;
    return p.mean ? scale / divisor : scale;
  }

  // The loss (and gradient) of short rows (unsmoothed class indices): a group of rows shares one
  // flat tile, whose exps are taken in one vectorised loop, each against its own row's target
  // logit x_y: e_c = exp(x_c - x_y), so e_y = 1 and the row's loss is
  // w_y log(1 + sum_{c != y} e_c) (fastloss/softmax.h), with no row max and no cancellation.
  // Everything a row computes comes from that row alone, so its bits do not depend on which
  // rows share its tile (a Dask block of the rows must give the in-memory bits). A row whose
  // x_y is not finite, or whose other exps sum to 2^1000 or more (a gap x_c - x_y near the
  // exp's range, ~693, or a NaN), takes the general row scan instead, which also depends on
  // the row alone. losses[r - begin] for each row. The gradient is w_y scale (e_c / s - [c == y]),
  // s = sum_c e_c, its target class as -w_y scale (sum_{c != y} e_c) / s (no cancellation).
  template <class Targets>
  void short_rows(const Targets& targets, std::int64_t begin, std::int64_t end, double* losses,
                  Tiles& tiles) const {
#if defined(__AVX512F__)
    if constexpr (std::is_same<T, float>::value) {
      short_rows_avx512(targets, begin, end, losses, tiles);
      return;
    }
#endif
    const std::int64_t classes = p.shape.classes;
    const int group_rows = static_cast<int>(kShortTile / classes);
    alignas(64) double e[kShortTile];
    alignas(64) double reference[kShortTile];
    alignas(64) double others_of[kShortTile];
    for (std::int64_t g = begin; g < end; g += group_rows) {
      const int rows = static_cast<int>(std::min<std::int64_t>(group_rows, end - g));
      const int count = static_cast<int>(rows * classes);
      load(p.input + g * classes, 1, 0, count, e);
      for (int r = 0; r < rows; ++r) {
        const std::int64_t y = targets.at(g + r);
        // an ignored (or out-of-range: never reached, checked before) row's exps go unused
        const double x_target = y >= 0 && y < classes ? e[r * classes + y] : 0.0;
        for (std::int64_t c = 0; c < classes; ++c) reference[r * classes + c] = x_target;
      }
      for (int j = 0; j < count; ++j) e[j] = rw::gap_exp(e[j], reference[j], typename MathOf<T>::type());
      for (int r = 0; r < rows; ++r) {
        const std::int64_t y = targets.at(g + r);
        others_of[r] = -1.0;  // the general scan
        if (y == p.ignore_index || y < 0) continue;
        if (!(reference[r * classes] - reference[r * classes] == 0.0)) continue;  // x_y not finite
        double* row = e + r * classes;
        // the target's exp (exactly 1) out of the row while it is summed, two chains so that
        // the adds are not one latency-bound chain; put back for the gradient
        row[y] = 0.0;
        double even = 0.0, odd = 0.0;
        std::int64_t c = 0;
        for (; c + 1 < classes; c += 2) {
          even += row[c];
          odd += row[c + 1];
        }
        if (c < classes) even += row[c];
        row[y] = 1.0;
        double others = even + odd;
#ifdef FASTLOSS_PLANTED_FAULT_CE_ROW_SUM_BY_TILE_POSITION
        if (r % 3 == 1) {
          others = 0.0;
          for (std::int64_t k = classes - 1; k >= 0; --k) others += k == y ? 0.0 : row[k];
        }
#endif
        if (others < 0x1p1000) others_of[r] = others;  // false for NaN
      }
      for (int r = 0; r < rows; ++r) {
        const std::int64_t y = targets.at(g + r);
        double loss = 0.0;
        T* grad = kGrad ? p.grad_out + (g + r) * classes : nullptr;
        if (y == p.ignore_index) {
          if (kGrad) zero_row(grad, 1, classes, tiles);
        } else if (others_of[r] < 0.0) {
          loss = row<false>(g + r, y, tiles);
        } else {
          const double w = p.class_weight != nullptr ? to_double(p.class_weight[y]) : 1.0;
          loss = w == 0.0 ? 0.0 : w * rw::class_index_loss(others_of[r], 1.0);
          if (kGrad) {
            const double* row = e + r * classes;
            const double sum = others_of[r] + 1.0;
            const double scaled_weight = w == 0.0 ? 0.0 : row_scale(g + r) * w;
            const double k = scaled_weight / sum;
            for (std::int64_t c = 0; c < classes; ++c) grad[c] = from_double<T>(row[c] * k);
            grad[y] = from_double<T>(-scaled_weight * (others_of[r] / sum));
          }
        }
        losses[g + r - begin] = loss;
      }
    }
  }

#if defined(__AVX512F__)
  // short_rows for float32 rows with AVX-512, with short_rows' arithmetic: e_c = exp(x_c - x_y)
  // against the row's own target logit (e_y = 1), the loss w_y log1p(sum_{c != y} e_c), and
  // the same row-local rule for the general scan, so a row's bits depend on the row alone. A
  // group is a multiple of 8 rows (at most kShortTile elements): each row's x_y is spread over
  // its classes in a reference tile, the gaps' exps (short_avx512::GapExp) go to a tile of
  // doubles in one pass over the group's floats; the target's own place in the reference tile
  // holds +inf instead, so that its exp is 0 and the row's sum is of the other classes (NaN
  // where the row is special: an ignored target, or an x_y that is not finite). Each block
  // of 8 rows sums its rows by masked loads from where each row starts (so the order of a row's
  // additions is the same wherever it sits in the tile: the lanes of its vectors, then one
  // transposed tree) into one vector of the 8 rows' sums; the log1p, the weight and, for the
  // gradient, the row's factor are then taken for 8 rows at a time.
  template <class Targets>
  void short_rows_avx512(const Targets& targets, std::int64_t begin, std::int64_t end, double* losses,
                         Tiles& tiles) const {
    // the vectors of 8 doubles a row spans, a constant in each instantiation (unrolled loads)
    switch ((p.shape.classes + 7) / 8) {
      case 1: return short_rows_avx512<1>(targets, begin, end, losses, tiles);
      case 2: return short_rows_avx512<2>(targets, begin, end, losses, tiles);
      case 3: return short_rows_avx512<3>(targets, begin, end, losses, tiles);
      case 4: return short_rows_avx512<4>(targets, begin, end, losses, tiles);
      case 5: return short_rows_avx512<5>(targets, begin, end, losses, tiles);
      case 6: return short_rows_avx512<6>(targets, begin, end, losses, tiles);
      case 7: return short_rows_avx512<7>(targets, begin, end, losses, tiles);
      default: return short_rows_avx512<8>(targets, begin, end, losses, tiles);
    }
  }

  template <int vectors, class Targets>
  void short_rows_avx512(const Targets& targets, std::int64_t begin, std::int64_t end, double* losses,
                         Tiles& tiles) const {
    static_assert(8 * vectors <= kShortRow + 7, "a row of at most kShortRow classes");
    namespace sa = short_avx512;
    const int classes = static_cast<int>(p.shape.classes);
    const int group_rows = kShortTile / (8 * classes) * 8;
    const bool weighted = p.class_weight != nullptr;
    const __mmask8 last_mask = sa::low_lanes8(classes - 8 * (vectors - 1));
    // + 8: the last row's masked vector may reach past the group's elements (C = 1, 2, 4)
    alignas(64) double e[kShortTile + 8];
    alignas(64) double reference[kShortTile + 8];
    alignas(64) double weight[kShortTile];
    alignas(64) double row_factor[8], target_grad[8];
    int target_of[kShortTile];
    const double nan = math::quiet_nan();
    const sa::GapExp gap_exp;
    for (std::int64_t g = begin; g < end; g += group_rows) {
      const int rows = static_cast<int>(std::min<std::int64_t>(group_rows, end - g));
      const int count = rows * classes;
      const float* x = p.input + g * classes;
      // the next group's targets are fetched while this one computes
      for (int r = 0; r < group_rows; r += 8) targets.prefetch(g + group_rows + r);
      for (int r = 0; r < rows; ++r) {
        const std::int64_t y = targets.at(g + r);
        const bool ignored = y == p.ignore_index;
        const int c = ignored ? 0 : static_cast<int>(y);
        const float x_target_float = x[r * classes + c];
        const double x_target = static_cast<double>(x_target_float);
        std::uint32_t bits;
        __builtin_memcpy(&bits, &x_target_float, sizeof bits);
        const bool special = ignored | ((bits & 0x7f800000u) == 0x7f800000u);  // NaN or +-inf
        target_of[r] = c;
        if (weighted) weight[r] = ignored ? 0.0 : static_cast<double>(p.class_weight[y]);
        const __m512d spread = _mm512_set1_pd(x_target);
        double* row = reference + r * classes;
        for (int v = 0; v + 1 < vectors; ++v) _mm512_storeu_pd(row + 8 * v, spread);
        _mm512_mask_storeu_pd(row + 8 * (vectors - 1), last_mask, spread);
        // the target's own exp out of its row's sum: against +inf its gap is -inf, its exp 0;
        // NaN makes a special row's sum NaN
        row[c] = special ? nan : __builtin_inf();
      }
      for (int j = 0; j < count; j += 8) {
        // the next group's logits, while this one computes (its first pass otherwise waits on DRAM)
        _mm_prefetch(reinterpret_cast<const char*>(x + count + j), _MM_HINT_T0);
        const int n = std::min(8, count - j);
        const __mmask8 lanes = sa::low_lanes8(n);
        const __m256 xf = n == 8 ? _mm256_loadu_ps(x + j) : _mm256_maskz_loadu_ps(lanes, x + j);
        const __m512d ref = n == 8 ? _mm512_load_pd(reference + j) : _mm512_maskz_load_pd(lanes, reference + j);
        _mm512_store_pd(e + j, gap_exp(_mm512_sub_pd(_mm512_cvtps_pd(xf), ref)));
      }
      const int padded = (rows + 7) / 8 * 8;
      for (int r = rows; r < padded; ++r) weight[r] = 0.0;
      for (int r0 = 0; r0 < rows; r0 += 8) {
        const int live = std::min(8, rows - r0);
        __m512d row_sums[8];
        for (int l = 0; l < 8; ++l) {
          const double* row = e + (l < live ? r0 + l : r0) * classes;  // absent rows: any row
          __m512d sum = vectors == 1 ? _mm512_maskz_loadu_pd(last_mask, row) : _mm512_loadu_pd(row);
          for (int v = 1; v + 1 < vectors; ++v) sum = _mm512_add_pd(sum, _mm512_loadu_pd(row + 8 * v));
          if (vectors > 1) sum = _mm512_add_pd(sum, _mm512_maskz_loadu_pd(last_mask, row + 8 * (vectors - 1)));
          row_sums[l] = sum;
        }
        const __m512d others = sa::transpose_sums(row_sums);
        const __m512d w = weighted ? _mm512_load_pd(weight + r0) : _mm512_set1_pd(1.0);
        // the row-local rule of short_rows: the other exps sum below 2^1000 (false for NaN)
        const __mmask8 fast = _mm512_cmp_pd_mask(others, _mm512_set1_pd(0x1p1000), _CMP_LT_OQ) & sa::low_lanes8(live);
        const __mmask8 weight_nonzero = _mm512_cmp_pd_mask(w, _mm512_setzero_pd(), _CMP_NEQ_UQ);
        const lanes::Double8 ratio = sa::log1p_nonnegative((lanes::Double8)others);
        _mm512_mask_storeu_pd(losses + (g + r0 - begin), sa::low_lanes8(live),
                              _mm512_maskz_mul_pd(weight_nonzero, w, (__m512d)ratio));
        if (kGrad && fast != 0) {
          __m512d scale;
          if (p.grad_output != nullptr) {
            scale = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(sa::low_lanes8(live), p.grad_output + g + r0));
          } else {
            scale = _mm512_set1_pd(p.grad_scale);
          }
          if (p.mean) scale = _mm512_div_pd(scale, _mm512_set1_pd(divisor));
          const __m512d sum = _mm512_add_pd(others, _mm512_set1_pd(1.0));
          // w == 0 adds 0 even where the scale is inf or NaN (as short_rows)
          const __m512d scaled_weight = _mm512_maskz_mul_pd(weight_nonzero, scale, w);
          _mm512_store_pd(row_factor, _mm512_div_pd(scaled_weight, sum));
          _mm512_store_pd(target_grad, _mm512_mul_pd(-scaled_weight, _mm512_div_pd(others, sum)));
          for (int l = 0; l < live; ++l) {
            if (!((fast >> l) & 1)) continue;
            const int r = r0 + l;
            const double* row = e + r * classes;
            float* grad = p.grad_out + (g + r) * classes;
            const __m512d k = _mm512_set1_pd(row_factor[l]);
            for (int v = 0; v + 1 < vectors; ++v) {
              _mm256_storeu_ps(grad + 8 * v, _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_loadu_pd(row + 8 * v), k)));
            }
            const int v = vectors - 1;
            _mm256_mask_storeu_ps(grad + 8 * v, last_mask,
                                  _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_maskz_loadu_pd(last_mask, row + 8 * v), k)));
            grad[target_of[r]] = static_cast<float>(target_grad[l]);
          }
        }
        // the special rows, one by one
        for (unsigned special = static_cast<unsigned>(~fast) & sa::low_lanes8(live); special != 0;
             special &= special - 1) {
          const int r = r0 + __builtin_ctz(special);
          losses[g + r - begin] = general_row(targets, g + r, tiles);
        }
      }
    }
  }
#endif

  // A row of short_rows that the shared-tile path does not take: an ignored target (loss 0,
  // gradient 0) or the general row scan.
  template <class Targets>
  double general_row(const Targets& targets, std::int64_t r, Tiles& tiles) const {
    const std::int64_t y = targets.at(r);
    if (y == p.ignore_index) {
      if (kGrad) zero_row(p.grad_out + r * p.shape.classes, 1, p.shape.classes, tiles);
      return 0.0;
    }
    return row<false>(r, y, tiles);
  }

  template <class Targets>
  void chunk(const Targets& targets, std::int64_t index, std::int64_t begin, std::int64_t end) const {
    Tiles tiles;
    ExactLanes lanes;
    const bool smoothing = p.label_smoothing != 0.0;
    if constexpr (Targets::kIndices) {
      if (!smoothing && p.shape.inner == 1 && p.shape.classes <= kShortRow) {
        // this thread's buffer, grown once (not a fresh, zeroed vector per chunk)
        thread_local std::vector<double> buffer;
        if (buffer.size() < static_cast<std::size_t>(end - begin)) buffer.resize(static_cast<std::size_t>(end - begin));
        double* const losses = buffer.data();
        short_rows(targets, begin, end, losses, tiles);
        if (kElementwise) {
          for (std::int64_t r = begin; r < end; ++r) p.loss_out[r] = from_double<T>(losses[r - begin]);
        }
        if (kSum) lanes.add_all(losses, end - begin);
        if (kSum) chunk_sums[index] = lanes.total();
        return;
      }
    }
    for (std::int64_t r = begin; r < end; ++r) {
      double loss = 0.0;
      if constexpr (Targets::kIndices) {
        const std::int64_t y = targets.at(r);
        if (y == p.ignore_index) {
          if (kGrad) zero_row(p.grad_out + row_start(p.shape, r), p.shape.inner, p.shape.classes, tiles);
        } else {
          loss = smoothing ? row<true>(r, y, tiles) : row<false>(r, y, tiles);
        }
      } else {
        loss = row<true>(r, -1, tiles);
      }
      if (kElementwise) p.loss_out[r] = from_double<T>(loss);
      if (kSum) lanes.add(r - begin, loss);
    }
    if (kSum) chunk_sums[index] = lanes.total();
  }

  template <class Targets>
  ExactSum run(const Targets& targets) const {
    const std::int64_t rows = p.shape.rows();
    const std::int64_t per_chunk = rows_per_chunk(p.shape.classes);
    for_each_row_chunk(rows, per_chunk, p.shape.elements(),
                       [&](std::int64_t c, std::int64_t begin, std::int64_t end) { chunk(targets, c, begin, end); });
    return kSum ? pairwise_exact_sum(chunk_sums, (rows + per_chunk - 1) / per_chunk) : ExactSum{};
  }
};

struct ProbabilityTargets {
  static constexpr bool kIndices = false;
};

template <class T, bool kSum, bool kElementwise, bool kGrad>
CrossEntropyResult run_outputs(const CrossEntropyPass<T>& p) {
  CrossEntropyResult result;
  const std::int64_t rows = p.shape.rows();
  if (p.target_kind == TargetKind::Probabilities) {
    result.divisor = static_cast<double>(rows);
  } else {
    result = p.target_kind == TargetKind::ClassIndex64
                 ? check_class_indices(p, static_cast<const std::int64_t*>(p.target))
                 : check_class_indices(p, static_cast<const std::int32_t*>(p.target));
    if (result.bad_row >= 0) return result;
  }
  const std::int64_t per_chunk = rows_per_chunk(p.shape.classes);
  std::vector<ExactSum> chunk_sums(kSum ? static_cast<std::size_t>((rows + per_chunk - 1) / per_chunk) : 0);
  const CrossEntropyKernel<T, kSum, kElementwise, kGrad> kernel{p, result.divisor, chunk_sums.data()};
  ExactSum sum;
  switch (p.target_kind) {
    case TargetKind::ClassIndex64:
      sum = kernel.run(ClassIndexTargets<std::int64_t>{static_cast<const std::int64_t*>(p.target)});
      break;
    case TargetKind::ClassIndex32:
      sum = kernel.run(ClassIndexTargets<std::int32_t>{static_cast<const std::int32_t*>(p.target)});
      break;
    case TargetKind::Probabilities:
      sum = kernel.run(ProbabilityTargets{});
      break;
  }
  result.sum = sum.hi;
  result.sum_lo = sum.lo;
  return result;
}

template <class T>
CrossEntropyResult run_cross_entropy_impl(PassOutputs outputs, const CrossEntropyPass<T>& p) {
  switch (outputs) {
    case PassOutputs::Sum: return run_outputs<T, true, false, false>(p);
    case PassOutputs::SumAndGrad: return run_outputs<T, true, false, true>(p);
    case PassOutputs::Elementwise: return run_outputs<T, false, true, false>(p);
    case PassOutputs::ElementwiseAndGrad: return run_outputs<T, false, true, true>(p);
    case PassOutputs::Grad: return run_outputs<T, false, false, true>(p);
  }
  return CrossEntropyResult{};
}

}  // namespace

#define FASTLOSS_MULTICLASS_KERNELS_OF(T)                                                     \
  void run_row_op(RowOp op, const RowPass<T>& p) { run_row_op_impl(op, p); }                   \
  CrossEntropyResult run_cross_entropy(PassOutputs outputs, const CrossEntropyPass<T>& p) {    \
    return run_cross_entropy_impl(outputs, p);                                                 \
  }
FASTLOSS_MULTICLASS_KERNELS_OF(float)
FASTLOSS_MULTICLASS_KERNELS_OF(double)
FASTLOSS_MULTICLASS_KERNELS_OF(Float16)
FASTLOSS_MULTICLASS_KERNELS_OF(BFloat16)

}  // namespace FASTLOSS_ISA
}  // namespace fastloss
