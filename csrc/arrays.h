// The NumPy array checks of the compiled module, shared by module.cpp (the loss kernels) and
// training.cpp (the training layer's kernels): what a kernel needs of the memory it is given.
// They answer yes or no; the callers decide what a no means (module.cpp hands the call back
// to the Python dispatch, which words the error; training.cpp raises for its internal callers).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>

namespace fastloss {
namespace arrays {

namespace py = pybind11;

// Float16 and BFloat16 are storage types of the loss, row and activation kernels
// (numpy_storage.h recognises them); float_dtype, for the training layer's kernels, answers
// Other for them.
enum class Dtype { Float32, Float64, Float16, BFloat16, Other };

// float32 or float64 in native byte order (a swapped one would be read as garbage), else Other.
inline Dtype float_dtype(const py::array& a) {
  const py::dtype dt = a.dtype();
  if (dt.byteorder() != '=' && dt.byteorder() != '|') return Dtype::Other;
  switch (dt.num()) {
    case py::detail::npy_api::NPY_FLOAT_: return Dtype::Float32;
    case py::detail::npy_api::NPY_DOUBLE_: return Dtype::Float64;
    default: return Dtype::Other;
  }
}

inline bool contiguous_and_aligned(const py::array& a) {
  constexpr int kFlags =
      py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  return (a.flags() & kFlags) == kFlags;
}

inline bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) != b.shape(d)) return false;
  }
  return true;
}

// Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte (empty ones
// share none).
inline bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  const char* p = static_cast<const char*>(a);
  const char* q = static_cast<const char*>(b);
  return a_bytes > 0 && b_bytes > 0 && p < q + b_bytes && q < p + a_bytes;
}

inline bool overlaps(const py::array& a, const py::array& b) {
  return overlaps(a.data(), static_cast<std::size_t>(a.nbytes()), b.data(), static_cast<std::size_t>(b.nbytes()));
}

// An output may be exactly one of the arrays a kernel reads (an in-place update: each element
// is read before it is written) but no other array sharing memory with it.
inline bool partially_overlaps(const void* out, std::size_t out_bytes, const void* in, std::size_t in_bytes) {
#ifdef FASTLOSS_PLANTED_FAULT_OVERLAP_CHECK_SKIPPED
  return false;
#endif
  return overlaps(out, out_bytes, in, in_bytes) && !(out == in && out_bytes == in_bytes);
}

inline bool partially_overlaps(const py::array& out, const py::array& in) {
  return partially_overlaps(out.data(), static_cast<std::size_t>(out.nbytes()), in.data(),
                            static_cast<std::size_t>(in.nbytes()));
}

// Runs body(T{}) with T the C++ type of a float32 or float64 dtype.
template <typename Body>
void with_element_type(Dtype dtype, Body&& body) {
  if (dtype == Dtype::Float32) {
    body(float{});
  } else {
    body(double{});
  }
}

}  // namespace arrays
}  // namespace fastloss
