// The storage dtypes as NumPy's C API sees them, shared by the entries of module.cpp (the
// elementwise kernels) and multiclass_module.cpp (the row kernels and activations): which
// dtype an array holds, the C++ storage type (kernels.h) it is read as, and the NumPy scalar
// of a reduced loss. Include after <numpy/arrayobject.h> and <numpy/arrayscalars.h>, with the
// including file's PY_ARRAY_UNIQUE_SYMBOL set.
#pragma once

#include <cstdint>

#include "arrays.h"
#include "fastloss/half.h"
#include "kernels.h"

namespace fastloss {
namespace storage {

using arrays::Dtype;

// The type number NumPy gave ml_dtypes.bfloat16 (a user-defined dtype: its number depends on
// the order of registration), set by module.cpp's register_bfloat16 when the dispatch first
// meets one; -1 until then, so the entries answer None to bfloat16 before it and `import
// fastloss` never needs ml_dtypes. Written under the GIL, read by the entries, which hold it.
inline int bfloat16_type = -1;

inline int numpy_type(Dtype d) {
  switch (d) {
    case Dtype::Float32: return NPY_FLOAT;
    case Dtype::Float16: return NPY_HALF;
    case Dtype::BFloat16: return bfloat16_type;
    default: return NPY_DOUBLE;
  }
}

// float32, float64, float16 or (once registered) bfloat16 in native byte order, else Other.
inline Dtype dtype_of(PyArrayObject* a) {
  const PyArray_Descr* descr = PyArray_DESCR(a);
  if (!PyArray_ISNBO(descr->byteorder)) return Dtype::Other;
  switch (descr->type_num) {
    case NPY_FLOAT: return Dtype::Float32;
    case NPY_DOUBLE: return Dtype::Float64;
    case NPY_HALF: return Dtype::Float16;
    default: return descr->type_num == bfloat16_type && bfloat16_type >= 0 ? Dtype::BFloat16 : Dtype::Other;
  }
}

// Runs body(T{}) with T the C++ storage type of dtype (not Other).
template <typename Body>
auto with_storage_type(Dtype dtype, Body&& body) {
  switch (dtype) {
    case Dtype::Float32: return body(float{});
    case Dtype::Float16: return body(Float16{});
    case Dtype::BFloat16: return body(BFloat16{});
    default: return body(double{});
  }
}

// A NumPy scalar of `dtype` (a new reference, or null with an exception set). A 16-bit one is
// `value` rounded once to nearest even (half.h; through float32 it would round twice).
inline PyObject* scalar_of(double value, Dtype dtype) {
  if (dtype == Dtype::Float16) {
    PyObject* s = PyArrayScalar_New(Half);
    if (s != nullptr) PyArrayScalar_VAL(s, Half) = static_cast<npy_half>(half::round_to_bits<half::Float16Format>(value));
    return s;
  }
  if (dtype == Dtype::BFloat16) {
    auto bits = static_cast<std::uint16_t>(half::round_to_bits<half::BFloat16Format>(value));
    PyArray_Descr* descr = PyArray_DescrFromType(bfloat16_type);  // a new reference
    if (descr == nullptr) return nullptr;
    PyObject* s = PyArray_Scalar(&bits, descr, nullptr);
    Py_DECREF(descr);
    return s;
  }
  if (dtype == Dtype::Float32) {
    PyObject* s = PyArrayScalar_New(Float);
    if (s != nullptr) PyArrayScalar_VAL(s, Float) = static_cast<float>(value);
    return s;
  }
  PyObject* s = PyArrayScalar_New(Double);
  if (s != nullptr) PyArrayScalar_VAL(s, Double) = value;
  return s;
}

}  // namespace storage
}  // namespace fastloss
