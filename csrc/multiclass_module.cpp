// fastloss._cpu's multi-class entries: softmax, log_softmax and their backward passes,
// cross-entropy, tanh and relu. As module.cpp's entries: each checks what the kernels need of
// the memory (arrays.h), allocates outputs through NumPy, releases the GIL on large inputs,
// calls the kernels of the instruction set chosen at import, and answers None to what it will
// not run; validation and every message belong to fastloss/_dispatch.py. The shapes come from
// the dispatch as (outer, classes, inner) (multiclass.h); an entry checks that they cover the
// arrays exactly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

// NumPy's C API (module.cpp imports it) for scalars and outputs without pybind11's overhead.
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL fastloss_ARRAY_API
#define NO_IMPORT_ARRAY
#include <numpy/arrayobject.h>
#include <numpy/arrayscalars.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "arrays.h"
#include "fastloss/double_double.h"
#include "isa.h"
#include "kernels.h"
#include "multiclass.h"
#include "multiclass_module.h"
#include "numpy_storage.h"

namespace py = pybind11;

namespace fastloss {
namespace {

using arrays::Dtype;

// One storage type's kernels of a build (multiclass.h).
template <class T>
struct MulticlassKernelsOf {
  void (*row)(RowOp, const RowPass<T>&);
  CrossEntropyResult (*cross_entropy)(PassOutputs, const CrossEntropyPass<T>&);
  void (*activation)(Activation, std::int64_t, const T*, const T*, T*);
};

struct MulticlassKernels {
  const char* name;
  MulticlassKernelsOf<float> f32;
  MulticlassKernelsOf<double> f64;
  MulticlassKernelsOf<Float16> f16;
  MulticlassKernelsOf<BFloat16> bf16;

  const MulticlassKernelsOf<float>& of(const float*) const { return f32; }
  const MulticlassKernelsOf<double>& of(const double*) const { return f64; }
  const MulticlassKernelsOf<Float16>& of(const Float16*) const { return f16; }
  const MulticlassKernelsOf<BFloat16>& of(const BFloat16*) const { return bf16; }
};

#define FASTLOSS_MULTICLASS_KERNELS_OF(isa, T) \
  MulticlassKernelsOf<T> { isa::run_row_op, isa::run_cross_entropy, isa::run_activation }
#define FASTLOSS_MULTICLASS_KERNELS(isa)                                                                   \
  MulticlassKernels {                                                                                      \
#isa, FASTLOSS_MULTICLASS_KERNELS_OF(isa, float), FASTLOSS_MULTICLASS_KERNELS_OF(isa, double),          \
        FASTLOSS_MULTICLASS_KERNELS_OF(isa, Float16), FASTLOSS_MULTICLASS_KERNELS_OF(isa, BFloat16)        \
  }

// The build module.cpp's loss kernels use (isa.h).
MulticlassKernels choose_kernels() {
  switch (chosen_isa()) {
#if defined(__x86_64__)
#if !defined(FASTLOSS_WITHOUT_X86_64_V4)
    case Isa::X86_64_V4: return FASTLOSS_MULTICLASS_KERNELS(x86_64_v4);
#endif
    case Isa::X86_64_V3: return FASTLOSS_MULTICLASS_KERNELS(x86_64_v3);
#endif
    default: break;
  }
  return FASTLOSS_MULTICLASS_KERNELS(baseline);
}

const MulticlassKernels& kernels() {
  static const MulticlassKernels chosen = choose_kernels();
  return chosen;
}

template <class T>
void run_row_op(RowOp op, const RowPass<T>& p) {
  kernels().of(p.first).row(op, p);
}
template <class T>
CrossEntropyResult run_cross_entropy(PassOutputs o, const CrossEntropyPass<T>& p) {
  return kernels().of(p.input).cross_entropy(o, p);
}
template <class T>
void run_activation(Activation op, std::int64_t n, const T* x, const T* y, T* out) {
  kernels().of(x).activation(op, n, x, y, out);
}

py::array borrow(py::handle obj) { return py::reinterpret_borrow<py::array>(obj); }

// float32, float64 or a 16-bit storage dtype (numpy_storage.h), else Other.
Dtype dtype_of(const py::array& a) { return storage::dtype_of(reinterpret_cast<PyArrayObject*>(a.ptr())); }

py::array new_array(const std::vector<npy_intp>& shape, Dtype dtype) {
  PyObject* a = PyArray_SimpleNew(static_cast<int>(shape.size()), const_cast<npy_intp*>(shape.data()),
                                  storage::numpy_type(dtype));
  if (a == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(a);
}

std::vector<npy_intp> shape_of(const py::array& a) { return std::vector<npy_intp>(a.shape(), a.shape() + a.ndim()); }

py::object scalar_of(double value, Dtype dtype) {
  PyObject* s = storage::scalar_of(value, dtype);
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(s);
}

// Whether obj is an array the kernels may read as T[count]: C-contiguous, aligned, of `dtype`.
bool readable(py::handle obj, Dtype dtype, std::int64_t count) {
  if (!py::isinstance<py::array>(obj)) return false;
  const py::array a = borrow(obj);
  return dtype_of(a) == dtype && arrays::contiguous_and_aligned(a) && a.size() == count;
}

// int64 or int32 class indices, native order, C-contiguous and aligned, `count` of them.
bool readable_indices(py::handle obj, TargetKind kind, std::int64_t count) {
  if (!py::isinstance<py::array>(obj)) return false;
  const py::array a = borrow(obj);
  const bool native = a.dtype().byteorder() == '=' || a.dtype().byteorder() == '|';
  const int wanted = kind == TargetKind::ClassIndex64 ? py::detail::npy_api::NPY_LONGLONG_ : py::detail::npy_api::NPY_INT_;
  const int num = a.dtype().num();
  const bool same_width = num == wanted || (kind == TargetKind::ClassIndex64 && num == py::detail::npy_api::NPY_LONG_ &&
                                            sizeof(long) == 8);
  return native && same_width && arrays::contiguous_and_aligned(a) && a.size() == count &&
         a.dtype().itemsize() == (kind == TargetKind::ClassIndex64 ? 8 : 4);
}

// A caller's out= of `like`'s shape, writeable, partly overlapping none of `reads`.
bool writable_output(py::handle obj, const py::array& like, Dtype dtype, std::initializer_list<py::handle> reads) {
  if (!readable(obj, dtype, like.size())) return false;
  const py::array out = borrow(obj);
  if (!out.writeable() || !arrays::same_shape(out, like)) return false;
  for (const py::handle read : reads) {
    if (!read.is_none() && py::isinstance<py::array>(read) && arrays::partially_overlaps(out, borrow(read))) {
      return false;
    }
  }
  return true;
}

template <class Kernel>
auto run_releasing_gil_if_large(std::int64_t n, Kernel kernel) {
  if (n >= kParallelThreshold) {
    py::gil_scoped_release release;
    return kernel();
  }
  return kernel();
}

bool wants_sum(PassOutputs o) { return o == PassOutputs::Sum || o == PassOutputs::SumAndGrad; }
bool wants_elementwise(PassOutputs o) { return o == PassOutputs::Elementwise || o == PassOutputs::ElementwiseAndGrad; }
bool wants_grad(PassOutputs o) {
  return o == PassOutputs::SumAndGrad || o == PassOutputs::ElementwiseAndGrad || o == PassOutputs::Grad;
}

bool valid_shape(std::int64_t outer, std::int64_t classes, std::int64_t inner) {
  return outer >= 0 && classes >= 1 && inner >= 1;
}

// Raised with (row, class index) when a class index is outside [0, classes) and not
// ignore_index (the dispatch words it); nothing has been written then.
PyObject* class_index_out_of_range = nullptr;

// ---- softmax family ----------------------------------------------------------------------------
// op's pass over the rows of `first` (the input, or grad_output for the backward ops) and
// `second` (the forward output, backward ops only), into `out` or a new array of first's shape.
py::object row_pass(int op_code, py::handle first, py::handle second, std::int64_t outer, std::int64_t classes,
                    std::int64_t inner, py::handle out) {
  if (op_code < 0 || op_code > 3 || !valid_shape(outer, classes, inner)) return py::none();
  const auto op = static_cast<RowOp>(op_code);
  const bool backward = op == RowOp::SoftmaxBackward || op == RowOp::LogSoftmaxBackward;
  if (!py::isinstance<py::array>(first)) return py::none();
  const py::array first_array = borrow(first);
  const Dtype dtype = dtype_of(first_array);
  const RowShape shape{outer, classes, inner};
  if (dtype == Dtype::Other || !readable(first, dtype, shape.elements())) return py::none();
  if (backward && (!readable(second, dtype, shape.elements()) || !arrays::same_shape(first_array, borrow(second)))) {
    return py::none();
  }
  if (!backward && !second.is_none()) return py::none();
  if (!out.is_none() && !writable_output(out, first_array, dtype, {first, second})) return py::none();
  py::array result = out.is_none() ? new_array(shape_of(first_array), dtype) : borrow(out);
  storage::with_storage_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    RowPass<T> p;
    p.shape = shape;
    p.first = static_cast<const T*>(first_array.data());
    p.second = backward ? static_cast<const T*>(borrow(second).data()) : nullptr;
    p.out = static_cast<T*>(result.mutable_data());
    run_releasing_gil_if_large(shape.elements(), [&] { run_row_op(op, p); });
  });
  return std::move(result);
}

// ---- cross-entropy -----------------------------------------------------------------------------
// The reduced loss, rounded once to dtype: the sum, or for the mean the double-double quotient
// of the sum by the divisor (dd::divide_by_sum); float32 through a round-to-odd double, as
// module.cpp's final_value (a float32 of hi alone could round twice). fastloss._dask rounds a
// combined partial with the same steps (fastloss._dd).
double reduced_loss(const CrossEntropyResult& r, bool mean, Dtype dtype) {
  double hi = r.sum, lo = r.sum_lo;
  if (mean) dd::divide_by_sum(hi, lo, r.divisor, r.divisor_lo, hi, lo);
  return dtype == Dtype::Float64 ? hi : dd::round_to_odd(hi, lo);
}

// How the pass answers: the rounded loss (and gradient), or for a Dask block its unrounded
// partial, (sum, sum_lo, divisor, divisor_lo) (and the gradient).
enum class Answer { Rounded, Partial };

template <class T>
py::object cross_entropy_typed(PassOutputs outputs, Answer answer, TargetKind kind, bool mean, const py::array& input,
                               py::handle target, py::handle weight, std::int64_t ignore_index,
                               double label_smoothing, py::handle grad_output, py::handle out,
                               const RowShape& shape, const std::vector<npy_intp>& loss_shape, Dtype dtype) {
  CrossEntropyPass<T> p;
  p.shape = shape;
  p.input = static_cast<const T*>(input.data());
  p.target_kind = kind;
  p.target = borrow(target).data();
  p.class_weight = weight.is_none() ? nullptr : static_cast<const T*>(borrow(weight).data());
  p.ignore_index = ignore_index;
  p.label_smoothing = label_smoothing;
  if (py::isinstance<py::array>(grad_output)) {
    p.grad_output = static_cast<const T*>(borrow(grad_output).data());
  } else {
    p.grad_scale = grad_output.cast<double>();
  }
  p.mean = mean;
  py::object grad;
  if (wants_grad(outputs)) {
    py::array g = out.is_none() ? new_array(shape_of(input), dtype) : borrow(out);
    p.grad_out = static_cast<T*>(g.mutable_data());
    grad = std::move(g);
  }
  py::object loss;
  if (wants_elementwise(outputs)) {
    py::array l = new_array(loss_shape, dtype);
    p.loss_out = static_cast<T*>(l.mutable_data());
    loss = std::move(l);
  }
  const CrossEntropyResult result =
      run_releasing_gil_if_large(shape.elements(), [&] { return run_cross_entropy(outputs, p); });
  if (result.bad_row >= 0) {
    PyErr_SetObject(class_index_out_of_range, py::make_tuple(result.bad_row, result.bad_class).ptr());
    throw py::error_already_set();
  }
  if (answer == Answer::Partial) {
    const py::tuple partial = py::make_tuple(result.sum, result.sum_lo, result.divisor, result.divisor_lo);
    if (wants_grad(outputs)) return py::make_tuple(partial, grad);
    return std::move(partial);
  }
  if (wants_sum(outputs)) loss = scalar_of(reduced_loss(result, mean, dtype), dtype);
  if (outputs == PassOutputs::Grad) return grad;
  if (wants_grad(outputs)) return py::make_tuple(loss, grad);
  return loss;
}

// One cross-entropy pass of `outputs` over input (outer, classes, inner) and its target
// (class indices, one per row, or probabilities of the input's shape): the loss (a NumPy
// scalar for Sum*, divided by the mean's divisor when `mean`; an array of `loss_shape` for
// Elementwise*), the gradient (into `out` or a new array; grad_output a float, or an array of
// one value per row), or (loss, gradient).
py::object cross_entropy_checked(int outputs_code, Answer answer, int target_code, bool mean, py::handle input,
                                 py::handle target, py::handle weight, std::int64_t ignore_index,
                                 double label_smoothing, py::handle grad_output, py::handle out, std::int64_t outer,
                                 std::int64_t classes, std::int64_t inner, const py::tuple& loss_dims) {
  std::vector<npy_intp> loss_shape;
  for (const py::handle extent : loss_dims) loss_shape.push_back(extent.cast<npy_intp>());
  if (outputs_code < 0 || outputs_code > 4 || target_code < 0 || target_code > 2) return py::none();
  if (!valid_shape(outer, classes, inner) || !py::isinstance<py::array>(input)) return py::none();
  const auto outputs = static_cast<PassOutputs>(outputs_code);
  const auto kind = static_cast<TargetKind>(target_code);
  const py::array input_array = borrow(input);
  const Dtype dtype = dtype_of(input_array);
  const RowShape shape{outer, classes, inner};
  if (dtype == Dtype::Other || !readable(input, dtype, shape.elements())) return py::none();
  std::int64_t loss_size = 1;
  for (const npy_intp extent : loss_shape) loss_size *= extent;
  if (loss_size != shape.rows()) return py::none();
  if (kind == TargetKind::Probabilities ? !readable(target, dtype, shape.elements())
                                        : !readable_indices(target, kind, shape.rows())) {
    return py::none();
  }
  if (!weight.is_none() && !readable(weight, dtype, classes)) return py::none();
  if (py::isinstance<py::array>(grad_output)) {
    if (!readable(grad_output, dtype, shape.rows())) return py::none();
  } else if (!py::isinstance<py::float_>(grad_output)) {
    return py::none();
  }
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) return py::none();
  if (wants_grad(outputs) && !out.is_none() &&
      !writable_output(out, input_array, dtype, {input, target, weight, grad_output})) {
    return py::none();
  }
  py::object result;
  storage::with_storage_type(dtype, [&](auto zero) {
    result = cross_entropy_typed<decltype(zero)>(outputs, answer, kind, mean, input_array, target, weight, ignore_index,
                                                 label_smoothing, grad_output, out, shape, loss_shape, dtype);
  });
  return result;
}

py::object cross_entropy_pass(int outputs_code, int target_code, bool mean, py::handle input, py::handle target,
                              py::handle weight, std::int64_t ignore_index, double label_smoothing,
                              py::handle grad_output, py::handle out, std::int64_t outer, std::int64_t classes,
                              std::int64_t inner, const py::tuple& loss_dims) {
  return cross_entropy_checked(outputs_code, Answer::Rounded, target_code, mean, input, target, weight, ignore_index,
                               label_smoothing, grad_output, out, outer, classes, inner, loss_dims);
}

// One Dask block of a larger cross-entropy (fastloss._dask): its unrounded partial
// (sum, sum_lo, divisor, divisor_lo), or (partial, gradient) with want_grad, the gradient of
// the sum times grad_scale (the caller divides grad_scale by the whole array's divisor for a
// mean). None where cross_entropy_pass would answer None.
py::object cross_entropy_partial(bool want_grad, int target_code, py::handle input, py::handle target,
                                 py::handle weight, std::int64_t ignore_index, double label_smoothing,
                                 double grad_scale, std::int64_t outer, std::int64_t classes, std::int64_t inner) {
  const int outputs = static_cast<int>(want_grad ? PassOutputs::SumAndGrad : PassOutputs::Sum);
  return cross_entropy_checked(outputs, Answer::Partial, target_code, false, input, target, weight, ignore_index,
                               label_smoothing, py::float_(grad_scale), py::none(), outer, classes, inner,
                               py::make_tuple(outer * inner));
}

// ---- tanh and relu -----------------------------------------------------------------------------
// Forward ops read x; backward ops read grad_output (x) and the forward output (y).
py::object activation(int op_code, py::handle x, py::handle y, py::handle out) {
  if (op_code < 0 || op_code > 3 || !py::isinstance<py::array>(x)) return py::none();
  const auto op = static_cast<Activation>(op_code);
  const bool backward = op == Activation::TanhBackward || op == Activation::ReluBackward;
  const py::array x_array = borrow(x);
  const Dtype dtype = dtype_of(x_array);
  const std::int64_t n = x_array.size();
  if (dtype == Dtype::Other || !readable(x, dtype, n)) return py::none();
  if (backward ? !(readable(y, dtype, n) && arrays::same_shape(x_array, borrow(y))) : !y.is_none()) {
    return py::none();
  }
  if (!out.is_none() && !writable_output(out, x_array, dtype, {x, y})) return py::none();
  py::array result = out.is_none() ? new_array(shape_of(x_array), dtype) : borrow(out);
  storage::with_storage_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* second = backward ? static_cast<const T*>(borrow(y).data()) : nullptr;
    run_releasing_gil_if_large(n, [&] {
      run_activation(op, n, static_cast<const T*>(x_array.data()), second, static_cast<T*>(result.mutable_data()));
    });
  });
  return std::move(result);
}

}  // namespace

void register_multiclass(py::module_& m) {
  // Never released: a CPython extension module stays loaded until the process exits.
  class_index_out_of_range =
      PyErr_NewException("fastloss._cpu.ClassIndexOutOfRange", PyExc_ValueError, nullptr);
  if (class_index_out_of_range == nullptr) throw py::error_already_set();
  m.attr("ClassIndexOutOfRange") = py::handle(class_index_out_of_range);
  m.def("row_pass", &row_pass, py::arg("op"), py::arg("first"), py::arg("second"), py::arg("outer"),
        py::arg("classes"), py::arg("inner"), py::arg("out"));
  m.def("cross_entropy_pass", &cross_entropy_pass, py::arg("outputs"), py::arg("target_kind"), py::arg("mean"),
        py::arg("input"), py::arg("target"), py::arg("weight"), py::arg("ignore_index"),
        py::arg("label_smoothing"), py::arg("grad_output"), py::arg("out"), py::arg("outer"), py::arg("classes"),
        py::arg("inner"), py::arg("loss_shape"));
  m.def("cross_entropy_partial", &cross_entropy_partial, py::arg("want_grad"), py::arg("target_kind"),
        py::arg("input"), py::arg("target"), py::arg("weight"), py::arg("ignore_index"), py::arg("label_smoothing"),
        py::arg("grad_scale"), py::arg("outer"), py::arg("classes"), py::arg("inner"));
  m.def("activation", &activation, py::arg("op"), py::arg("x"), py::arg("y"), py::arg("out"));
  m.attr("ROW_OPS") = py::make_tuple(static_cast<int>(RowOp::Softmax), static_cast<int>(RowOp::LogSoftmax),
                                     static_cast<int>(RowOp::SoftmaxBackward),
                                     static_cast<int>(RowOp::LogSoftmaxBackward));
  m.attr("TARGET_KINDS") =
      py::make_tuple(static_cast<int>(TargetKind::ClassIndex64), static_cast<int>(TargetKind::ClassIndex32),
                     static_cast<int>(TargetKind::Probabilities));
  m.attr("ACTIVATIONS") = py::make_tuple(static_cast<int>(Activation::Tanh), static_cast<int>(Activation::TanhBackward),
                                         static_cast<int>(Activation::Relu), static_cast<int>(Activation::ReluBackward));
  m.attr("multiclass_isa") = kernels().name;
}

}  // namespace fastloss
