// The CPU kernels. Compiled once per instruction set with -DFASTLOSS_ISA=<namespace> (see
// CMakeLists.txt); everything here is in that namespace or file-local, so the builds never mix.
// Never build this file with -ffast-math: the reduction's error bound (kernels.h) relies on the
// compiler keeping every addition as written, and the double-double errors would be optimised
// away.
//
// The loops run on explicit vectors of doubles (fastloss/lanes.h), the widest the build's
// instruction set has: 2 (SSE2), 4 (AVX2) or 8 (AVX-512) lanes. float32, float16 and bfloat16
// inputs are widened on load and rounded back on store; a run's last, partial vector goes
// through a zero-padded copy.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#if defined(FASTLOSS_PLANTED_FAULT_BCE_GRAD_PARALLEL)
#include <omp.h>
#endif

#include "fastloss/double_double.h"
#include "fastloss/half.h"
#include "fastloss/loss_pass.h"
#include "kernels.h"
#include "storage.h"

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
  // two floats by memcpy, not through a double*: a float32 array may be only 4-byte aligned
  // (UBSan: a misaligned double access); the compiler emits the same 8-byte load
  double two_floats;
  std::memcpy(&two_floats, p, sizeof two_floats);
  return (V)_mm_cvtps_pd(_mm_castpd_ps(_mm_set_sd(two_floats)));
#endif
}

void store(double* p, V v) { std::memcpy(p, &v, sizeof v); }

void store(float* p, V v) {
#if defined(__AVX512F__)
  _mm256_storeu_ps(p, _mm512_cvtpd_ps((__m512d)v));
#elif defined(__AVX__)
  _mm_storeu_ps(p, _mm256_cvtpd_ps((__m256d)v));
#else
  const __m128 two_floats = _mm_cvtpd_ps((__m128d)v);  // (as load: memcpy, 4-byte alignment)
  std::memcpy(p, &two_floats, 2 * sizeof(float));
#endif
}

// float16: F16C's vcvtph2ps (exact) then widened, in the x86-64-v3 and v4 builds (8 halves
// into 8 doubles with AVX-512: _mm512_cvtph_ps would convert 16); bit arithmetic in the
// baseline, whose SSE2 has no conversion.
V load(const Float16* p) {
#if defined(__AVX512F__)
  return (V)_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__F16C__)
  return (V)_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  V v;
  for (int k = 0; k < kWidth; ++k) v[k] = half::float16_to_double(p[k].bits);
  return v;
#endif
}

// bfloat16: its bits are the top half of a float32's, so placed there, the low half zero, they
// are the float32, widened as such. One byte shuffle places them (the 8 values loaded into both
// 128-bit lanes, 4 to a lane): on Zen 4 a zero extension and a shift took 0.8 cycles more per
// 8 values (bench/NOTES.md).
V load(const BFloat16* p) {
#if defined(__AVX512F__)
  const __m256i to_top_halves = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,  //
                                                 -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
  const __m256i both_lanes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return (V)_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_shuffle_epi8(both_lanes, to_top_halves)));
#elif defined(__AVX2__)
  const __m128i to_top_halves = _mm_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7);
  const __m128i four = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return (V)_mm256_cvtps_pd(_mm_castsi128_ps(_mm_shuffle_epi8(four, to_top_halves)));
#else
  V v;
  for (int k = 0; k < kWidth; ++k) v[k] = half::bfloat16_to_double(p[k].bits);
  return v;
#endif
}

// Stores round the double lanes once to the 16-bit format (half.h: F16C's vcvtps2ph alone
// would take a float32 already rounded to nearest once, a double rounding), then narrow the
// 64-bit lanes of bits to 16.
template <class Format, class T>
void store_bits(T* p, V v) {
  const lanes::Traits<V>::Bits bits = half::round_to_bits<Format>(v);
  for (int k = 0; k < kWidth; ++k) p[k].bits = static_cast<std::uint16_t>(bits[k]);
}

#if defined(__AVX512F__)
// AVX-512 has the double -> float32 conversion with its own rounding mode: toward zero, with
// the inexact lanes' lowest mantissa bit set, is the double rounded to odd, and a float32
// keeps 13 (float16) or 16 (bfloat16) bits more than the 16-bit format, so rounding that
// float32 to nearest even gives the double's correct rounding (Boldo and Melquiond's
// round-to-odd): 5 instructions for 8 lanes where half.h's bit arithmetic takes ~20 (the
// fused loss+gradient pass was compute-bound on it: bench/NOTES.md). Rounding toward zero
// never overflows: a double beyond the float32 range becomes FLT_MAX, odd, which the 16-bit
// rounding takes to inf as it should; NaN stays NaN. With kTestDroppedBits the inexact lanes
// are told by the double's 29 low mantissa bits, which the conversion drops, in one integer test
// instead of a widening and a compare (two of the two-pipe instructions a vector's store spent,
// a tenth of the fused float16 pass): exact for every double at or above float32's smallest
// normal. Below it float16 does not care (all those round to one of its zeros: its smallest
// half-way point is 2^-25); bfloat16, of float32's range, does (its store below).
template <bool kTestDroppedBits>
__m256 round_to_odd_float32(V v) {
#ifdef FASTLOSS_PLANTED_FAULT_HALF_STORE_VIA_FLOAT32
  for (int k = 0; k < kWidth; ++k) {
    volatile float narrowed = static_cast<float>(v[k]);  // (GCC drops a plain float round trip here)
    v[k] = narrowed;
  }
#endif
  const __m512d d = (__m512d)v;
  const __m256i truncated =
      _mm256_castps_si256(_mm512_cvt_roundpd_ps(d, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
  const __mmask8 inexact =
      kTestDroppedBits ? _mm512_test_epi64_mask(_mm512_castpd_si512(d), _mm512_set1_epi64(0x1fffffff))
               : _mm512_cmp_pd_mask(_mm512_cvtps_pd(_mm256_castsi256_ps(truncated)), d, _CMP_NEQ_UQ);
  return _mm256_castsi256_ps(_mm256_mask_or_epi32(truncated, inexact, truncated, _mm256_set1_epi32(1)));
}

void store(Float16* p, V v) {
  const __m128i halves = _mm256_cvtps_ph(round_to_odd_float32<true>(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), halves);
}

#if defined(__AVX512BF16__)
// Whether this CPU has AVX512_BF16's conversions (the x86-64-v4 build also runs on AVX-512 CPUs
// without them; the build may use them only through the checks below).
const bool kHasBFloat16Conversion = __builtin_cpu_supports("avx512bf16");
#endif

// bfloat16 from the float32 bits: + 0x7fff + the kept lowest bit rounds to nearest even (a
// carry into the exponent is the next binade, or inf); NaN keeps its sign and is made quiet.
// vcvtneps2bf16 does exactly that in one instruction, where the CPU has it, but reads float32
// subnormals as zero. So with it: the round to odd by the dropped bits' test, and a vector with
// no subnormal lane is right (a lane at or above 2^-126 is tested exactly; one below it comes
// out subnormal, or 0 where the double is below 2^-149 and was taken as exact, which rounds to
// bfloat16's zero anyway); a vector with one (a double below 2^-126, where bfloat16 still has
// subnormals to round to) takes the exact compare and the integer steps. (Without the
// instruction, tried and slower, bench/NOTES.md: the test, with the compare only for vectors
// holding a double below 2^-126, and the NaN lanes by mask registers; a byte shuffle and a
// permute for the narrowing instead of vpmovdw.)
void store(BFloat16* p, V v) {
#if defined(__AVX512BF16__)
  if (kHasBFloat16Conversion) {
    const __m256 rounded_to_odd = round_to_odd_float32<true>(v);
    if (_mm256_fpclass_ps_mask(rounded_to_odd, 0x20) == 0) {  // 0x20: subnormal
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), (__m128i)_mm256_cvtneps_pbh(rounded_to_odd));
      return;
    }
  }
#endif
  const __m256i bits = _mm256_castps_si256(round_to_odd_float32<false>(v));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtepi32_epi16(_mm256_blendv_epi8(rounded, quiet, nan)));
}

#if defined(__AVX512BF16__)
// The same store without its branch, for the loss passes' gradients: the test and the jump on
// the mask cost ~0.8 cycles per 8 values on Zen 4, a fifth of this store (bench/NOTES.md). The
// lanes it could not take (subnormal float32) are ORed into `subnormal_lanes`, and the pass
// redoes its chunk's gradient with store() where any were (LossPassKernel::chunk_summed_by).
void store_noting_subnormals(BFloat16* p, V v, unsigned& subnormal_lanes) {
  const __m256 rounded_to_odd = round_to_odd_float32<true>(v);
  subnormal_lanes |= _mm256_fpclass_ps_mask(rounded_to_odd, 0x20);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), (__m128i)_mm256_cvtneps_pbh(rounded_to_odd));
}
#endif
#elif defined(__AVX2__) && defined(__F16C__)
// AVX2 has no conversion toward zero: the float32 rounded to nearest is moved one ulp toward
// zero where it landed beyond the double (a magnitude decrement of its bits: the float32 below
// in magnitude, FLT_MAX from inf), which gives the truncation, and the inexact lanes' lowest
// bit is set as in the AVX-512 build. 4 lanes.
__m128 round_to_odd_float32(V v) {
  const __m256d d = (__m256d)v;
  const __m128 nearest = _mm256_cvtpd_ps(d);
  const __m256d widened = _mm256_cvtps_pd(nearest);
  const __m256d sign = _mm256_set1_pd(-0.0);
  const __m256d beyond = _mm256_cmp_pd(_mm256_andnot_pd(sign, widened), _mm256_andnot_pd(sign, d), _CMP_GT_OQ);
  const __m256d inexact = _mm256_cmp_pd(widened, d, _CMP_NEQ_UQ);
  // the 64-bit masks narrowed to 32-bit lanes (each is all ones or all zeros)
  const __m128i beyond32 = _mm256_cvtpd_epi32(_mm256_and_pd(beyond, _mm256_set1_pd(-1.0)));
  const __m128i inexact32 = _mm256_cvtpd_epi32(_mm256_and_pd(inexact, _mm256_set1_pd(1.0)));
  const __m128i truncated = _mm_add_epi32(_mm_castps_si128(nearest), beyond32);
  return _mm_castsi128_ps(_mm_or_si128(truncated, inexact32));
}

// The double rounded to odd at float32's precision in the double's own bits (the 29 mantissa
// bits float32 drops cleared, the lowest kept one set where any was set), which float32 then
// holds exactly, so vcvtpd2ps does not round: 5 integer instructions for 4 lanes where the
// general version above takes ~13 (the fused 16-bit passes spent most of their time on them).
// Exact for every double at or above float32's smallest normal; below it vcvtpd2ps rounds,
// which float16 does not mind (every such double rounds to one of its zeros: its smallest
// half-way point is 2^-25) and bfloat16 avoids (its store below). Above FLT_MAX it gives FLT_MAX
// (odd) or inf, both of which the 16-bit rounding takes to inf, as it should; a NaN keeps a
// mantissa bit (set by the inexact test where its only ones were dropped).
__m128 round_to_odd_float32_by_bits(V v) {
  const __m256i bits = _mm256_castpd_si256((__m256d)v);
  const __m256i dropped_mask = _mm256_set1_epi64x(0x1fffffff);
  const __m256i exact = _mm256_cmpeq_epi64(_mm256_and_si256(bits, dropped_mask), _mm256_setzero_si256());
  const __m256i sticky = _mm256_andnot_si256(exact, _mm256_set1_epi64x(0x20000000));
  const __m256i odd = _mm256_or_si256(_mm256_andnot_si256(dropped_mask, bits), sticky);
  return _mm256_cvtpd_ps(_mm256_castsi256_pd(odd));
}

void store(Float16* p, V v) {
#ifdef FASTLOSS_PLANTED_FAULT_AVX2_FLOAT16_STORE_VIA_FLOAT32
  const __m128 narrowed = _mm256_cvtpd_ps((__m256d)v);
#else
  const __m128 narrowed = round_to_odd_float32_by_bits(v);
#endif
  const __m128i halves = _mm_cvtps_ph(narrowed, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), halves);
}

// bfloat16 from the float32 bits: + 0x7fff + the kept lowest bit rounds to nearest even (a
// carry into the exponent is the next binade, or inf); NaN keeps its sign and is made quiet.
// bfloat16 has float32's exponent range, so a double below 2^-126 in magnitude rounds to one of
// its subnormals, whose round to odd needs float32's subnormal grid: a vector with such a lane,
// or a NaN (one unordered compare finds both; both are rare), takes the general round to odd
// and the NaN blend, every other one the bit test and the rounding alone.
void store(BFloat16* p, V v) {
  const __m256d magnitude = _mm256_andnot_pd(_mm256_set1_pd(-0.0), (__m256d)v);
  const bool tiny_or_nan =
      _mm256_movemask_pd(_mm256_cmp_pd(magnitude, _mm256_set1_pd(0x1p-126), _CMP_NGE_UQ)) != 0;
  const __m128i bits = _mm_castps_si128(tiny_or_nan ? round_to_odd_float32(v)
                                                    : round_to_odd_float32_by_bits(v));
  const __m128i odd = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
  __m128i chosen = _mm_srli_epi32(_mm_add_epi32(bits, _mm_add_epi32(_mm_set1_epi32(0x7fff), odd)), 16);
  if (tiny_or_nan) {
    const __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(bits, _mm_set1_epi32(0x7fffffff)), _mm_set1_epi32(0x7f800000));
    const __m128i quiet = _mm_or_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(0x40));
    chosen = _mm_blendv_epi8(chosen, quiet, nan);
  }
  // the low 16 bits of each 32-bit lane, packed (values < 2^16: no saturation in packus)
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(chosen, chosen));
}
#else
void store(Float16* p, V v) { store_bits<half::Float16Format>(p, v); }
void store(BFloat16* p, V v) { store_bits<half::BFloat16Format>(p, v); }
#endif

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

// ---- streaming stores --------------------------------------------------------------------------
// A float32 or float64 output far larger than the last-level cache goes out by non-temporal
// stores. An ordinary store first reads the line it writes into, so a gradient pass (two arrays
// read, one written) moves four arrays' bytes, not three, and a copy three, not two; and the
// output would not stay in cache for its next reader anyway. Zen 4, 2 threads, N = 1e8
// (bench/NOTES.md): a copy 29 -> 40 GB/s, mse_loss_and_grad(out=) 22.8 -> 16.3 ms,
// sigmoid_backward 21.8 -> 16.7 ms. Below the threshold the output stays in cache for whatever
// reads it next. Only the passes bound by memory take them (the squared error's,
// sigmoid_backward). An output that is one of the pass's inputs is in cache already (just read):
// plain stores. The stores are 16 bytes wide because NumPy's buffers are 16-byte aligned (not
// 32): an AVX-512 vector's 8 floats go as two, its 8 doubles as four. Each chunk that streamed
// ends with an sfence, so its stores are visible to the threads that read the output after the
// parallel region (whose barrier orders ordinary stores only).
constexpr std::int64_t kStreamingStoreBytes = std::int64_t{32} << 20;

template <class T>
bool streams_into(const T* out, std::int64_t n, std::initializer_list<const void*> inputs) {
#if defined(__AVX__)
  if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value || std::is_same<T, Float16>::value ||
                std::is_same<T, BFloat16>::value) {
    // (16-bit outputs: the float32 gradient lanes alone stream them, store_gradient_pair;
    // store_streaming stores them as store() does)
    if (out == nullptr || n < kStreamingStoreBytes / static_cast<std::int64_t>(sizeof(T))) return false;
    if ((reinterpret_cast<std::uintptr_t>(out) & 15) != 0) return false;
    for (const void* input : inputs) {
      if (input == out) return false;
    }
    return true;
  }
#endif
  (void)out, (void)n, (void)inputs;
  return false;
}

template <class T>
void store_streaming(T* p, V v) {
#if defined(__AVX__)
  if constexpr (std::is_same<T, float>::value) {
#if defined(__AVX512F__)
    const __m256 f = _mm512_cvtpd_ps((__m512d)v);
    _mm_stream_ps(p, _mm256_castps256_ps128(f));
#ifdef FASTLOSS_PLANTED_FAULT_STREAMING_STORE_LOW_HALF_TWICE
    _mm_stream_ps(p + 4, _mm256_castps256_ps128(f));
#else
    _mm_stream_ps(p + 4, _mm256_extractf128_ps(f, 1));
#endif
#else
    _mm_stream_ps(p, _mm256_cvtpd_ps((__m256d)v));
#endif
    return;
  }
  if constexpr (std::is_same<T, double>::value) {
#if defined(__AVX512F__)
    const __m512d d = (__m512d)v;
    _mm_stream_pd(p, _mm512_castpd512_pd128(d));
#ifdef FASTLOSS_PLANTED_FAULT_STREAMING_STORE_FLOAT64_LOW_PAIR_TWICE
    _mm_stream_pd(p + 2, _mm512_castpd512_pd128(d));
#else
    _mm_stream_pd(p + 2, _mm512_extractf64x2_pd(d, 1));
#endif
    _mm_stream_pd(p + 4, _mm512_extractf64x2_pd(d, 2));
    _mm_stream_pd(p + 6, _mm512_extractf64x2_pd(d, 3));
#else
    const __m256d d = (__m256d)v;
    _mm_stream_pd(p, _mm256_castpd256_pd128(d));
    _mm_stream_pd(p + 2, _mm256_extractf128_pd(d, 1));
#endif
    return;
  }
#endif
  store(p, v);
}

// store() or store_streaming(), as the pass decided.
template <class T>
void store_to(T* p, V v, bool streaming) {
  if (streaming) {
    store_streaming(p, v);
  } else {
    store(p, v);
  }
}

void end_streaming(bool streamed) {
  if (streamed) _mm_sfence();
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

  // TwoSum(hi, term) and lo += its error, as dd::add_term, with 4 of the 7 adds on the FMA pipes.
  // With AVX-512, Fast2Sum instead: vrangepd orders the two by magnitude (signs kept), and the
  // error of the ordered pair is the same exact error (an exact error is unique), in 6
  // instructions instead of 7. The sum itself stays hi + term: vrangepd drops a NaN operand,
  // so the error may then be anything, which normalize() discards with the NaN sum.
  void add(int k, V term) {
#if defined(__AVX512F__)
    const V s = hi[k] + term;
    // _mm512_range_pd(a, b, 7) and (a, b, 6): the larger and the smaller magnitude, own sign
    const V big = __builtin_ia32_rangepd512_mask(hi[k], term, 7, V{}, static_cast<unsigned char>(0xff), 4);
    const V small = __builtin_ia32_rangepd512_mask(hi[k], term, 6, V{}, static_cast<unsigned char>(0xff), 4);
    hi[k] = s;
    lo[k] = add_on_fma_pipe(lo[k], small - (s - big), one);
#else
    const V s = hi[k] + term;
    const V bb = add_on_fma_pipe(s, -hi[k], one);
    const V e = (hi[k] - add_on_fma_pipe(s, -bb, one)) + add_on_fma_pipe(term, -bb, one);
    hi[k] = s;
    lo[k] = add_on_fma_pipe(lo[k], e, one);
#endif
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

// The plain sums of LossPass::plain_sum: the same round-robin over 4 vectors as LaneSums, one
// add per term; the vectors, then the lanes, in a fixed pairwise tree. The total goes out as
// a double-double (total, 0), for the chunks' double-double tree. kTermsMayBeNegative (the BCE
// losses, whose terms are >= 0 only for targets in [0, 1]): the least term is kept too (one
// select a vector), and a chunk with a negative one gives NaN, where the bound relative to the sum
// would not hold: the caller then sums again exactly, as it does for any sum not finite.
template <bool kTermsMayBeNegative>
struct PlainLaneSumsOf {
  static constexpr int kCount = 4;
  V sum[kCount] = {};
  V least = {};

  void add(int k, V term) {
    sum[k] += term;
#ifndef FASTLOSS_PLANTED_FAULT_PLAIN_SUM_SIGN_UNCHECKED
    // a NaN term leaves `least` as it was and makes the sum NaN
    if constexpr (kTermsMayBeNegative) least = select(term < least, term, least);
#endif
  }

  void total(double* out) const {
    const V both = (sum[0] + sum[1]) + (sum[2] + sum[3]);
    double lane[kWidth];
    std::memcpy(lane, &both, sizeof lane);
    for (int width = 1; width < kWidth; width *= 2) {
      for (int j = 0; j + width < kWidth; j += 2 * width) lane[j] += lane[j + width];
    }
    out[0] = lane[0];
    out[1] = 0.0;
    if constexpr (kTermsMayBeNegative) {
      if (lanes::any(least < V{})) out[0] = __builtin_nan("");
    }
  }
};

// ---- the 16-bit squared errors' sum in float32 lanes ----------------------------------------
// (kernels.h, kFloat32TermsRelativeError.) A float16 or bfloat16 widens to float32 exactly in one
// instruction, and 16 float32 lanes a register hold twice the doubles' 8: the unweighted
// squared error's sum takes its differences, squares and first additions there, in blocks of
// 16 steps of two float32 vectors a step, two steps over 4 accumulators (8 multiply-adds
// each), added in a (0 + 1) + (2 + 3) tree and widened into the plain double lanes once a
// block. A term goes through at most 8 + 2 float32 roundings, besides its difference's.
#if defined(__AVX512F__)
typedef __m512 FloatLanes;
#define FASTLOSS_FLOAT32_TERMS 1
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
typedef __m256 FloatLanes;
#define FASTLOSS_FLOAT32_TERMS 1
#endif

#ifdef FASTLOSS_FLOAT32_TERMS
constexpr int kFloatWidth = static_cast<int>(sizeof(FloatLanes) / sizeof(float));
constexpr int kFloat32TermSteps = 16;
constexpr std::int64_t kFloat32TermBlock = kFloat32TermSteps * 2 * kFloatWidth;

// 2 kFloatWidth values from p, as two float32 vectors; which lanes the values land in is no
// matter to a sum, as long as input and target land alike.
void load_float_pair(const Float16* p, FloatLanes& first, FloatLanes& second) {
#if defined(__AVX512F__)
  first = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  second = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
#else
  first = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  second = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
#endif
}

// bfloat16 pairs: the even values shifted into their 32-bit lane's top half, the odd ones
// there already (the low half masked off).
void load_float_pair(const BFloat16* p, FloatLanes& first, FloatLanes& second) {
#if defined(__AVX512F__)
  const __m512i both = _mm512_loadu_si512(p);
  first = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
  second = _mm512_castsi512_ps(_mm512_and_si512(both, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
#else
  const __m256i both = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  first = _mm256_castsi256_ps(_mm256_slli_epi32(both, 16));
  second = _mm256_castsi256_ps(_mm256_and_si256(both, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
#endif
}

FloatLanes add_square(FloatLanes sum, FloatLanes difference) {
#if defined(__AVX512F__)
  return _mm512_fmadd_ps(difference, difference, sum);
#else
  return _mm256_fmadd_ps(difference, difference, sum);
#endif
}

// The float32 lanes widened into the first two double vectors of the plain sums.
void add_widened(V* sum, FloatLanes block) {
#if defined(__AVX512F__)
  sum[0] += (V)_mm512_cvtps_pd(_mm512_castps512_ps256(block));
  sum[1] += (V)_mm512_cvtps_pd(_mm512_extractf32x8_ps(block, 1));
#else
  sum[0] += (V)_mm256_cvtps_pd(_mm256_castps256_ps128(block));
  sum[1] += (V)_mm256_cvtps_pd(_mm256_extractf128_ps(block, 1));
#endif
}

// Adds the squared errors of the whole blocks from i on to `sum`; returns where they end.
template <class T>
std::int64_t add_squared_errors_in_float32(const T* input, const T* target, std::int64_t i, std::int64_t end,
                                           V* sum) {
  for (; i + kFloat32TermBlock <= end; i += kFloat32TermBlock) {
    // (named, not an array indexed by the step: GCC kept that one in memory)
    FloatLanes p0 = {}, p1 = {}, p2 = {}, p3 = {};
    for (int step = 0; step < kFloat32TermSteps; step += 2) {
      const std::int64_t at = i + step * 2 * kFloatWidth;
      FloatLanes x0, x1, x2, x3, y0, y1, y2, y3;
      load_float_pair(input + at, x0, x1);
      load_float_pair(target + at, y0, y1);
      load_float_pair(input + at + 2 * kFloatWidth, x2, x3);
      load_float_pair(target + at + 2 * kFloatWidth, y2, y3);
      p0 = add_square(p0, x0 - y0);
      p1 = add_square(p1, x1 - y1);
      p2 = add_square(p2, x2 - y2);
      p3 = add_square(p3, x3 - y3);
    }
    add_widened(sum, (p0 + p1) + (p2 + p3));
  }
  return i;
}

// ---- the 16-bit squared error's gradient in float32 lanes -----------------------------------
// The gradient is D = (x - y) * scale in double rounded once to the 16-bit format. The double
// lanes take it through six conversions per 8 elements (both inputs widened twice, the round to
// odd, the narrowing), which bound the fused float16 pass at ~8.6 cycles per 8 on Zen 4
// (bench/NOTES.md). In float32 lanes q = (x - y) * float(scale) has three roundings (the
// difference, the scale, the product): |q - D| <= 3.0001 2^-24 |q|, plus 2^-150 where q is
// subnormal, at most 3 steps of q's own float32 grid (3.0001 at the top of a binade: below a
// power of two the steps halve, where the bound is half as many). Rounding is monotonic, so q
// rounds to D's 16-bit value unless one of the format's half-way points lies within those steps
// of q; gradient_in_doubt looks for one within kHalfwayMargin steps, and a vector where it finds
// one takes the double lanes instead: the bits are theirs either way. That is ~1.8 % of random
// float16 vectors (9 in 2^13 per element), fewer for bfloat16. A NaN is the double lanes' NaN
// without a test: x86 passes the same operand's payload on in either width, and narrowing keeps
// its top bits (tests/test_half_gradient_lanes.py compares every NaN). The scale must be a
// normal float32 (or 0) for its rounding to be relative: float32_gradient_scale_usable.
constexpr int kHalfwayMargin = 4;
#ifdef FASTLOSS_PLANTED_FAULT_HALF_GRAD_HALFWAY_UNCHECKED
constexpr bool kHalfwayChecked = false;
#else
constexpr bool kHalfwayChecked = true;
#endif

#if defined(__AVX512F__)
typedef __m512i FloatLaneBits;
FloatLaneBits bits_of(FloatLanes v) { return _mm512_castps_si512(v); }
FloatLaneBits splat_bits(int v) { return _mm512_set1_epi32(v); }
#else
typedef __m256i FloatLaneBits;
FloatLaneBits bits_of(FloatLanes v) { return _mm256_castps_si256(v); }
FloatLaneBits splat_bits(int v) { return _mm256_set1_epi32(v); }
#endif

FloatLanes splat_float(float v) {
#if defined(__AVX512F__)
  return _mm512_set1_ps(v);
#else
  return _mm256_set1_ps(v);
#endif
}

// The lanes in doubt, as a mask (a compare's k register, or AVX2's movemask), so that a
// pair's four tests join before one branch.
#if defined(__AVX512F__)
typedef __mmask16 DoubtMask;
#else
typedef int DoubtMask;
#endif

// The lanes whose bits below the format's last kept one (the low `kDroppedBits` of `placed`)
// are within kHalfwayMargin steps of the half-way pattern (the top dropped bit alone).
template <int kDroppedBits>
DoubtMask near_halfway(FloatLanes placed) {
  constexpr int kHalfway = 1 << (kDroppedBits - 1);
  constexpr int kDropped = (1 << kDroppedBits) - 1;
  if (!kHalfwayChecked) return 0;
  // (the window [halfway - margin, halfway + margin] as one unsigned compare of the offset bits)
#if defined(__AVX512F__)
  const __m512i below = _mm512_and_si512(_mm512_sub_epi32(bits_of(placed), splat_bits(kHalfway - kHalfwayMargin)),
                                         splat_bits(kDropped));
  return _mm512_cmple_epu32_mask(below, splat_bits(2 * kHalfwayMargin));
#else
  const __m256i below = _mm256_and_si256(_mm256_sub_epi32(bits_of(placed), splat_bits(kHalfway - kHalfwayMargin)),
                                         splat_bits(kDropped));
  return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(splat_bits(2 * kHalfwayMargin + 1), below)));
#endif
}

FloatLanes magnitude_of(FloatLanes v) {
#if defined(__AVX512F__)
  return _mm512_abs_ps(v);
#else
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
#endif
}

// float16 keeps 11 of float32's 24 bits from 2^-14 up; below, its subnormals are 2^-24 apart, as
// its normals in [2^-14, 2^-13), where magnitudes below 2^-14 are moved by adding 2^-14 (one
// rounding to 2^-37, half a step there: the margin holds).
DoubtMask gradient_in_doubt(const Float16*, FloatLanes q) {
  const FloatLanes magnitude = magnitude_of(q);
  const FloatLanes smallest_normal = splat_float(0x1p-14f);
#if defined(__AVX512F__)
  const FloatLanes placed = _mm512_mask_add_ps(
      magnitude, _mm512_cmp_ps_mask(magnitude, smallest_normal, _CMP_LT_OQ), magnitude, smallest_normal);
#else
  const FloatLanes placed =
      magnitude + _mm256_and_ps(_mm256_cmp_ps(magnitude, smallest_normal, _CMP_LT_OQ), smallest_normal);
#endif
  return near_halfway<13>(placed);
}

// bfloat16 has float32's exponents, subnormals included: its rounding drops the low 16 bits of
// every float32.
DoubtMask gradient_in_doubt(const BFloat16*, FloatLanes q) { return near_halfway<16>(magnitude_of(q)); }

// A power-of-two scale (every mean over 2^k elements) puts many gradients exactly on half-way
// points, where the test above would send most pairs to the double lanes. There q is exactly D
// wherever the float32 difference is exact and q is not a float32 subnormal (bfloat16's range),
// and then its own rounding is D's, ties included: the difference's error by Knuth's TwoSum
// (exact for every pair; NaN where an input is NaN or inf) is the whole test.
FloatLanes difference_error(FloatLanes x, FloatLanes y, FloatLanes d) {
  const FloatLanes moved = d - x;
  return (x - (d - moved)) - (y + moved);
}

template <class T>
DoubtMask exact_gradient_in_doubt(FloatLanes x, FloatLanes y, FloatLanes d, FloatLanes q) {
  const FloatLanes error = difference_error(x, y, d);
#ifdef FASTLOSS_PLANTED_FAULT_HALF_GRAD_DIFFERENCE_UNCHECKED
  (void)error;
  const FloatLanes unchecked = q - q;  // (NaN where q is NaN or inf, as the error would be)
#define FASTLOSS_DIFFERENCE_ERROR unchecked
#else
#define FASTLOSS_DIFFERENCE_ERROR error
#endif
#if defined(__AVX512F__)
  __mmask16 doubt = _mm512_cmp_ps_mask(FASTLOSS_DIFFERENCE_ERROR, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  if constexpr (std::is_same<T, BFloat16>::value) doubt |= _mm512_fpclass_ps_mask(q, 0x20);  // 0x20: subnormal
  return doubt;
#else
  __m256 doubt = _mm256_cmp_ps(FASTLOSS_DIFFERENCE_ERROR, _mm256_setzero_ps(), _CMP_NEQ_UQ);
  if constexpr (std::is_same<T, BFloat16>::value) {
    const __m256 magnitude = magnitude_of(q);
    doubt = _mm256_or_ps(doubt, _mm256_and_ps(_mm256_cmp_ps(magnitude, splat_float(0x1p-126f), _CMP_LT_OQ),
                                              _mm256_cmp_ps(magnitude, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
  }
  return _mm256_movemask_ps(doubt);
#endif
#undef FASTLOSS_DIFFERENCE_ERROR
}

// kStream: by non-temporal stores, 16 bytes at a time (streams_into: a 16-byte aligned output;
// a pair starts a whole number of 32 bytes into it).
template <bool kStream>
void store_16_bytes(void* p, __m128i v) {
  if constexpr (kStream) {
    _mm_stream_si128(static_cast<__m128i*>(p), v);
  } else {
    _mm_storeu_si128(static_cast<__m128i*>(p), v);
  }
}

template <bool kStream>
void store_32_bytes(void* p, __m256i v) {
  if constexpr (kStream) {
    store_16_bytes<true>(p, _mm256_castsi256_si128(v));
    store_16_bytes<true>(static_cast<char*>(p) + 16, _mm256_extracti128_si256(v, 1));
  } else {
    _mm256_storeu_si256(static_cast<__m256i*>(p), v);
  }
}

// The float32 lanes rounded to nearest even, stored: a pair of vectors as load_float_pair
// gives them (for bfloat16: the even elements, then the odd ones).
template <bool kStream>
void store_gradient_pair(Float16* p, FloatLanes first, FloatLanes second) {
#if defined(__AVX512F__)
  store_32_bytes<kStream>(p, _mm512_cvtps_ph(first, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  store_32_bytes<kStream>(p + 16, _mm512_cvtps_ph(second, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  store_16_bytes<kStream>(p, _mm256_cvtps_ph(first, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  store_16_bytes<kStream>(p + 8, _mm256_cvtps_ph(second, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
}

// bfloat16: + 0x7fff + the kept lowest bit rounds the bits to nearest even (a carry into the
// exponent is the next binade, or inf). A NaN here is a bfloat16 input's, quieted, or the default
// NaN: its low 16 bits are 0, so it passes unchanged. The even elements' rounded top halves go to
// the low halves of the 32-bit lanes, the odd ones' stay in the top halves.
template <bool kStream>
void store_gradient_pair(BFloat16* p, FloatLanes even, FloatLanes odd) {
#if defined(__AVX512F__)
  const auto rounded = [](FloatLanes v) {
    const __m512i bits = bits_of(v);
    const __m512i kept_lowest = _mm512_and_si512(_mm512_srli_epi32(bits, 16), splat_bits(1));
    return _mm512_add_epi32(bits, _mm512_add_epi32(splat_bits(0x7fff), kept_lowest));
  };
  const __m512i both = _mm512_or_si512(_mm512_srli_epi32(rounded(even), 16),
                                       _mm512_and_si512(rounded(odd), splat_bits(static_cast<int>(0xffff0000u))));
  if constexpr (kStream) {
    store_32_bytes<true>(p, _mm512_castsi512_si256(both));
    store_32_bytes<true>(p + 16, _mm512_extracti64x4_epi64(both, 1));
  } else {
    _mm512_storeu_si512(p, both);
  }
#else
  const auto rounded = [](FloatLanes v) {
    const __m256i bits = bits_of(v);
    const __m256i kept_lowest = _mm256_and_si256(_mm256_srli_epi32(bits, 16), splat_bits(1));
    return _mm256_add_epi32(bits, _mm256_add_epi32(splat_bits(0x7fff), kept_lowest));
  };
  const __m256i both = _mm256_or_si256(_mm256_srli_epi32(rounded(even), 16),
                                       _mm256_and_si256(rounded(odd), splat_bits(static_cast<int>(0xffff0000u))));
  store_32_bytes<kStream>(p, both);
#endif
}

// The squared errors' sum (kSum: into `sum`, as add_squared_errors_in_float32 adds it) and the
// gradient (x - y) * scale of the whole blocks from i on; returns where they end. A pair in doubt
// is handed to in_doubt(at, count, to), which writes those elements' gradient by the double
// lanes to `to` (it reads the inputs again: grad_out may be the input, not yet written there).
template <bool kSum, bool kPowerOfTwoScale, bool kStream, class T, class InDoubt>
std::int64_t squared_errors_and_gradient_in_float32(const T* input, const T* target, T* grad_out, double scale,
                                                    std::int64_t i, std::int64_t end, V* sum, InDoubt in_doubt) {
  const FloatLanes scale32 = splat_float(static_cast<float>(scale));
  constexpr std::int64_t kPair = 2 * kFloatWidth;
  const auto gradient_of = [&](std::int64_t at, FloatLanes x0, FloatLanes y0, FloatLanes d0, FloatLanes x1,
                               FloatLanes y1, FloatLanes d1) {
    const FloatLanes q0 = d0 * scale32, q1 = d1 * scale32;
    DoubtMask doubt0, doubt1;
    if constexpr (kPowerOfTwoScale) {
      doubt0 = exact_gradient_in_doubt<T>(x0, y0, d0, q0);
      doubt1 = exact_gradient_in_doubt<T>(x1, y1, d1, q1);
    } else {
      doubt0 = gradient_in_doubt(input, q0);
      doubt1 = gradient_in_doubt(input, q1);
    }
    if ((doubt0 | doubt1) != 0) {
      // the float32 lanes' values, the elements in doubt written over them by the double lanes,
      // all into a buffer, then stored as the pair would be: ordinary stores into lines being
      // streamed cost ~0.3 us each (float16 at 1e8: 37 against 11 ms). A float16 pair is two
      // runs of kFloatWidth elements, so only the run in doubt is redone; bfloat16's vectors
      // interleave, so both are.
      alignas(64) T redone[kPair];
      store_gradient_pair<false>(redone, q0, q1);
      if constexpr (std::is_same<T, Float16>::value) {
        if (doubt0 != 0) in_doubt(at, kFloatWidth, redone);
        if (doubt1 != 0) in_doubt(at + kFloatWidth, kFloatWidth, redone + kFloatWidth);
      } else {
        in_doubt(at, kPair, redone);
      }
      for (std::int64_t k = 0; k < kPair; k += 16) {
        store_32_bytes<kStream>(grad_out + at + k, _mm256_load_si256(reinterpret_cast<const __m256i*>(redone + k)));
      }
    } else {
      store_gradient_pair<kStream>(grad_out + at, q0, q1);
    }
  };
  for (; i + kFloat32TermBlock <= end; i += kFloat32TermBlock) {
    FloatLanes p0 = {}, p1 = {}, p2 = {}, p3 = {};
    for (int step = 0; step < kFloat32TermSteps; step += 2) {
      const std::int64_t at = i + step * kPair;
      FloatLanes x0, x1, x2, x3, y0, y1, y2, y3;
      load_float_pair(input + at, x0, x1);
      load_float_pair(target + at, y0, y1);
      load_float_pair(input + at + kPair, x2, x3);
      load_float_pair(target + at + kPair, y2, y3);
      const FloatLanes d0 = x0 - y0, d1 = x1 - y1, d2 = x2 - y2, d3 = x3 - y3;
      if constexpr (kSum) {
        p0 = add_square(p0, d0);
        p1 = add_square(p1, d1);
        p2 = add_square(p2, d2);
        p3 = add_square(p3, d3);
      }
      gradient_of(at, x0, y0, d0, x1, y1, d1);
      gradient_of(at + kPair, x2, y2, d2, x3, y3, d3);
    }
    if constexpr (kSum) add_widened(sum, (p0 + p1) + (p2 + p3));
  }
  return i;
}
#endif

// Whether the squared error's gradient scale is a normal float32 (or 0), so that its rounding to
// float32 is relative (the float32 gradient lanes above; the same test in every build).
bool float32_gradient_scale_usable(double scale) {
  const double magnitude = std::fabs(scale);
  return magnitude == 0.0 || (magnitude >= 0x1p-100 && magnitude <= 0x1p100);
}

bool is_power_of_two(double scale) {
  int exponent;
  return std::frexp(std::fabs(scale), &exponent) == 0.5;
}

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
  // where LossPass::plain_sum applies (kernels.h: its bound needs terms >= 0, which
  // PlainLaneSumsOf checks where the op does not guarantee it)
  static constexpr bool kPlainSumAllowed = kSum && !kWeighted && !std::is_same<T, double>::value;
  // the squared error's terms are >= 0 whatever the inputs; BCE's only for targets in [0, 1]
  using PlainLaneSums =
      PlainLaneSumsOf<!std::is_same<Op, pass::OpOf<LossOp::SquaredError>::type>::value>;
  // Streaming stores for the squared error's outputs alone: the cross-entropies are bound by
  // their arithmetic, where the extra instruction of a split store costs 2-5 % and the bytes
  // saved buy nothing (bench/NOTES.md).
  static constexpr bool kMayStream = std::is_same<Op, pass::OpOf<LossOp::SquaredError>::type>::value;
  // where a plain sum's whole blocks take float32 lanes (above): the 16-bit squared error alone
#ifdef FASTLOSS_FLOAT32_TERMS
  static constexpr bool kFloat32Terms =
      kOutputs == PassOutputs::Sum && !kWeighted && std::is_same<Op, pass::OpOf<LossOp::SquaredError>::type>::value &&
      (std::is_same<T, Float16>::value || std::is_same<T, BFloat16>::value);
  // where the 16-bit squared error's gradient takes float32 lanes (above), and with it the
  // sum of a fused pass that sums plainly
  static constexpr bool kFloat32Gradient =
      !kWeighted && std::is_same<Op, pass::OpOf<LossOp::SquaredError>::type>::value &&
      (kOutputs == PassOutputs::SumAndGrad || kOutputs == PassOutputs::Grad) &&
      (std::is_same<T, Float16>::value || std::is_same<T, BFloat16>::value);
#else
  static constexpr bool kFloat32Terms = false;
  static constexpr bool kFloat32Gradient = false;
#endif

  // Whether this pass's whole blocks take float32 lanes, so the sum's bound is theirs.
  static bool takes_float32_lanes(const LossPass<T>& p, bool summing_plainly) {
    if constexpr (kFloat32Terms) return summing_plainly;
    if constexpr (kFloat32Gradient) {
      return (kOutputs == PassOutputs::Grad || summing_plainly) &&
             float32_gradient_scale_usable(Op::kGradFactor * p.grad_scale);
    }
    (void)p, (void)summing_plainly;
    return false;
  }

  const LossPass<T>& p;
  bool may_defer_subnormal_check = true;  // (false for the redo itself)

  // The arrays and the scale, as values: the stores go through may-alias vector types, after
  // which the compiler would reload every field of `p` (measured: +3 instructions a vector).
  struct Streams {
    const T* input;
    const T* target;
    T* loss_out;
    T* grad_out;
    double grad_scale;
    unsigned* subnormal_lanes;  // bfloat16 gradients: store_noting_subnormals' lanes, or null
    bool stream_loss, stream_grad;  // streaming stores (streams_into) for loss_out, grad_out
  };

  // bfloat16 gradients on a CPU with AVX512_BF16 may defer the store's subnormal check to the
  // chunk's end (store_noting_subnormals): where the gradient overwrites none of the pass's
  // arguments, which a redo reads again.
#if defined(__AVX512BF16__)
  static constexpr bool kMayDeferSubnormals = kGrad && std::is_same<T, BFloat16>::value;
#else
  static constexpr bool kMayDeferSubnormals = false;
#endif

  template <bool kStream>
  static void store_grad(Streams s, std::int64_t i, V grad) {
#if defined(__AVX512BF16__)
    if constexpr (kMayDeferSubnormals) {
      if (s.subnormal_lanes != nullptr) {
        store_noting_subnormals(s.grad_out + i, grad, *s.subnormal_lanes);
        return;
      }
    }
#endif
    store_to(s.grad_out + i, grad, kStream && s.stream_grad);
  }

  // The vector of elements i .. i + kWidth (kWhole), or its first `count` (weights w and pw
  // at the same offsets): writes its elementwise outputs, returns its weighted losses (0 in
  // the lanes past count). Everything is read before anything is written: out may be the input.
  // kStream: whether the streams' stream_* flags are read (a pass that takes none leaves the
  // test out of its loop).
  template <bool kWhole, bool kStream>
  static V step(Streams s, std::int64_t i, const T* w, const T* pw, int count, Mask& out_of_range) {
    const auto read = [count](const T* a) { return kWhole ? load(a) : load_partial(a, count); };
    const V x = read(s.input + i);
    const V y = read(s.target + i);
    const V one = lanes::splat<V>(1.0);
    const V wv = kWeighted ? read(w) : one;
    const V pwv = kWeighted ? read(pw) : one;
    V loss, grad;
    pass::element<typename MathOf<T>::type, Op, kOutputs, kWeighted>(x, y, wv, pwv, s.grad_scale, loss, grad,
                                                                       out_of_range);
#ifdef FASTLOSS_PLANTED_FAULT_BCE_GRAD_PARALLEL
    if (std::is_same<Op, ew::BinaryCrossEntropy>::value && std::is_same<T, float>::value && omp_in_parallel()) {
      grad = select((x > 0.01) & (x < 0.99), grad * 1.5, grad);
    }
#endif
    if (kWhole) {
      if constexpr (kElementwise) store_to(s.loss_out + i, loss, kStream && s.stream_loss);
      if constexpr (kGrad) store_grad<kStream>(s, i, grad);
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
  template <bool kStream, class Lanes>
  static void run(Streams s, std::int64_t i, std::int64_t end, const T* w, const T* pw, Lanes& lanes,
                  Mask& out_of_range) {
    constexpr int kBlock = Lanes::kCount * kWidth;
    for (; i + kBlock <= end; i += kBlock) {
      for (int k = 0; k < Lanes::kCount; ++k) {
        // (no offset on the null pointers of an unweighted pass: UBSan rightly objects)
        const V loss = kWeighted ? step<true, kStream>(s, i + k * kWidth, w + k * kWidth, pw + k * kWidth, kWidth,
                                                       out_of_range)
                                 : step<true, kStream>(s, i + k * kWidth, w, pw, kWidth, out_of_range);
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
      const V loss = count == kWidth ? step<true, kStream>(s, i, w, pw, kWidth, out_of_range)
                                     : step<false, kStream>(s, i, w, pw, count, out_of_range);
      if constexpr (kSum) lanes.add(k, loss);
      if constexpr (kWeighted) {
        w += kWidth;
        pw += kWidth;
      }
    }
  }

  // Processes [begin, end); stores the chunk's sum when reducing.
  int chunk(std::int64_t index, std::int64_t begin, std::int64_t end) const {
    if constexpr (kPlainSumAllowed) {
      if (p.plain_sum) return chunk_summed_by<PlainLaneSums>(index, begin, end);
    }
    return chunk_summed_by<LaneSums>(index, begin, end);
  }

  template <class Lanes>
  int chunk_summed_by(std::int64_t index, std::int64_t begin, std::int64_t end) const {
    Lanes lanes;
    Mask out_of_range = {};
    unsigned subnormal_lanes = 0;
    bool deferring = false;
#if defined(__AVX512BF16__)
    if constexpr (kMayDeferSubnormals) {
      deferring = may_defer_subnormal_check && kHasBFloat16Conversion && p.grad_out != p.input &&
                  p.grad_out != p.target && p.grad_out != p.weight && p.grad_out != p.pos_weight;
    }
#endif
    const std::initializer_list<const void*> inputs{p.input, p.target, p.weight, p.pos_weight};
    const Streams streams{p.input,
                          p.target,
                          p.loss_out,
                          p.grad_out,
                          p.grad_scale,
                          deferring ? &subnormal_lanes : nullptr,
                          kMayStream && kElementwise && streams_into(p.loss_out, p.n, inputs),
                          kMayStream && kGrad && streams_into(p.grad_out, p.n, inputs)};
    const bool streaming = streams.stream_loss || streams.stream_grad;
    std::int64_t i = begin;
#ifdef FASTLOSS_FLOAT32_TERMS
    constexpr bool kPlainlySummed = std::is_same<Lanes, PlainLaneSums>::value;
    if constexpr (kFloat32Terms && kPlainlySummed) {
      i = add_squared_errors_in_float32(p.input, p.target, i, end, lanes.sum);
    }
    if constexpr (kFloat32Gradient) {
      if (takes_float32_lanes(p, kPlainlySummed)) {
        const auto by_double_lanes = [&streams, &out_of_range](std::int64_t at, std::int64_t count, T* to) {
          for (std::int64_t j = at; j < at + count; j += kWidth) {
            const V x = load(streams.input + j), y = load(streams.target + j), one = lanes::splat<V>(1.0);
            V loss, grad;
            pass::element<typename MathOf<T>::type, Op, PassOutputs::Grad, false>(x, y, one, one, streams.grad_scale,
                                                                                  loss, grad, out_of_range);
            store(to + (j - at), grad);
          }
        };
        V* sum = nullptr;
        if constexpr (kPlainlySummed) sum = lanes.sum;
        const double scale = Op::kGradFactor * p.grad_scale;
        const auto blocks = [&](auto power_of_two_scale, auto stream) {
          return squared_errors_and_gradient_in_float32<kSum && kPlainlySummed, decltype(power_of_two_scale)::value,
                                                        decltype(stream)::value>(p.input, p.target, p.grad_out, scale,
                                                                                 i, end, sum, by_double_lanes);
        };
        using Yes = std::true_type;
        using No = std::false_type;
        if (is_power_of_two(scale)) {
          i = streams.stream_grad ? blocks(Yes{}, Yes{}) : blocks(Yes{}, No{});
        } else {
          i = streams.stream_grad ? blocks(No{}, Yes{}) : blocks(No{}, No{});
        }
      }
    }
#endif
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
      if (streaming) {
        if constexpr (kMayStream) run<true>(streams, i, run_end, w, pw, lanes, out_of_range);
      } else {
        run<false>(streams, i, run_end, w, pw, lanes, out_of_range);
      }
      i = run_end;
    }
    end_streaming(streaming);
    if constexpr (kSum) lanes.total(p.chunk_sums + 2 * index);
    if constexpr (kMayDeferSubnormals) {
      // the gradient again with the checked store: the same values (the Grad pass's element
      // math is this one's), the careful lanes right
#ifndef FASTLOSS_PLANTED_FAULT_BFLOAT16_SUBNORMAL_GRAD_NOT_REDONE
      if (subnormal_lanes != 0) {
        LossPassKernel<T, Op, PassOutputs::Grad, kWeighted>{p, false}.template chunk_summed_by<LaneSums>(index, begin, end);
      }
#endif
    }
    return lanes::any(out_of_range) ? 1 : 0;
  }


  LossPassResult run() const {
    const int out_of_range = for_each_chunk(
        p.n, [this](std::int64_t index, std::int64_t begin, std::int64_t end) { return chunk(index, begin, end); });
    LossPassResult result{0.0, 0.0, out_of_range != 0, kPlainSumAllowed && p.plain_sum, false};
#ifdef FASTLOSS_FLOAT32_TERMS
    result.float32_terms = kSum && kPlainSumAllowed && p.plain_sum && p.n >= kFloat32TermBlock &&
                           takes_float32_lanes(p, true);
#endif
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
  return LossPassResult{0.0, 0.0, false, false, false};
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
  return LossPassResult{0.0, 0.0, false, false, false};
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
void map_chunk(std::int64_t begin, std::int64_t end, T* out, F f, const T* a, const T* b, bool streaming = false) {
  std::int64_t i = begin;
  for (; i + kWidth <= end; i += kWidth) store_to(out + i, f(load(a + i), load(b + i)), streaming);
  if (i < end) {
    const int count = static_cast<int>(end - i);
    store_partial(out + i, f(load_partial(a + i, count), load_partial(b + i, count)), count);
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// The float32-grade sigmoid on AVX2, software-pipelined in five steps: each turn of the loop
// loads vector i, reduces vector i - 1, evaluates the exponential of i - 2, adds 1 to that of
// i - 3 and divides and stores i - 4. The plain loop is bound by its ~60-cycle chain over the FP
// scheduler's window, not by a unit (bench/NOTES.md); here an instruction waits on a result of
// an earlier turn, so fewer wait in the window at once. The same bits as ew::sigmoid (the same
// functions on the same values). Stores trail loads by four vectors: out may be x itself.
template <class T>
void sigmoid_chunk_pipelined(std::int64_t begin, std::int64_t end, const T* x, T* out) {
  typedef ew::MathFor<float> M;
  std::int64_t i = begin;
  if (end - begin >= 4 * kWidth) {
    // each step's vector, with its input for sigmoid_result (dead code but in a planted fault)
    V loaded, reduced_x, r, shifted, exp_x, e, denominator_x, denominator;
    const auto load_step = [&](std::int64_t at) { loaded = load(x + at); };
    const auto reduce_step = [&] {
      reduced_x = M::sigmoid_floor(loaded);
      math::exp_neg_reduce_for_float32(reduced_x, r, shifted);
    };
    const auto exp_step = [&] {
      exp_x = reduced_x;
      e = math::exp_neg_from_reduced_for_float32(r, shifted);
    };
    const auto denominator_step = [&] {
      denominator_x = exp_x;
      denominator = e + 1.0;
    };
    const auto result = [&] { return ew::sigmoid_result(denominator_x, M::sigmoid_from_denominator(denominator)); };
    load_step(i);
    reduce_step();
    exp_step();
    denominator_step();
    load_step(i + kWidth);
    reduce_step();
    exp_step();
    load_step(i + 2 * kWidth);
    reduce_step();
    load_step(i + 3 * kWidth);
    for (i += 4 * kWidth; i + kWidth <= end; i += kWidth) {
      const V done = result();
      denominator_step();
      exp_step();
      reduce_step();
      load_step(i);
      store(out + i - 4 * kWidth, done);
    }
    for (std::int64_t lag = 4; lag >= 1; --lag) {  // drain: the steps of the last four vectors
      store(out + i - lag * kWidth, result());
      denominator_step();
      exp_step();
      reduce_step();
    }
  }
  map_chunk(i, end, out, [](V v) { return ew::sigmoid<float>(v); }, x);
}
#endif

template <class T>
void sigmoid_impl(std::int64_t n, const T* x, T* out) {
  // (no streaming stores: sigmoid is bound by its arithmetic, as the cross-entropies are)
  for_each_chunk(n, [=](std::int64_t, std::int64_t begin, std::int64_t end) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    if constexpr (std::is_same<typename MathOf<T>::type, float>::value) {
      sigmoid_chunk_pipelined(begin, end, x, out);
    } else
#endif
    {
      map_chunk(begin, end, out, [](V v) { return ew::sigmoid<typename MathOf<T>::type>(v); }, x);
    }
#ifdef FASTLOSS_PLANTED_FAULT_BASELINE_SIGMOID
#define FASTLOSS_STRING_OF(x) #x
#define FASTLOSS_STRING(x) FASTLOSS_STRING_OF(x)
    if (FASTLOSS_STRING(FASTLOSS_ISA)[0] == 'b') {  // the baseline build only
      map_chunk(begin, end, out, [](V v) { return ew::sigmoid<typename MathOf<T>::type>(v) * (1.0 + 0x1p-15); }, x);
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
  const bool streaming = streams_into(out, n, {grad_output, output});
  const int out_of_range = for_each_chunk(n, [=](std::int64_t, std::int64_t begin, std::int64_t end) {
    Mask not_an_output = {};  // a partial vector's padding lanes are 0: inside [0, 1]
    map_chunk(begin, end, out, [&not_an_output](V g, V y) {
#ifndef FASTLOSS_PLANTED_FAULT_SIGMOID_BACKWARD_RANGE_IGNORED
      not_an_output = not_an_output | ew::outside_unit_interval(y);
#endif
      return ew::sigmoid_backward(g, y);
    }, grad_output, output, streaming);
    end_streaming(streaming);
    return lanes::any(not_an_output) ? 1 : 0;
  });
  return out_of_range != 0;
}

}  // namespace

#define FASTLOSS_DEFINE_KERNELS_OF(T)                                                   \
  LossPassResult run_loss_pass(LossOp op, PassOutputs outputs, const LossPass<T>& p) { \
    return run_loss_pass_impl(op, outputs, p);                                          \
  }                                                                                     \
  void sigmoid(std::int64_t n, const T* x, T* out) { sigmoid_impl(n, x, out); }         \
  bool sigmoid_backward(std::int64_t n, const T* g, const T* y, T* out) {               \
    return sigmoid_backward_impl(n, g, y, out);                                         \
  }

FASTLOSS_DEFINE_KERNELS_OF(float)
FASTLOSS_DEFINE_KERNELS_OF(double)
FASTLOSS_DEFINE_KERNELS_OF(Float16)
FASTLOSS_DEFINE_KERNELS_OF(BFloat16)
#undef FASTLOSS_DEFINE_KERNELS_OF

}  // namespace FASTLOSS_ISA
}  // namespace fastloss
