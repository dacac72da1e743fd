// fastloss._cpu: the NumPy backend's kernels. Checks what the kernels need of the memory
// (arrays.h), allocates outputs through NumPy, releases the GIL on large inputs and calls the
// kernels of the instruction set chosen at import. Validation and every error message belong
// to the Python dispatch (fastloss/_dispatch.py): an entry here answers None to what it will
// not run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

// NumPy's own C API, for the two things pybind11's wrapper makes slow on tiny arrays:
// allocating an output and returning a NumPy scalar (~1 us each through Python).
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL fastloss_ARRAY_API
#include <numpy/arrayobject.h>
#include <numpy/arrayscalars.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "arrays.h"
#include "fastloss/double_double.h"
#include "fastloss/half.h"
#include "isa.h"
#include "kernels.h"
#include "multiclass_module.h"
#include "numpy_storage.h"
#include "training.h"

namespace py = pybind11;

namespace fastloss {

namespace {
// Written only by the fork child handler, while the child is still single-threaded.
std::atomic<bool> forked_child{false};
void on_fork_child() { forked_child.store(true, std::memory_order_relaxed); }
}  // namespace

bool openmp_usable() { return !forked_child.load(std::memory_order_relaxed); }

namespace {

// ---- instruction-set dispatch ----------------------------------------------------------
template <class T>
struct KernelsOf {
  LossPassResult (*loss)(LossOp, PassOutputs, const LossPass<T>&);
  void (*sigmoid)(std::int64_t, const T*, T*);
  bool (*sigmoid_backward)(std::int64_t, const T*, const T*, T*);
};

struct KernelSet {
  const char* name;
  KernelsOf<float> f32;
  KernelsOf<double> f64;
  KernelsOf<Float16> f16;
  KernelsOf<BFloat16> bf16;

  const KernelsOf<float>& of(const float*) const { return f32; }
  const KernelsOf<double>& of(const double*) const { return f64; }
  const KernelsOf<Float16>& of(const Float16*) const { return f16; }
  const KernelsOf<BFloat16>& of(const BFloat16*) const { return bf16; }
};

#define FASTLOSS_KERNELS_OF(isa, T) \
  KernelsOf<T> { isa::run_loss_pass, isa::sigmoid, isa::sigmoid_backward }
#define FASTLOSS_KERNEL_SET(isa)                                                          \
  KernelSet {                                                                             \
#isa, FASTLOSS_KERNELS_OF(isa, float), FASTLOSS_KERNELS_OF(isa, double),               \
        FASTLOSS_KERNELS_OF(isa, Float16), FASTLOSS_KERNELS_OF(isa, BFloat16)             \
  }

KernelSet choose_kernels() {
  switch (chosen_isa()) {
#if defined(__x86_64__)
#if !defined(FASTLOSS_WITHOUT_X86_64_V4)
    case Isa::X86_64_V4: return FASTLOSS_KERNEL_SET(x86_64_v4);
#endif
    case Isa::X86_64_V3: return FASTLOSS_KERNEL_SET(x86_64_v3);
#endif
    default: break;
  }
  return FASTLOSS_KERNEL_SET(baseline);
}

const KernelSet& kernels() {
  static const KernelSet chosen = choose_kernels();
  return chosen;
}

template <class T>
LossPassResult run_loss_pass(LossOp op, PassOutputs o, const LossPass<T>& p) {
  return kernels().of(p.input).loss(op, o, p);
}
template <class T>
void sigmoid(std::int64_t n, const T* x, T* out) {
  kernels().of(x).sigmoid(n, x, out);
}
template <class T>
bool sigmoid_backward(std::int64_t n, const T* g, const T* y, T* out) {
  return kernels().of(g).sigmoid_backward(n, g, y, out);
}

// ---- the entries: run what is safe, hand the rest back ------------------------------------
// Each entry runs the kernel when its arguments are what the kernel needs (float32/float64 in
// native byte order, one dtype, the shapes, C-contiguous and aligned buffers, weights as 1-D
// periodic buffers, a writeable out that overlaps no argument but one it equals) and returns
// None otherwise. fastloss._dispatch calls `loss`, `sigmoid` and `sigmoid_backward` first for
// the common NumPy call, with no checks of its own; on None it validates the arguments itself,
// words the error, prepares (copies, weight buffers) what it can and calls `loss_pass`.
//
// They are METH_FASTCALL functions on the CPython and NumPy C APIs, not pybind11 functions:
// a 16-element loss computes in ~20 ns, and pybind11's dispatcher, its handles and its
// conversions took ~110 ns of a ~180 ns entry (bench/NOTES.md, the 16-element call).
using arrays::Dtype;
using storage::dtype_of;
using storage::numpy_type;
using storage::scalar_of;
using storage::with_storage_type;

// obj as an array the kernels may read as T[size]: C-contiguous, aligned, of `dtype`; else
// null. With kExact, NumPy's own ndarray only (subclasses take the dispatch's checked path).
template <bool kExact = false>
PyArrayObject* readable(PyObject* obj, Dtype dtype) {
  if (kExact ? !PyArray_CheckExact(obj) : !PyArray_Check(obj)) return nullptr;
  auto* a = reinterpret_cast<PyArrayObject*>(obj);
  const int flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED;
  if ((PyArray_FLAGS(a) & flags) != flags || dtype_of(a) != dtype) return nullptr;
  return a;
}

bool same_shape(PyArrayObject* a, PyArrayObject* b) {
  const int ndim = PyArray_NDIM(a);
  if (ndim != PyArray_NDIM(b)) return false;
  for (int d = 0; d < ndim; ++d) {
    if (PyArray_DIM(a, d) != PyArray_DIM(b, d)) return false;
  }
  return true;
}

std::int64_t size_of(PyArrayObject* a) { return static_cast<std::int64_t>(PyArray_SIZE(a)); }
std::size_t bytes_of(PyArrayObject* a) { return static_cast<std::size_t>(PyArray_NBYTES(a)); }

// A weight prepared by the dispatch: None (null here), or a non-empty 1-D buffer read with
// period size. False if it is neither.
bool weight_buffer(PyObject* obj, Dtype dtype, PyArrayObject*& buffer) {
  buffer = nullptr;
  if (obj == Py_None) return true;
  buffer = readable(obj, dtype);
  return buffer != nullptr && PyArray_NDIM(buffer) == 1 && size_of(buffer) > 0;
}

// A caller's out= to be written in `like`'s shape: it may equal one of `reads` (null ones are
// skipped) but not partly overlap any. Null if it is not that.
template <bool kExact = false>
PyArrayObject* writable_output(PyObject* obj, PyArrayObject* like, Dtype dtype,
                               std::initializer_list<PyArrayObject*> reads) {
  PyArrayObject* out = readable<kExact>(obj, dtype);
  if (out == nullptr || !PyArray_ISWRITEABLE(out) || !same_shape(out, like)) return nullptr;
  for (PyArrayObject* read : reads) {
    if (read != nullptr && arrays::partially_overlaps(PyArray_DATA(out), bytes_of(out), PyArray_DATA(read),
                                                      bytes_of(read))) {
      return nullptr;
    }
  }
  return out;
}

PyObject* new_array(PyArrayObject* like, Dtype dtype) {
  return PyArray_SimpleNew(PyArray_NDIM(like), PyArray_DIMS(like), numpy_type(dtype));
}


PyObject* none() {
  Py_INCREF(Py_None);
  return Py_None;
}

template <class T>
T* data_of(PyObject* a) {
  return static_cast<T*>(PyArray_DATA(reinterpret_cast<PyArrayObject*>(a)));
}

// Runs `kernel`, without the GIL when the call is large enough to go parallel: small calls
// skip the release (and the OpenMP region) because both cost more than the work.
template <class Kernel>
auto run_releasing_gil_if_large(std::int64_t n, Kernel kernel) {
  if (n >= kParallelThreshold) {
    py::gil_scoped_release release;
    return kernel();
  }
  return kernel();
}

template <class T>
T one() {
  return T(1);
}
template <>
Float16 one<Float16>() {
  return Float16{0x3c00};
}
template <>
BFloat16 one<BFloat16>() {
  return BFloat16{0x3f80};
}

template <class T>
const T* ones_buffer() {
  static const std::vector<T> ones(static_cast<std::size_t>(kChunkSize), one<T>());
  return ones.data();
}

// Raised (a ValueError without a message) when binary_cross_entropy finds an input outside
// [0, 1], or sigmoid_backward an output there; the dispatch words it for each.
PyObject* probability_out_of_range = nullptr;

bool wants_sum(PassOutputs o) { return o == PassOutputs::Sum || o == PassOutputs::SumAndGrad; }
bool wants_elementwise(PassOutputs o) {
  return o == PassOutputs::Elementwise || o == PassOutputs::ElementwiseAndGrad;
}
bool wants_grad(PassOutputs o) {
  return o == PassOutputs::SumAndGrad || o == PassOutputs::ElementwiseAndGrad || o == PassOutputs::Grad;
}

// Calls body() and turns a C++ exception (an allocation's) into a Python one.
template <class Body>
PyObject* guarded(Body body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

// ---- the loss pass -------------------------------------------------------------------------
// The arguments of one pass, checked: what the kernels read and write.
struct LossCall {
  LossOp op;
  PassOutputs outputs;
  bool mean;
  Dtype dtype;
  PyArrayObject* input;
  PyArrayObject* target;
  PyArrayObject* weight;      // null: unweighted
  PyArrayObject* pos_weight;  // null: none
  double grad_output;
  PyArrayObject* out;  // null: allocate the gradient
  // A block of a larger array (loss_partial): the sum comes back unrounded as (hi, lo), and
  // grad_output is the gradient's whole scale (the caller divides by the full array's N).
  bool partial = false;
};

// The loss a reduced pass returns, as the double to store in the dtype: the double-double sum,
// divided by n (as a double-double) for 'mean', rounded once. For float32 and the 16-bit
// dtypes that double is the sum rounded to odd, so that its conversion to the narrower dtype
// rounds the exact value, not a double.
double final_value(const LossPassResult& r, bool mean, std::int64_t n, Dtype dtype) {
  double hi = r.sum, lo = r.sum_lo;
  if (mean) dd::divide(hi, lo, static_cast<double>(n), hi, lo);
#ifdef FASTLOSS_PLANTED_FAULT_FLOAT32_DOUBLE_ROUNDING
  return hi;
#endif
  return dtype == Dtype::Float64 ? hi : dd::round_to_odd(hi, lo);
}

// Whether every value within the plain sum's bound of `value` (the final value of a pass that
// summed plainly, kernels.h: kPlainSumRelativeError, or kFloat32TermsRelativeError and
// kFloat32TermsAbsoluteErrorPerTerm where it took float32 terms) rounds to the same value of
// `dtype`, float32 or a 16-bit one: then, rounding being monotonic, the exact sum (mean) does
// too and `value` gives the exact path's bits. Twice the bound, for the final value's own
// roundings. A plain sum's terms are >= 0 (or it is NaN), so nothing below 0 is in question.
bool rounding_is_certain(double value, Dtype dtype, const LossPassResult& result, std::int64_t n, bool mean) {
  if (!std::isfinite(value)) return false;
#ifdef FASTLOSS_PLANTED_FAULT_FLOAT32_TERMS_BOUND_AS_DOUBLES
  const bool float32_terms = false;
#else
  const bool float32_terms = result.float32_terms;
#endif
  const double relative = float32_terms ? kFloat32TermsRelativeError : kPlainSumRelativeError;
  double absolute = 0.0;
#ifndef FASTLOSS_PLANTED_FAULT_FLOAT32_TERMS_UNDERFLOW_IGNORED
  if (float32_terms) absolute = kFloat32TermsAbsoluteErrorPerTerm * (mean ? 1.0 : static_cast<double>(n));
#endif
  const double margin = 2 * (std::fabs(value) * relative + absolute);
  const double below = std::max(value - margin, 0.0), above = value + margin;
  switch (dtype) {
    case Dtype::Float16:
      return half::round_to_bits<half::Float16Format>(below) == half::round_to_bits<half::Float16Format>(above);
    case Dtype::BFloat16:
      return half::round_to_bits<half::BFloat16Format>(below) == half::round_to_bits<half::BFloat16Format>(above);
    case Dtype::Float32: return static_cast<float>(below) == static_cast<float>(above);
    default: return false;
  }
}

// Whether the arrays of `call` are what the kernels need (call.op, outputs and grad_output
// set); fills in the array fields.
template <bool kExact>
bool check_arrays(LossCall& call, PyObject* input, PyObject* target, PyObject* weight,
                  PyObject* pos_weight, PyObject* out) {
  if (kExact ? !PyArray_CheckExact(input) : !PyArray_Check(input)) return false;
  call.dtype = dtype_of(reinterpret_cast<PyArrayObject*>(input));
  if (call.dtype == Dtype::Other) return false;
  call.input = readable<kExact>(input, call.dtype);
  call.target = readable<kExact>(target, call.dtype);
  if (call.input == nullptr || call.target == nullptr || !same_shape(call.input, call.target) ||
      !weight_buffer(weight, call.dtype, call.weight) || !weight_buffer(pos_weight, call.dtype, call.pos_weight)) {
    return false;
  }
  call.out = nullptr;
  if (wants_grad(call.outputs) && out != Py_None) {
    call.out = writable_output<kExact>(out, call.input, call.dtype, {call.input, call.target, call.weight, call.pos_weight});
    if (call.out == nullptr) return false;
  }
  return true;
}

// Runs the checked pass: the loss (a NumPy scalar of the input's dtype for Sum*, divided by N
// when `mean`; an array for Elementwise*), the gradient (written to `out` or a new array;
// scaled by grad_output, / N when `mean`), or (loss, gradient). A new reference, or null with
// an exception set.
template <class T>
PyObject* run_loss(const LossCall& call) {
  const std::int64_t n = size_of(call.input);
  LossPass<T> p;
  p.n = n;
  p.input = static_cast<const T*>(PyArray_DATA(call.input));
  p.target = static_cast<const T*>(PyArray_DATA(call.target));
  if (call.weight != nullptr || call.pos_weight != nullptr) {
    p.weight = call.weight ? static_cast<const T*>(PyArray_DATA(call.weight)) : ones_buffer<T>();
    p.weight_period = call.weight ? size_of(call.weight) : kChunkSize;
    p.pos_weight = call.pos_weight ? static_cast<const T*>(PyArray_DATA(call.pos_weight)) : ones_buffer<T>();
    p.pos_weight_period = call.pos_weight ? size_of(call.pos_weight) : kChunkSize;
  }
  p.grad_scale = call.mean && !call.partial ? call.grad_output / static_cast<double>(n) : call.grad_output;
#ifdef FASTLOSS_PLANTED_FAULT_MEAN_GRAD_SCALE
  if (call.mean) p.grad_scale = call.grad_output / static_cast<double>(n + 1);
#endif
  py::object grad, loss;  // owners of the new references
  if (wants_grad(call.outputs)) {
    // NumPy's allocation asks for huge pages (a fresh 400 MB array is written 3x faster)
    PyObject* g = call.out != nullptr ? reinterpret_cast<PyObject*>(call.out) : new_array(call.input, call.dtype);
    if (g == nullptr) return nullptr;
    grad = call.out != nullptr ? py::reinterpret_borrow<py::object>(g) : py::reinterpret_steal<py::object>(g);
    p.grad_out = data_of<T>(g);
  }
  if (wants_elementwise(call.outputs)) {
    PyObject* l = new_array(call.input, call.dtype);
    if (l == nullptr) return nullptr;
    loss = py::reinterpret_steal<py::object>(l);
    p.loss_out = data_of<T>(l);
  }
  // Plain sums where the pass allows them (kernels.h), but not for a Dask block (its partial is
  // the unrounded double-double) nor where the gradient overwrites the input or the target,
  // which an exact rerun would have to read again.
  const bool gradient_overwrites_an_argument =
      call.out != nullptr && (PyArray_DATA(call.out) == PyArray_DATA(call.input) ||
                              PyArray_DATA(call.out) == PyArray_DATA(call.target));
  p.plain_sum = !call.partial && !gradient_overwrites_an_argument;
  double small_workspace[16];
  std::vector<double> workspace;
  if (wants_sum(call.outputs)) {
    const std::int64_t chunks = num_chunks(n);
    if (chunks > 8) workspace.resize(2 * static_cast<std::size_t>(chunks));
    p.chunk_sums = chunks > 8 ? workspace.data() : small_workspace;
  }

  const LossOp op = call.op;
  const PassOutputs outputs = call.outputs;
  LossPassResult result = run_releasing_gil_if_large(n, [&] { return run_loss_pass(op, outputs, p); });
  if (result.input_out_of_range) {
    PyErr_SetNone(probability_out_of_range);
    return nullptr;
  }

  if (call.partial) {
    // (hi, lo) for Sum, (hi, lo, grad) for SumAndGrad: the dispatch asks for nothing else
#ifdef FASTLOSS_PLANTED_FAULT_PARTIAL_DROPS_LO
    const double lo = 0.0;
#else
    const double lo = result.sum_lo;
#endif
    if (outputs == PassOutputs::Sum) return Py_BuildValue("(dd)", result.sum, lo);
    return Py_BuildValue("(ddO)", result.sum, lo, grad.ptr());
  }
  if (wants_sum(outputs)) {
    double value = final_value(result, call.mean, n, call.dtype);
#ifdef FASTLOSS_PLANTED_FAULT_PLAIN_SUM_UNCHECKED
    if (false) {
#else
    if (result.summed_plainly && !rounding_is_certain(value, call.dtype, result, n, call.mean)) {
#endif
      LossPass<T> exact = p;
      exact.plain_sum = false;
      result = run_releasing_gil_if_large(n, [&] { return run_loss_pass(op, PassOutputs::Sum, exact); });
      value = final_value(result, call.mean, n, call.dtype);
    }
    PyObject* s = scalar_of(value, call.dtype);
    if (s == nullptr) return nullptr;
    loss = py::reinterpret_steal<py::object>(s);
  }
  if (outputs == PassOutputs::Grad) return grad.release().ptr();
  if (wants_grad(outputs)) return PyTuple_Pack(2, loss.ptr(), grad.ptr());
  return loss.release().ptr();
}

PyObject* run_checked_loss(const LossCall& call) {
  return guarded([&] { return with_storage_type(call.dtype, [&](auto zero) { return run_loss<decltype(zero)>(call); }); });
}

bool valid_codes(long op, long outputs) { return op >= 0 && op <= 2 && outputs >= 0 && outputs <= 4; }

// loss_pass(op, outputs, mean, input, target, weight, pos_weight, grad_output, out): one pass
// of `outputs` over (input, target), the arrays as the dispatch prepared them.
PyObject* loss_pass_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 9) return none();
  const long op = PyLong_AsLong(args[0]);
  const long outputs = PyLong_AsLong(args[1]);
  const int mean = PyObject_IsTrue(args[2]);
  const double grad_output = PyFloat_AsDouble(args[7]);
  if (PyErr_Occurred() || mean < 0) return nullptr;
  if (!valid_codes(op, outputs)) return none();
  LossCall call{static_cast<LossOp>(op), static_cast<PassOutputs>(outputs), mean != 0, Dtype::Other,
                nullptr, nullptr, nullptr, nullptr, grad_output, nullptr};
  if (!check_arrays<false>(call, args[3], args[4], args[5], args[6], args[8])) return none();
  return run_checked_loss(call);
}

// loss_partial(op, outputs, input, target, weight, pos_weight, grad_scale, out): one block of a
// larger array (the Dask family): outputs Sum gives (hi, lo), the block's unrounded sum as a
// normalized double-double, and SumAndGrad (hi, lo, gradient) with the gradient times
// grad_scale as given. Blocks' partials added with the same double-double arithmetic
// (python/fastloss/_dd.py) and rounded once give what loss_pass gives on the whole array.
PyObject* loss_partial_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8) return none();
  const long op = PyLong_AsLong(args[0]);
  const long outputs = PyLong_AsLong(args[1]);
  const double grad_scale = PyFloat_AsDouble(args[6]);
  if (PyErr_Occurred()) return nullptr;
  if (!valid_codes(op, outputs) || !wants_sum(static_cast<PassOutputs>(outputs))) return none();
  LossCall call{static_cast<LossOp>(op), static_cast<PassOutputs>(outputs), false, Dtype::Other,
                nullptr, nullptr, nullptr, nullptr, grad_scale, nullptr, true};
  if (!check_arrays<false>(call, args[2], args[3], args[4], args[5], args[7])) return none();
  return run_checked_loss(call);
}

// The reduction's index in a plan (see _dispatch.LossKind.plan_code), or -1.
int reduction_index(PyObject* reduction) {
  static PyObject* names[3] = {PyUnicode_InternFromString("mean"), PyUnicode_InternFromString("sum"),
                               PyUnicode_InternFromString("none")};
  for (int r = 0; r < 3; ++r) {
    if (reduction == names[r]) return r;  // the interned literal of the caller's source
  }
  if (!PyUnicode_CheckExact(reduction)) return -1;
  for (int r = 0; r < 3; ++r) {
    if (PyUnicode_Compare(reduction, names[r]) == 0) return r;
  }
  return -1;
}

// loss(plan, input, target, weight, pos_weight, reduction, grad_output, out): the common call
// of a public loss function, as it came: NumPy's own arrays, no weights, reduction a str and
// grad_output a float; anything else is None. `plan` packs the dispatch's plan of each
// reduction: bits 0-3 the op, then 4 bits per reduction (mean, sum, none): the outputs code,
// and 8 where the sum and the gradient's scale are divided by N.
PyObject* loss_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8 || args[3] != Py_None || args[4] != Py_None || !PyFloat_CheckExact(args[6])) return none();
  const int r = reduction_index(args[5]);
  if (r < 0) return none();
  const long plan = PyLong_AsLong(args[0]);
  if (plan == -1 && PyErr_Occurred()) return nullptr;
  const long op = plan & 15;
  const long reduction_plan = (plan >> (4 + 4 * r)) & 15;
  if (!valid_codes(op, reduction_plan & 7)) return none();
  LossCall call{static_cast<LossOp>(op), static_cast<PassOutputs>(reduction_plan & 7), (reduction_plan & 8) != 0,
                Dtype::Other, nullptr, nullptr, nullptr, nullptr, PyFloat_AS_DOUBLE(args[6]), nullptr};
  if (!check_arrays<true>(call, args[1], args[2], Py_None, Py_None, args[7])) return none();
  return run_checked_loss(call);
}

// ---- sigmoid ---------------------------------------------------------------------------------
// sigmoid(input, out)
PyObject* sigmoid_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyArray_Check(args[0])) return none();
  auto* x = reinterpret_cast<PyArrayObject*>(args[0]);
  const Dtype dtype = dtype_of(x);
  if (dtype == Dtype::Other || readable(args[0], dtype) == nullptr) return none();
  PyArrayObject* out = nullptr;
  if (args[1] != Py_None && (out = writable_output(args[1], x, dtype, {x})) == nullptr) return none();
  return guarded([&]() -> PyObject* {
    PyObject* result = out != nullptr ? reinterpret_cast<PyObject*>(out) : new_array(x, dtype);
    if (result == nullptr) return nullptr;
    if (out != nullptr) Py_INCREF(result);
    const std::int64_t n = size_of(x);
    with_storage_type(dtype, [&](auto zero) {
      using T = decltype(zero);
      run_releasing_gil_if_large(n, [&] { sigmoid(n, static_cast<const T*>(PyArray_DATA(x)), data_of<T>(result)); });
    });
    return result;
  });
}

// sigmoid_backward(grad_output, output, out)
PyObject* sigmoid_backward_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyArray_Check(args[0])) return none();
  auto* g = reinterpret_cast<PyArrayObject*>(args[0]);
  const Dtype dtype = dtype_of(g);
  PyArrayObject* y = dtype == Dtype::Other ? nullptr : readable(args[1], dtype);
  if (y == nullptr || readable(args[0], dtype) == nullptr || !same_shape(g, y)) return none();
  PyArrayObject* out = nullptr;
  if (args[2] != Py_None && (out = writable_output(args[2], g, dtype, {g, y})) == nullptr) return none();
  return guarded([&]() -> PyObject* {
    PyObject* result = out != nullptr ? reinterpret_cast<PyObject*>(out) : new_array(g, dtype);
    if (result == nullptr) return nullptr;
    if (out != nullptr) Py_INCREF(result);
    const std::int64_t n = size_of(g);
    bool output_out_of_range = false;
    with_storage_type(dtype, [&](auto zero) {
      using T = decltype(zero);
      output_out_of_range = run_releasing_gil_if_large(n, [&] {
        return sigmoid_backward(n, static_cast<const T*>(PyArray_DATA(g)), static_cast<const T*>(PyArray_DATA(y)),
                                data_of<T>(result));
      });
    });
    if (output_out_of_range) {
      Py_DECREF(result);
      PyErr_SetNone(probability_out_of_range);
      return nullptr;
    }
    return result;
  });
}

PyMethodDef kEntries[] = {
    {"loss", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(loss_entry)), METH_FASTCALL,
     "loss(plan, input, target, weight, pos_weight, reduction, grad_output, out): the common call, or None."},
    {"loss_pass", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(loss_pass_entry)), METH_FASTCALL,
     "loss_pass(op, outputs, mean, input, target, weight, pos_weight, grad_output, out), or None."},
    {"loss_partial", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(loss_partial_entry)),
     METH_FASTCALL, "loss_partial(op, outputs, input, target, weight, pos_weight, grad_scale, out), or None."},
    {"sigmoid", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sigmoid_entry)), METH_FASTCALL,
     "sigmoid(input, out), or None."},
    {"sigmoid_backward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(sigmoid_backward_entry)),
     METH_FASTCALL, "sigmoid_backward(grad_output, output, out), or None."},
    {nullptr, nullptr, 0, nullptr}};

// ---- bandwidth probes (bench/): the ceiling our kernels are measured against ---------------
// Read: every byte of a float32 array once, all threads, 8 independent float accumulators so
// the adds keep up with memory. Copy: read one array, write another (what a fused loss+grad
// pass does per element, less one input stream).
// In a forked child their `if` clause keeps them on the calling thread: libgomp then never
// touches the pool the fork left behind (a parallel region with if(false) finishes there, checked
// with GCC 12's libgomp, where one without it hangs).
double stream_read(const py::array_t<float, py::array::c_style>& a) {
  const float* x = a.data();
  const std::int64_t n = a.size();
  double total = 0.0;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) reduction(+ : total) if (openmp_usable())
  for (std::int64_t c = 0; c < num_chunks(n); ++c) {
    float lanes[8] = {};
    const std::int64_t end = std::min(n, (c + 1) * kChunkSize);
    std::int64_t i = c * kChunkSize;
    for (; i + 8 <= end; i += 8) {
      for (int k = 0; k < 8; ++k) lanes[k] += x[i + k];
    }
    for (; i < end; ++i) lanes[0] += x[i];
    for (int k = 0; k < 8; ++k) total += lanes[k];
  }
  return total;
}

void stream_copy(const py::array_t<float, py::array::c_style>& src, py::array_t<float, py::array::c_style>& dst) {
  if (src.size() != dst.size()) throw py::value_error("stream_copy: sizes differ");
  const float* x = src.data();
  float* y = dst.mutable_data();
  const std::int64_t n = src.size();
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (openmp_usable())
  for (std::int64_t i = 0; i < n; ++i) y[i] = x[i];
}

// register_bfloat16(dtype): the dispatch hands over np.dtype(ml_dtypes.bfloat16) when it
// first meets one; from then on the entries run bfloat16 arrays.
void register_bfloat16(const py::object& dtype) {
  if (!PyArray_DescrCheck(dtype.ptr())) throw py::type_error("register_bfloat16: expected a numpy.dtype");
  const auto* descr = reinterpret_cast<const PyArray_Descr*>(dtype.ptr());
  if (PyDataType_ELSIZE(descr) != 2 || descr->type_num < NPY_USERDEF) {
    throw py::value_error("register_bfloat16: expected the 2-byte user-defined dtype of ml_dtypes.bfloat16");
  }
  storage::bfloat16_type = descr->type_num;
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = FASTLOSS_COMPILER;
  info["isa"] = kernels().name;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
  info["max_threads"] = openmp_usable() ? omp_get_max_threads() : 1;
#else
  info["openmp"] = false;
  info["openmp_version"] = 0;
  info["max_threads"] = 1;
#endif
  info["forked_child"] = !openmp_usable();
  info["chunk_size"] = kChunkSize;
  info["parallel_threshold"] = kParallelThreshold;
  return info;
}

}  // namespace
}  // namespace fastloss

PYBIND11_MODULE(_cpu, m) {
  using namespace fastloss;
  if (_import_array() < 0) throw py::error_already_set();
  // Never unregistered: a CPython extension module stays loaded until the process exits.
  if (pthread_atfork(nullptr, nullptr, on_fork_child) != 0) {
    throw std::runtime_error("fastloss: pthread_atfork failed");
  }
  m.doc() = "fastloss C++/OpenMP kernels. Use the functions in the fastloss package, not these.";
  // Never released: a CPython extension module stays loaded until the process exits.
  probability_out_of_range = PyErr_NewException("fastloss._cpu.ProbabilityOutOfRange", PyExc_ValueError, nullptr);
  if (probability_out_of_range == nullptr) throw py::error_already_set();
  m.attr("ProbabilityOutOfRange") = py::handle(probability_out_of_range);
  if (PyModule_AddFunctions(m.ptr(), kEntries) != 0) throw py::error_already_set();
  m.attr("LOSS_OPS") = py::make_tuple(static_cast<int>(LossOp::SquaredError), static_cast<int>(LossOp::BinaryCrossEntropy),
                                      static_cast<int>(LossOp::BinaryCrossEntropyWithLogits));
  m.attr("PASS_OUTPUTS") = py::make_tuple(
      static_cast<int>(PassOutputs::Sum), static_cast<int>(PassOutputs::SumAndGrad),
      static_cast<int>(PassOutputs::Elementwise), static_cast<int>(PassOutputs::ElementwiseAndGrad),
      static_cast<int>(PassOutputs::Grad));
  m.def("build_info", &build_info);
  m.def("register_bfloat16", &register_bfloat16, py::arg("dtype"),
        "Let the kernels take arrays of this dtype (ml_dtypes.bfloat16) as bfloat16.");
  m.def("stream_read", &stream_read, py::arg("array"),
        "Sum a float32 array with all threads: a read-bandwidth probe for bench/.");
  m.def("stream_copy", &stream_copy, py::arg("src"), py::arg("dst"),
        "Copy float32 src into dst with all threads: a copy-bandwidth probe for bench/.");
  register_training(m);
  register_multiclass(m);
}
