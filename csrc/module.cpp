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

#include "arrays.h"
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

// The widest build this CPU runs. FASTLOSS_ISA=baseline (or x86_64_v3) caps it: the tests
// use it to check every build on one machine. An unknown value caps nothing.
KernelSet choose_kernels() {
  const char* forced = std::getenv("FASTLOSS_ISA");
  const std::string cap = forced != nullptr ? forced : "";
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool v3_allowed = cap != "baseline";
  const bool v4_allowed = v3_allowed && cap != "x86_64_v3";
  if (v4_allowed && __builtin_cpu_supports("x86-64-v4")) return FASTLOSS_KERNEL_SET(x86_64_v4);
  if (v3_allowed && __builtin_cpu_supports("x86-64-v3")) return FASTLOSS_KERNEL_SET(x86_64_v3);
#endif
  (void)cap;
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

// ---- the entries: run what is safe, hand the rest back ------------------------------------
// Each entry runs the kernel when its arguments are what the kernel needs (float32/float64 in
// native byte order, one dtype, the shapes, C-contiguous and aligned buffers, weights as 1-D
// periodic buffers, a writeable out that overlaps no argument but one it equals) and returns
// None otherwise. fastloss._dispatch calls here first for the common NumPy call, with no
// checks of its own; on None it validates the arguments itself, words the error, and prepares
// (copies, weight buffers) what it can.
using arrays::Dtype;

int numpy_type(Dtype d) { return d == Dtype::Float32 ? NPY_FLOAT : NPY_DOUBLE; }

py::array new_array(const py::array& like, Dtype dtype) {
  std::vector<npy_intp> shape(like.shape(), like.shape() + like.ndim());
  PyObject* a = PyArray_SimpleNew(like.ndim(), shape.data(), numpy_type(dtype));
  if (a == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(a);
}

py::object scalar_of(double value, Dtype dtype) {
  const float value_f32 = static_cast<float>(value);
  const void* data = dtype == Dtype::Float32 ? static_cast<const void*>(&value_f32) : &value;
  PyObject* s = PyArray_Scalar(const_cast<void*>(data), PyArray_DescrFromType(numpy_type(dtype)), nullptr);
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(s);
}

// Whether obj is an array the kernels may read as T[size()]: C-contiguous, aligned, of `dtype`.
bool readable(py::handle obj, Dtype dtype) {
  if (!py::isinstance<py::array>(obj)) return false;
  const auto a = py::reinterpret_borrow<py::array>(obj);
  return arrays::float_dtype(a) == dtype && arrays::contiguous_and_aligned(a);
}

py::array borrow(py::handle obj) { return py::reinterpret_borrow<py::array>(obj); }

// A weight prepared by the dispatch: None, or a non-empty 1-D buffer read with period size().
bool weight_buffer(py::handle obj, Dtype dtype) {
  return obj.is_none() || (readable(obj, dtype) && borrow(obj).ndim() == 1 && borrow(obj).size() > 0);
}

// A caller's out= to be written in `like`'s shape: it may equal one of `reads` (None ones are
// skipped) but not partly overlap any.
bool writable_output(py::handle obj, const py::array& like, Dtype dtype, std::initializer_list<py::handle> reads) {
  if (!readable(obj, dtype)) return false;
  const py::array out = borrow(obj);
  if (!out.writeable() || !arrays::same_shape(out, like)) return false;
  for (const py::handle read : reads) {
    if (!read.is_none() && arrays::partially_overlaps(out, borrow(read))) return false;
  }
  return true;
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

// Raised (a ValueError without a message) when binary_cross_entropy finds an input outside
// [0, 1]; the dispatch words it.
PyObject* probability_out_of_range = nullptr;

bool wants_sum(PassOutputs o) { return o == PassOutputs::Sum || o == PassOutputs::SumAndGrad; }
bool wants_elementwise(PassOutputs o) {
  return o == PassOutputs::Elementwise || o == PassOutputs::ElementwiseAndGrad;
}
bool wants_grad(PassOutputs o) {
  return o == PassOutputs::SumAndGrad || o == PassOutputs::ElementwiseAndGrad || o == PassOutputs::Grad;
}

// ---- the loss entry point ------------------------------------------------------------------
template <class T>
py::object loss_pass_typed(LossOp op, PassOutputs outputs, bool mean, const py::array& input,
                           const py::array& target, py::handle weight, py::handle pos_weight,
                           double grad_output, py::handle out, Dtype dtype) {
  const std::int64_t n = input.size();
  LossPass<T> p;
  p.n = n;
  p.input = static_cast<const T*>(input.data());
  p.target = static_cast<const T*>(target.data());
  if (!weight.is_none() || !pos_weight.is_none()) {
    p.weight = weight.is_none() ? ones_buffer<T>() : static_cast<const T*>(borrow(weight).data());
    p.weight_period = weight.is_none() ? kChunkSize : borrow(weight).size();
    p.pos_weight = pos_weight.is_none() ? ones_buffer<T>() : static_cast<const T*>(borrow(pos_weight).data());
    p.pos_weight_period = pos_weight.is_none() ? kChunkSize : borrow(pos_weight).size();
  }
  p.grad_scale = mean ? grad_output / static_cast<double>(n) : grad_output;
#ifdef FASTLOSS_PLANTED_FAULT_MEAN_GRAD_SCALE
  if (mean) p.grad_scale = grad_output / static_cast<double>(n + 1);
#endif
  py::object grad;
  if (wants_grad(outputs)) {
    // NumPy's allocation asks for huge pages (a fresh 400 MB array is written 3x faster)
    py::array g = out.is_none() ? new_array(input, dtype) : borrow(out);
    p.grad_out = static_cast<T*>(g.mutable_data());
    grad = std::move(g);
  }
  py::object loss;
  if (wants_elementwise(outputs)) {
    py::array l = new_array(input, dtype);
    p.loss_out = static_cast<T*>(l.mutable_data());
    loss = std::move(l);
  }
  double small_workspace[8];
  std::vector<double> workspace;
  if (wants_sum(outputs)) {
    const std::int64_t chunks = num_chunks(n);
    if (chunks > 8) workspace.resize(static_cast<std::size_t>(chunks));
    p.chunk_sums = chunks > 8 ? workspace.data() : small_workspace;
  }

  const LossPassResult result = run_releasing_gil_if_large(n, [&] { return run_loss_pass(op, outputs, p); });
  if (result.input_out_of_range) {
    PyErr_SetNone(probability_out_of_range);
    throw py::error_already_set();
  }

  if (wants_sum(outputs)) loss = scalar_of(mean ? result.sum / static_cast<double>(n) : result.sum, dtype);
  if (outputs == PassOutputs::Grad) return grad;
  if (wants_grad(outputs)) return py::make_tuple(loss, grad);
  return loss;
}

// One pass of `outputs` over (input, target): the loss (a NumPy scalar of the input's dtype
// for Sum*, divided by N when `mean`; an array for Elementwise*), the gradient (written to
// `out` or a new array; scaled by grad_output, / N when `mean`), or (loss, gradient).
py::object loss_pass(int op_code, int outputs_code, bool mean, py::handle input, py::handle target,
                     py::handle weight, py::handle pos_weight, double grad_output, py::handle out) {
  if (op_code < 0 || op_code > 2 || outputs_code < 0 || outputs_code > 4) return py::none();
  if (!py::isinstance<py::array>(input)) return py::none();
  const auto op = static_cast<LossOp>(op_code);
  const auto outputs = static_cast<PassOutputs>(outputs_code);
  const py::array input_array = borrow(input);
  const Dtype dtype = arrays::float_dtype(input_array);
  if (dtype == Dtype::Other || !readable(input, dtype) || !readable(target, dtype) ||
      !arrays::same_shape(input_array, borrow(target)) || !weight_buffer(weight, dtype) ||
      !weight_buffer(pos_weight, dtype)) {
    return py::none();
  }
  if (wants_grad(outputs) && !out.is_none() &&
      !writable_output(out, input_array, dtype, {input, target, weight, pos_weight})) {
    return py::none();
  }
  py::object result;
  arrays::with_element_type(dtype, [&](auto zero) {
    result = loss_pass_typed<decltype(zero)>(op, outputs, mean, input_array, borrow(target), weight, pos_weight,
                                             grad_output, out, dtype);
  });
  return result;
}

// ---- sigmoid ---------------------------------------------------------------------------------
py::object sigmoid_entry(py::handle x, py::handle out) {
  if (!py::isinstance<py::array>(x)) return py::none();
  const py::array x_array = borrow(x);
  const Dtype dtype = arrays::float_dtype(x_array);
  if (dtype == Dtype::Other || !readable(x, dtype) ||
      (!out.is_none() && !writable_output(out, x_array, dtype, {x}))) {
    return py::none();
  }
  py::array result = out.is_none() ? new_array(x_array, dtype) : borrow(out);
  const std::int64_t n = x_array.size();
  arrays::with_element_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    run_releasing_gil_if_large(n, [&] {
      sigmoid(n, static_cast<const T*>(x_array.data()), static_cast<T*>(result.mutable_data()));
    });
  });
  return std::move(result);
}

py::object sigmoid_backward_entry(py::handle grad, py::handle output, py::handle out) {
  if (!py::isinstance<py::array>(grad)) return py::none();
  const py::array grad_array = borrow(grad);
  const Dtype dtype = arrays::float_dtype(grad_array);
  if (dtype == Dtype::Other || !readable(grad, dtype) || !readable(output, dtype) ||
      !arrays::same_shape(grad_array, borrow(output)) ||
      (!out.is_none() && !writable_output(out, grad_array, dtype, {grad, output}))) {
    return py::none();
  }
  py::array result = out.is_none() ? new_array(grad_array, dtype) : borrow(out);
  const std::int64_t n = grad_array.size();
  arrays::with_element_type(dtype, [&](auto zero) {
    using T = decltype(zero);
    run_releasing_gil_if_large(n, [&] {
      sigmoid_backward(n, static_cast<const T*>(grad_array.data()), static_cast<const T*>(borrow(output).data()),
                       static_cast<T*>(result.mutable_data()));
    });
  });
  return std::move(result);
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
  // Never released: a CPython extension module stays loaded until the process exits.
  probability_out_of_range = PyErr_NewException("fastloss._cpu.ProbabilityOutOfRange", PyExc_ValueError, nullptr);
  if (probability_out_of_range == nullptr) throw py::error_already_set();
  m.attr("ProbabilityOutOfRange") = py::handle(probability_out_of_range);
  m.def("loss_pass", &loss_pass, py::arg("op"), py::arg("outputs"), py::arg("mean"), py::arg("input"),
        py::arg("target"), py::arg("weight"), py::arg("pos_weight"), py::arg("grad_output"), py::arg("out"));
  m.def("sigmoid", &sigmoid_entry, py::arg("input"), py::arg("out"));
  m.def("sigmoid_backward", &sigmoid_backward_entry, py::arg("grad_output"), py::arg("output"),
        py::arg("out"));
  m.attr("LOSS_OPS") = py::make_tuple(static_cast<int>(LossOp::SquaredError), static_cast<int>(LossOp::BinaryCrossEntropy),
                                      static_cast<int>(LossOp::BinaryCrossEntropyWithLogits));
  m.attr("PASS_OUTPUTS") = py::make_tuple(
      static_cast<int>(PassOutputs::Sum), static_cast<int>(PassOutputs::SumAndGrad),
      static_cast<int>(PassOutputs::Elementwise), static_cast<int>(PassOutputs::ElementwiseAndGrad),
      static_cast<int>(PassOutputs::Grad));
  m.def("build_info", &build_info);
  m.def("stream_read", &stream_read, py::arg("array"),
        "Sum a float32 array with all threads: a read-bandwidth probe for bench/.");
  m.def("stream_copy", &stream_copy, py::arg("src"), py::arg("dst"),
        "Copy float32 src into dst with all threads: a copy-bandwidth probe for bench/.");
  register_training(m);
}
