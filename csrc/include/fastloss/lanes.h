// The lane types the per-element math is written against, so that one source serves the CPU
// kernels (a GCC vector of 2, 4 or 8 doubles per instruction) and the CUDA kernels (a plain
// double: one thread, one element).
//
// A lane type V supports + - * / and comparisons with V or double operands; the rest goes
// through the functions here: select (the comparisons' result picks a lane of a or b),
// splat, the bit casts to and from 64-bit unsigned lanes, and the reciprocal of the float32
// math. Every function is FASTLOSS_HD (static: each instruction-set build of kernels.cpp
// keeps its own copy; see scalar_math.h).
//
// Header rules for every shared header: NVRTC has no standard headers, so nothing here includes
// one (the one instruction-set intrinsic below is the compiler's builtin, which needs none).
#pragma once

// FASTLOSS_HD marks every function of the shared headers. `static` gives each translation unit
// its own copy, so the AVX2 build of a function can never be merged by the linker into the
// baseline build of another unit (an ODR trap across ISAs); inside a struct it makes a static
// member.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FASTLOSS_DEVICE_COMPILER 1
#define FASTLOSS_HD static __host__ __device__ __forceinline__
#else
#define FASTLOSS_DEVICE_COMPILER 0
#define FASTLOSS_HD static inline __attribute__((always_inline))
#endif

namespace fastloss {
namespace lanes {

FASTLOSS_HD double double_from_bits(unsigned long long b) {
#if FASTLOSS_DEVICE_COMPILER
  return __longlong_as_double(static_cast<long long>(b));
#else
  double d;
  __builtin_memcpy(&d, &b, sizeof d);
  return d;
#endif
}

FASTLOSS_HD unsigned long long to_bits(double d) {
#if FASTLOSS_DEVICE_COMPILER
  return static_cast<unsigned long long>(__double_as_longlong(d));
#else
  unsigned long long b;
  __builtin_memcpy(&b, &d, sizeof b);
  return b;
#endif
}

template <class V> struct Traits;

// One lane (CUDA, and the scalars of issue-free code on the CPU).
template <>
struct Traits<double> {
  typedef unsigned long long Bits;
  typedef bool Mask;
  static const int kWidth = 1;
};

FASTLOSS_HD double select(bool mask, double a, double b) { return mask ? a : b; }
FASTLOSS_HD double from_bits(double, unsigned long long b) { return double_from_bits(b); }
FASTLOSS_HD bool any(bool mask) { return mask; }

#if !FASTLOSS_DEVICE_COMPILER
// GCC vector extensions: the compiler maps them onto the widest registers the build's -march
// allows (SSE2 for 2, AVX for 4, AVX-512 for 8 doubles). Arithmetic, comparisons (lanes of
// all ones or zeros, as signed integers) and `mask ? a : b` are built in; a cast between two
// vector types of one size reinterprets the bits.
typedef double Double2 __attribute__((vector_size(16)));
typedef double Double4 __attribute__((vector_size(32)));
typedef double Double8 __attribute__((vector_size(64)));
typedef unsigned long long Bits2 __attribute__((vector_size(16)));
typedef unsigned long long Bits4 __attribute__((vector_size(32)));
typedef unsigned long long Bits8 __attribute__((vector_size(64)));

#define FASTLOSS_VECTOR_TRAITS(V, B, W)                                            \
  template <>                                                                      \
  struct Traits<V> {                                                               \
    typedef B Bits;                                                                \
    typedef decltype(V{} < V{}) Mask;                                              \
    static const int kWidth = W;                                                   \
  };                                                                               \
  FASTLOSS_HD V select(Traits<V>::Mask mask, V a, V b) { return mask ? a : b; }   \
  FASTLOSS_HD B to_bits(V v) { return (B)v; }                                      \
  FASTLOSS_HD V from_bits(V, B b) { return (V)b; }                                 \
  FASTLOSS_HD bool any(Traits<V>::Mask mask) {                                     \
    bool found = false;                                                            \
    for (int k = 0; k < W; ++k) found = found || mask[k] != 0;                     \
    return found;                                                                  \
  }

FASTLOSS_VECTOR_TRAITS(Double2, Bits2, 2)
FASTLOSS_VECTOR_TRAITS(Double4, Bits4, 4)
FASTLOSS_VECTOR_TRAITS(Double8, Bits8, 8)
#undef FASTLOSS_VECTOR_TRAITS
#endif

template <class V>
FASTLOSS_HD typename Traits<V>::Bits splat_bits(unsigned long long b) {
  return typename Traits<V>::Bits{} + b;
}

template <class V>
FASTLOSS_HD V bits_as(typename Traits<V>::Bits b) {
  return from_bits(V{}, b);
}

// value in every lane (through the bits: V{} + value would turn -0.0 into +0.0).
template <class V>
FASTLOSS_HD V splat(double value) {
  return bits_as<V>(splat_bits<V>(to_bits(value)));
}

// a / b where the float32 math divides (sigmoid, the logistic gradients: b in [1e-12, 2]),
// within 2^-27 relative: a float32 result rounded from it is within 0.56 ulp. With AVX-512 it
// is rcp14 (2^-14) and one Newton step, 4 instructions on the FMA pipes instead of a
// vdivpd, which takes 8 cycles per 8 lanes on Zen 5 (the whole of a sigmoid's budget). Every
// other build divides: the CPU baseline and CUDA then compute the same bits.
template <class V>
FASTLOSS_HD V divide_for_float32(V a, V b) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    // _mm512_rcp14_pd(b), spelled as the builtin <immintrin.h> expands it to (GCC and Clang)
    const V y0 = __builtin_ia32_rcp14pd512_mask(b, V{}, static_cast<unsigned char>(0xff));
    const V y1 = y0 + y0 * (1.0 - b * y0);
    return a * y1;
  }
#endif
  return a / b;
}

// p * 2^n for an integer-valued n in [-1022, 1023] (a NaN p stays NaN), given also
// shifted = 1.5 * 2^52 + n, whose low bits hold n. With AVX-512 it is one vscalefpd;
// elsewhere 2^n is built from the bits of shifted and multiplied (three instructions).
template <class V>
FASTLOSS_HD V times_power_of_two(V p, V n, V shifted) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    // _mm512_scalef_pd(p, n), spelled as the builtin <immintrin.h> expands it to
    return __builtin_ia32_scalefpd512_mask(p, n, V{}, static_cast<unsigned char>(0xff), 4);
  }
#endif
  (void)n;
  return p * bits_as<V>((to_bits(shifted) + 1023ull) << 52);
}

// max(a, floor) and min(a, ceiling) with a NaN `a` returned as it is: select(a < floor, floor,
// a) and select(a > ceiling, ceiling, a), which is exactly what x86's maxpd(floor, a) and
// minpd(ceiling, a) compute (the second operand is returned when the comparison is false or
// unordered). GCC does not make that substitution itself without -ffinite-math-only, so on the
// CPU it is spelled here: one instruction instead of a comparison and a blend. CUDA selects (its
// fmax drops a NaN).
template <class V>
FASTLOSS_HD V at_least(V a, double floor) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    return __builtin_ia32_maxpd512_mask(splat<V>(floor), a, V{}, static_cast<unsigned char>(0xff), 4);
  }
#endif
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX__)
  if constexpr (sizeof(V) == 32) return __builtin_ia32_maxpd256(splat<V>(floor), a);
#endif
#if !FASTLOSS_DEVICE_COMPILER && defined(__SSE2__)
  if constexpr (sizeof(V) == 16) return __builtin_ia32_maxpd(splat<V>(floor), a);
#endif
  return select(a < floor, splat<V>(floor), a);
}

template <class V>
FASTLOSS_HD V at_most(V a, double ceiling) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    return __builtin_ia32_minpd512_mask(splat<V>(ceiling), a, V{}, static_cast<unsigned char>(0xff), 4);
  }
#endif
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX__)
  if constexpr (sizeof(V) == 32) return __builtin_ia32_minpd256(splat<V>(ceiling), a);
#endif
#if !FASTLOSS_DEVICE_COMPILER && defined(__SSE2__)
  if constexpr (sizeof(V) == 16) return __builtin_ia32_minpd(splat<V>(ceiling), a);
#endif
  return select(a > ceiling, splat<V>(ceiling), a);
}

// a clamped to [-bound, bound] for a finite bound > 0 (NaN: NaN here; with AVX-512, where it is
// one vrangepd, NaN gives +bound: callers must not depend on which).
template <class V>
FASTLOSS_HD V clamp_magnitude(V a, double bound) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    // _mm512_range_pd(a, bound, 2): the one of smaller magnitude, with a's sign
    return __builtin_ia32_rangepd512_mask(a, splat<V>(bound), 2, V{}, static_cast<unsigned char>(0xff), 4);
  }
#endif
  return at_least(at_most(a, bound), -bound);
}

// The tables of the float32-grade functions (scalar_math.h): runs of 16 doubles, read by
// lookup16. On the GPU they live in global memory (__device__), where lanes of a warp that
// read different entries are served by the cache; __constant__ memory would serialise them.
// Two tables a function reads with one index are one array (the second at +16), so the GPU
// computes one address for both (a register per element fewer: ptxas spilled without it).
#if FASTLOSS_DEVICE_COMPILER
#define FASTLOSS_TABLE(name, size) static __device__ const double name[size]
#else
#define FASTLOSS_TABLE(name, size) alignas(64) static const double name[size]
#endif

// table[index & 15] in each lane. With AVX-512 the 16 doubles are two registers and this is
// one vpermt2pd, which reads only the low 4 bits of each index lane (so callers pass bits with
// the index in their low 4 and anything above); elsewhere one load per lane. (AVX2's
// vgatherqpd was tried: ~7 cycles a gather on Zen 5 made the AVX2 build's BCE 1.8x slower than
// with its former polynomials; lane loads keep it within 0.95-1.18x of them, bench/NOTES.md.)
// Every build reads the same entry: the results are the same bits.
template <class V>
FASTLOSS_HD V lookup16(const double* table, typename Traits<V>::Bits index) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    typedef long long Int8 __attribute__((vector_size(64)));
    V low, high;
    __builtin_memcpy(&low, table, sizeof low);
    __builtin_memcpy(&high, table + 8, sizeof high);
    return __builtin_ia32_vpermt2varpd512_mask((Int8)index, low, high, static_cast<unsigned char>(0xff));
  }
#endif
  V result{};
  if constexpr (Traits<V>::kWidth == 1) {
    // a 32-bit index: the GPU then widens one register into the address (ptxas spilled the
    // float16 BCE kernels with 64-bit index arithmetic for their four logs)
#if FASTLOSS_DEVICE_COMPILER
    result = __ldg(table + (static_cast<unsigned>(index) & 15u));
#else
    result = table[static_cast<unsigned>(index) & 15u];
#endif
  } else {
    for (int k = 0; k < Traits<V>::kWidth; ++k) result[k] = table[index[k] & 15ull];
  }
  return result;
}

// x = 2^e * M with M in [1, 2) the exact split of a normal positive double x, given as the
// exponent e (a double) and m = M, or M / 2 where M >= 1.5, so m lies in [0.75, 1.5): a log's
// table then covers m by the 4 bits of the mantissa below the leading one (scalar_math.h).
// AVX-512: vgetexppd and vgetmantpd (0 gives e = -inf, m = 1; NaN gives NaN); elsewhere from
// the bits (0 gives e = -1023, m = 1; NaN a finite e and m). Equal for the positive normal x
// the callers' results depend on.
template <class V>
FASTLOSS_HD void exponent_and_mantissa(V x, V& e, V& m) {
#if !FASTLOSS_DEVICE_COMPILER && defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    e = __builtin_ia32_getexppd512_mask(x, V{}, static_cast<unsigned char>(0xff), 4);
    // _mm512_getmant_pd(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_src)
    m = __builtin_ia32_getmantpd512_mask(x, 3, V{}, static_cast<unsigned char>(0xff), 4);
    return;
  }
#endif
  const auto bits = to_bits(x);
  e = bits_as<V>(splat_bits<V>(0x4330000000000000ull) | (bits >> 52)) - (0x1p52 + 1023.0);
  // the exponent of 1.0, or of 0.5 where the mantissa's top bit (M >= 1.5) is set
  const auto top = (bits >> 51) & 1ull;
  m = bits_as<V>(((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull) - (top << 52));
}

}  // namespace lanes
}  // namespace fastloss
