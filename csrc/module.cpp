// fastloss._cpu: validates NumPy arrays, allocates outputs through NumPy, releases the GIL on
// large inputs and calls the kernels of the instruction set chosen at import.
//
// Python (fastloss/_numpy_backend.py) has already turned reduction names into codes and every
// weight into a 1-D contiguous buffer with a period; everything that could make a kernel read
// or write the wrong memory is checked again here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

// NumPy's own C API, for the two things pybind11's wrapper makes slow on tiny arrays:
// allocating an output and returning a NumPy scalar (~1 us each through Python).
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL fastloss_ARRAY_API
#include <numpy/arrayobject.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
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

enum class Reduction : int { Mean = 0, Sum = 1, None = 2 };

// ---- instruction-set dispatch ----------------------------------------------------------
struct KernelSet {
  const char* name;
  LossPassResult (*loss_f32)(LossOp, PassOutputs, const LossPass<float>&);
  LossPassResult (*loss_f64)(LossOp, PassOutputs, const LossPass<double>&);
  void (*sigmoid_f32)(std::int64_t, const float*, float*);
  void (*sigmoid_f64)(std::int64_t, const double*, double*);
  void (*sigmoid_backward_f32)(std::int64_t, const float*, const float*, float*);
  void (*sigmoid_backward_f64)(std::int64_t, const double*, const double*, double*);
};

#define FASTLOSS_KERNEL_SET(isa)                                                                  \
  KernelSet {                                                                                     \
#isa, isa::run_loss_pass, isa::run_loss_pass, isa::sigmoid, isa::sigmoid, isa::sigmoid_backward, \
        isa::sigmoid_backward                                                                     \
  }

// FASTLOSS_ISA=baseline forces the portable build (tests use it to check both).
KernelSet choose_kernels() {
  const char* forced = std::getenv("FASTLOSS_ISA");
  const bool want_baseline = forced != nullptr && std::strcmp(forced, "baseline") == 0;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!want_baseline && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return FASTLOSS_KERNEL_SET(x86_64_v3);
  }
#endif
  (void)want_baseline;
  return FASTLOSS_KERNEL_SET(baseline);
}

const KernelSet& kernels() {
  static const KernelSet chosen = choose_kernels();
  return chosen;
}

LossPassResult run_loss_pass(LossOp op, PassOutputs o, const LossPass<float>& p) {
  return kernels().loss_f32(op, o, p);
}
LossPassResult run_loss_pass(LossOp op, PassOutputs o, const LossPass<double>& p) {
  return kernels().loss_f64(op, o, p);
}
void sigmoid(std::int64_t n, const float* x, float* out) { kernels().sigmoid_f32(n, x, out); }
void sigmoid(std::int64_t n, const double* x, double* out) { kernels().sigmoid_f64(n, x, out); }
void sigmoid_backward(std::int64_t n, const float* g, const float* y, float* out) {
  kernels().sigmoid_backward_f32(n, g, y, out);
}
void sigmoid_backward(std::int64_t n, const double* g, const double* y, double* out) {
  kernels().sigmoid_backward_f64(n, g, y, out);
}

// ---- validation --------------------------------------------------------------------------
enum class Dtype { Float32, Float64 };

std::string shape_of(const py::array& a) { return py::str(a.attr("shape")).cast<std::string>(); }
std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string type_name_of(py::handle obj) {
  const py::handle type = py::type::of(obj);
  return py::str(type.attr("__module__")).cast<std::string>() + "." +
         py::str(type.attr("__qualname__")).cast<std::string>();
}

// numpy.ma arrays are ndarrays: their data would be read and their mask silently ignored.
bool is_masked_array(py::handle obj) {
  if (PyArray_CheckExact(obj.ptr())) return false;
  // Leaked on purpose, like numpy.require below.
  static const py::object* masked = new py::object(py::module_::import("numpy.ma").attr("MaskedArray"));
  return py::isinstance(obj, *masked);
}

py::array require_array(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    if (py::hasattr(obj, "__cuda_array_interface__")) {
      throw py::type_error(std::string(name) + " is a GPU array (" + type_name_of(obj) +
                           ") in a call on NumPy arrays; all arrays of one call must be on the same "
                           "device (copy it with cupy.asnumpy, or pass CuPy arrays only)");
    }
    throw py::type_error(std::string(name) + " must be a numpy.ndarray (all arrays of one call on the CPU), got " +
                         type_name_of(obj));
  }
  if (is_masked_array(obj)) {
    throw py::type_error(std::string(name) + " is a numpy.ma.MaskedArray, whose mask fastloss would ignore; "
                         "pass a plain numpy.ndarray (" + name + ".filled(value) or " + name + ".data)");
  }
  return py::reinterpret_borrow<py::array>(obj);
}

Dtype dtype_of(const py::array& a, const char* name) {
  using api = py::detail::npy_api;
  const py::dtype dt = a.dtype();
  const int num = dt.num();
  if (num == api::NPY_FLOAT_ || num == api::NPY_DOUBLE_) {
    // NumPy reports a native byte order as '='; '>' on a little-endian machine would make
    // the kernels read byte-swapped garbage.
    if (dt.byteorder() != '=' && dt.byteorder() != '|') {
      throw py::type_error(std::string(name) + " has non-native byte order (dtype " + dtype_name(a) +
                           "); convert it with .astype(" +
                           (num == api::NPY_FLOAT_ ? "'float32'" : "'float64'") + ")");
    }
    return num == api::NPY_FLOAT_ ? Dtype::Float32 : Dtype::Float64;
  }
  throw py::type_error(std::string(name) + " has dtype " + dtype_name(a) +
                       "; fastloss supports float32 and float64");
}

const char* dtype_label(Dtype d) { return d == Dtype::Float32 ? "float32" : "float64"; }

void require_same_dtype(Dtype expected, const py::array& a, const char* name, const char* like) {
  const Dtype d = dtype_of(a, name);
  if (d != expected) {
    throw py::type_error(std::string(name) + " has dtype " + dtype_label(d) + " but " + like +
                         " has dtype " + dtype_label(expected) +
                         "; convert one of them explicitly (fastloss never upcasts silently)");
  }
}

void require_same_shape(const py::array& a, const char* name, const py::array& like, const char* like_name) {
  bool same = a.ndim() == like.ndim();
  for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == like.shape(d);
  if (!same) {
    throw py::value_error(std::string(name) + " has shape " + shape_of(a) + ", expected " +
                          shape_of(like) + " (the shape of " + like_name + ")");
  }
}

constexpr int kContiguousAndAligned =
    py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;

// Inputs that are not C-contiguous (or not aligned) are copied: documented in every docstring.
py::array contiguous(const py::array& a) {
  if ((a.flags() & kContiguousAndAligned) == kContiguousAndAligned) return a;
  // numpy.require, not ascontiguousarray: that one returns a contiguous but unaligned array
  // as it is (UBSan caught the misaligned loads). Leaked on purpose: a static py::object
  // would be destroyed after the interpreter is gone.
  static const py::object* require = new py::object(py::module_::import("numpy").attr("require"));
  return (*require)(a, py::none(), "CA");
}

struct ByteRange {
  const char* begin;
  const char* end;
};
ByteRange bytes_of(const py::array& a) {
  const char* p = static_cast<const char*>(a.data());
  return {p, p + a.nbytes()};
}

// An output may be exactly one of the inputs (in-place update) but must not partly overlap one.
void require_no_partial_overlap(const py::array& out, const py::array& in, const char* in_name) {
#ifdef FASTLOSS_PLANTED_FAULT_OVERLAP_CHECK_SKIPPED
  return;
#endif
  const ByteRange o = bytes_of(out), i = bytes_of(in);
  if (o.begin == o.end || i.begin == i.end) return;
  const bool overlap = o.begin < i.end && i.begin < o.end;
  if (overlap && !(o.begin == i.begin && o.end == i.end)) {
    throw py::value_error(std::string("out overlaps ") + in_name +
                          " without being the same array; pass a separate buffer or " + in_name + " itself");
  }
}

int numpy_type(Dtype d) { return d == Dtype::Float32 ? NPY_FLOAT : NPY_DOUBLE; }

py::array new_array(const py::array& like, Dtype dtype) {
  std::vector<npy_intp> shape(like.shape(), like.shape() + like.ndim());
  PyObject* a = PyArray_SimpleNew(like.ndim(), shape.data(), numpy_type(dtype));
  if (a == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(a);
}

// Checks a caller's out= buffer, or allocates one (through NumPy, which asks for huge pages).
py::array output_like(py::handle out, const py::array& like, Dtype dtype, const char* like_name) {
  if (out.is_none()) return new_array(like, dtype);
  py::array o = require_array(out, "out");
  require_same_dtype(dtype, o, "out", like_name);
  require_same_shape(o, "out", like, like_name);
  if ((o.flags() & kContiguousAndAligned) != kContiguousAndAligned) {
    throw py::value_error("out must be C-contiguous and aligned");
  }
  if (!o.writeable()) throw py::value_error("out is read-only; expected a writeable array");
  return o;
}

py::object scalar_of(double value, Dtype dtype) {
  const float value_f32 = static_cast<float>(value);
  const void* data = dtype == Dtype::Float32 ? static_cast<const void*>(&value_f32) : &value;
  PyObject* s = PyArray_Scalar(const_cast<void*>(data), PyArray_DescrFromType(numpy_type(dtype)), nullptr);
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(s);
}

// A weight prepared by Python: None, or a 1-D C-contiguous buffer read with period = its size.
struct Weight {
  const char* name;
  py::object owner;  // keeps the buffer alive; None when absent
  const void* data = nullptr;
  std::int64_t size = 0;
  bool present() const { return data != nullptr; }
};
Weight weight_of(py::handle obj, Dtype dtype, const char* name, std::int64_t n) {
  Weight w{name};
  if (obj.is_none() || n == 0) return w;
  const py::array a = require_array(obj, name);
  require_same_dtype(dtype, a, name, "input");
  if (a.ndim() != 1 || (a.flags() & kContiguousAndAligned) != kContiguousAndAligned) {
    throw py::value_error(std::string(name) + " must be prepared by fastloss (1-D, contiguous)");
  }
  if (a.size() == 0) throw py::value_error(std::string(name) + " is empty");
  w.owner = a;
  w.data = a.data();
  w.size = a.size();
  return w;
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
const T* ones_buffer() {
  static const std::vector<T> ones(static_cast<std::size_t>(kChunkSize), T(1));
  return ones.data();
}

// ---- the loss entry point ------------------------------------------------------------------
template <class T>
py::object loss_pass_typed(LossOp op, Reduction reduction, bool want_loss, bool want_grad,
                           const py::array& input, const py::array& target, const Weight& weight,
                           const Weight& pos_weight, double grad_output, py::handle out, Dtype dtype) {
  const std::int64_t n = input.size();
  LossPass<T> p;
  p.n = n;
  p.input = static_cast<const T*>(input.data());
  p.target = static_cast<const T*>(target.data());
  if (weight.present() || pos_weight.present()) {
    p.weight = weight.present() ? static_cast<const T*>(weight.data) : ones_buffer<T>();
    p.weight_period = weight.present() ? weight.size : kChunkSize;
    p.pos_weight = pos_weight.present() ? static_cast<const T*>(pos_weight.data) : ones_buffer<T>();
    p.pos_weight_period = pos_weight.present() ? pos_weight.size : kChunkSize;
  }
  const bool reduce = reduction != Reduction::None;
  p.grad_scale = reduction == Reduction::Mean ? grad_output / static_cast<double>(n) : grad_output;
#ifdef FASTLOSS_PLANTED_FAULT_MEAN_GRAD_SCALE
  if (reduction == Reduction::Mean) p.grad_scale = grad_output / static_cast<double>(n + 1);
#endif

  py::object grad;
  if (want_grad) {
    py::array g = output_like(out, input, dtype, "input");
    require_no_partial_overlap(g, input, "input");
    require_no_partial_overlap(g, target, "target");
    for (const Weight* w : {&weight, &pos_weight}) {
      if (w->present()) require_no_partial_overlap(g, py::reinterpret_borrow<py::array>(w->owner), w->name);
    }
    p.grad_out = static_cast<T*>(g.mutable_data());
    grad = g;
  }
  py::object loss_array;
  if (want_loss && !reduce) {
    py::array l = new_array(input, dtype);
    p.loss_out = static_cast<T*>(l.mutable_data());
    loss_array = l;
  }

  PassOutputs outputs;
  if (want_loss && reduce) outputs = want_grad ? PassOutputs::SumAndGrad : PassOutputs::Sum;
  else if (want_loss) outputs = want_grad ? PassOutputs::ElementwiseAndGrad : PassOutputs::Elementwise;
  else outputs = PassOutputs::Grad;

  double small_workspace[8];
  std::vector<double> workspace;
  if (want_loss && reduce) {
    const std::int64_t chunks = num_chunks(n);
    if (chunks > 8) workspace.resize(static_cast<std::size_t>(chunks));
    p.chunk_sums = chunks > 8 ? workspace.data() : small_workspace;
  }

  const LossPassResult result = run_releasing_gil_if_large(n, [&] { return run_loss_pass(op, outputs, p); });
  if (result.input_out_of_range) {
    throw py::value_error("input must hold probabilities in [0, 1] (binary_cross_entropy); "
                          "found values outside; use binary_cross_entropy_with_logits for logits");
  }

  py::object loss;
  if (want_loss) {
    if (!reduce) loss = loss_array;
    else if (reduction == Reduction::Mean) loss = scalar_of(result.sum / static_cast<double>(n), dtype);
    else loss = scalar_of(result.sum, dtype);
  }
  if (want_loss && want_grad) return py::make_tuple(loss, grad);
  if (want_loss) return loss;
  return grad;
}

py::object loss_pass(int op_code, int reduction_code, bool want_loss, bool want_grad, py::handle input_obj,
                     py::handle target_obj, py::handle weight_obj, py::handle pos_weight_obj,
                     double grad_output, py::handle out) {
  if (op_code < 0 || op_code > 2) throw py::value_error("unknown loss op");
  if (reduction_code < 0 || reduction_code > 2) throw py::value_error("unknown reduction code");
  py::array input = require_array(input_obj, "input");
  py::array target = require_array(target_obj, "target");
  const Dtype dtype = dtype_of(input, "input");
  require_same_dtype(dtype, target, "target", "input");
  require_same_shape(target, "target", input, "input");
  input = contiguous(input);
  target = contiguous(target);
  // An array grad_output reaches the kernels as (a factor of) the weight.
  const Weight weight = weight_of(weight_obj, dtype, "weight (or grad_output)", input.size());
  const Weight pos_weight = weight_of(pos_weight_obj, dtype, "pos_weight", input.size());
  const auto op = static_cast<LossOp>(op_code);
  const auto reduction = static_cast<Reduction>(reduction_code);
  if (dtype == Dtype::Float32) {
    return loss_pass_typed<float>(op, reduction, want_loss, want_grad, input, target, weight, pos_weight,
                                  grad_output, out, dtype);
  }
  return loss_pass_typed<double>(op, reduction, want_loss, want_grad, input, target, weight, pos_weight,
                                 grad_output, out, dtype);
}

// ---- sigmoid ---------------------------------------------------------------------------------
py::array sigmoid_entry(py::handle x_obj, py::handle out_obj) {
  py::array x = contiguous(require_array(x_obj, "input"));
  const Dtype dtype = dtype_of(x, "input");
  py::array out = output_like(out_obj, x, dtype, "input");
  require_no_partial_overlap(out, x, "input");
  const std::int64_t n = x.size();
  run_releasing_gil_if_large(n, [&] {
    if (dtype == Dtype::Float32) {
      sigmoid(n, static_cast<const float*>(x.data()), static_cast<float*>(out.mutable_data()));
    } else {
      sigmoid(n, static_cast<const double*>(x.data()), static_cast<double*>(out.mutable_data()));
    }
  });
  return out;
}

py::array sigmoid_backward_entry(py::handle grad_obj, py::handle output_obj, py::handle out_obj) {
  py::array grad = require_array(grad_obj, "grad_output");
  py::array output = require_array(output_obj, "output");
  const Dtype dtype = dtype_of(grad, "grad_output");
  require_same_dtype(dtype, output, "output", "grad_output");
  require_same_shape(output, "output", grad, "grad_output");
  grad = contiguous(grad);
  output = contiguous(output);
  py::array out = output_like(out_obj, grad, dtype, "grad_output");
  require_no_partial_overlap(out, grad, "grad_output");
  require_no_partial_overlap(out, output, "output");
  const std::int64_t n = grad.size();
  run_releasing_gil_if_large(n, [&] {
    if (dtype == Dtype::Float32) {
      sigmoid_backward(n, static_cast<const float*>(grad.data()), static_cast<const float*>(output.data()),
                       static_cast<float*>(out.mutable_data()));
    } else {
      sigmoid_backward(n, static_cast<const double*>(grad.data()), static_cast<const double*>(output.data()),
                       static_cast<double*>(out.mutable_data()));
    }
  });
  return out;
}

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
  m.def("loss_pass", &loss_pass, py::arg("op"), py::arg("reduction"), py::arg("want_loss"),
        py::arg("want_grad"), py::arg("input"), py::arg("target"), py::arg("weight"),
        py::arg("pos_weight"), py::arg("grad_output"), py::arg("out"));
  m.def("sigmoid", &sigmoid_entry, py::arg("input"), py::arg("out"));
  m.def("sigmoid_backward", &sigmoid_backward_entry, py::arg("grad_output"), py::arg("output"),
        py::arg("out"));
  m.def("build_info", &build_info);
  m.def("stream_read", &stream_read, py::arg("array"),
        "Sum a float32 array with all threads: a read-bandwidth probe for bench/.");
  m.def("stream_copy", &stream_copy, py::arg("src"), py::arg("dst"),
        "Copy float32 src into dst with all threads: a copy-bandwidth probe for bench/.");
  register_training(m);
}
