// fastloss._cpu.sgd_step: the SGD update of every parameter of a model in one call.
//
// A small network has a handful of small parameters; updating each with NumPy expressions
// costs several calls (~1 us each) per parameter, which is most of a training step at batch 32.
// Here the whole update is one pass over each parameter, in the parameter's dtype, with the
// same operation order as torch.optim.SGD (so float64 training matches it to rounding).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "optim.h"

namespace py = pybind11;

namespace fastloss {
namespace {

struct SgdSettings {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, first_step;
};

template <typename T>
void sgd_update(std::int64_t n, T* param, const T* grad, T* momentum_buffer, const SgdSettings& s) {
  const T lr = static_cast<T>(s.lr), momentum = static_cast<T>(s.momentum);
  const T keep = static_cast<T>(1.0 - s.dampening), weight_decay = static_cast<T>(s.weight_decay);
  const bool use_momentum = s.momentum != 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    T step = grad[i];
    if (s.weight_decay != 0.0) step = step + weight_decay * param[i];
    if (use_momentum) {
      const T buffer = s.first_step ? step : momentum * momentum_buffer[i] + keep * step;
      momentum_buffer[i] = buffer;
      step = s.nesterov ? step + momentum * buffer : buffer;
    }
    param[i] = param[i] - lr * step;
  }
}

constexpr int kContiguousAndAligned =
    py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;

py::array checked(py::handle obj, const char* role, std::size_t index, const char* field,
                  const py::array* like, bool written) {
  const std::string name = std::string(role) + "[" + std::to_string(index) + "]" + field;
  if (!py::isinstance<py::array>(obj)) throw py::type_error(name + " must be a numpy.ndarray");
  auto a = py::reinterpret_borrow<py::array>(obj);
  const int num = a.dtype().num();
  if (num != py::detail::npy_api::NPY_FLOAT_ && num != py::detail::npy_api::NPY_DOUBLE_) {
    throw py::type_error(name + " must be float32 or float64");
  }
  if ((a.flags() & kContiguousAndAligned) != kContiguousAndAligned) {
    throw py::value_error(name + " must be C-contiguous and aligned");
  }
  if (written && !a.writeable()) throw py::value_error(name + " is read-only");
  if (like != nullptr) {
    if (num != like->dtype().num()) throw py::type_error(name + " has another dtype than its parameter's data");
    bool same_shape = a.ndim() == like->ndim();
    for (py::ssize_t d = 0; same_shape && d < a.ndim(); ++d) same_shape = a.shape(d) == like->shape(d);
    if (!same_shape) throw py::value_error(name + " has another shape than its parameter's data");
    const char* p = static_cast<const char*>(a.data());
    const char* q = static_cast<const char*>(like->data());
    if (p < q + like->nbytes() && q < p + a.nbytes()) {
      throw py::value_error(name + " shares memory with its parameter's data");
    }
  }
  return a;
}

// params: objects with .data and .grad arrays (fastloss.nn.Parameter), read here so the Python
// side does not build lists every step.
void sgd_step(const py::list& params, py::object momentum_buffers, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool first_step) {
  const SgdSettings settings{lr, momentum, dampening, weight_decay, nesterov, first_step};
  const bool use_momentum = momentum != 0.0;
  py::list buffers;
  if (use_momentum) {
    if (!py::isinstance<py::list>(momentum_buffers)) {
      throw py::type_error("momentum_buffers must be a list when momentum != 0");
    }
    buffers = momentum_buffers.cast<py::list>();
    if (buffers.size() != params.size()) throw py::value_error("params and momentum_buffers differ in length");
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    const py::object parameter = params[i];
    py::array param = checked(parameter.attr("data"), "params", i, ".data", nullptr, true);
    py::array grad = checked(parameter.attr("grad"), "params", i, ".grad", &param, false);
    py::array buffer = use_momentum ? checked(buffers[i], "momentum_buffers", i, "", &param, true) : param;
    const std::int64_t n = param.size();
    if (param.dtype().num() == py::detail::npy_api::NPY_FLOAT_) {
      sgd_update(n, static_cast<float*>(param.mutable_data()), static_cast<const float*>(grad.data()),
                 use_momentum ? static_cast<float*>(buffer.mutable_data()) : nullptr, settings);
    } else {
      sgd_update(n, static_cast<double*>(param.mutable_data()), static_cast<const double*>(grad.data()),
                 use_momentum ? static_cast<double*>(buffer.mutable_data()) : nullptr, settings);
    }
  }
}

}  // namespace

void register_optim(py::module_& m) {
  m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("momentum_buffers"),
        py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
        py::arg("nesterov"), py::arg("first_step"),
        "One torch.optim.SGD step over a list of Parameters (NumPy .data and .grad), in place.");
}

}  // namespace fastloss
