// The kernels of fastloss.nn and fastloss.optim, bound into fastloss._cpu.
//
// A small network's training step is made of many small operations: at batch 32 a NumPy call
// on a (32, 64) array costs 3-5 us on the project's machines, mostly overhead. These kernels
// merge the element-wise ones around each matrix product (bias and ReLU forward; ReLU
// derivative and bias gradient backward) and the whole SGD update into single calls, and run
// the products themselves: plain loops for a layer of at most four outputs, csrc/dense.cpp's
// AVX-512 kernel for wider ones (where the CPU has none, those stay with NumPy's BLAS).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "arrays.h"
#include "dense.h"
#include "isa.h"
#include "training.h"

namespace py = pybind11;

namespace fastloss {
namespace {

using arrays::overlaps;

// Runs body(T{}) with T the element type of a (float32 or float64, checked before).
template <typename Body>
void with_element_type(const py::array& a, Body&& body) {
  arrays::with_element_type(arrays::float_dtype(a), body);
}

// Typed data pointers; nullptr for an optional array that was not given.
template <typename T>
const T* read_ptr(const py::array& a, bool given = true) {
  return given ? static_cast<const T*>(a.data()) : nullptr;
}
template <typename T>
T* write_ptr(py::array& a, bool given = true) {
  return given ? static_cast<T*>(a.mutable_data()) : nullptr;
}

// An argument's name for error messages: "params[3].grad". Built only when an error is raised,
// so the checks cost a few pointer tests per array on the hot path.
struct ArgName {
  const char* base;
  long index;  // -1: no index
  const char* field;
  std::string str() const {
    return std::string(base) + (index >= 0 ? "[" + std::to_string(index) + "]" : "") + field;
  }
};

// The arguments come from fastloss.nn and fastloss.optim, which pass their own buffers: these
// checks guard the memory, with plain messages for a caller that got it wrong.
py::array checked(py::handle obj, const ArgName& name, const py::array* like, bool written) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error(name.str() + " must be a numpy.ndarray");
  auto a = py::reinterpret_borrow<py::array>(obj);
  const arrays::Dtype dtype = arrays::float_dtype(a);
  if (dtype == arrays::Dtype::Other) {
    throw py::type_error(name.str() + " must be float32 or float64 (native byte order), got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  if (!arrays::contiguous_and_aligned(a)) throw py::value_error(name.str() + " must be C-contiguous and aligned");
  if (written && !a.writeable()) throw py::value_error(name.str() + " is read-only");
  if (like != nullptr && dtype != arrays::float_dtype(*like)) {
    throw py::type_error(name.str() + " has dtype " + py::str(a.dtype()).cast<std::string>() + ", expected " +
                         py::str(like->dtype()).cast<std::string>());
  }
  return a;
}

py::array checked(py::handle obj, const char* name, const py::array* like, bool written) {
  return checked(obj, ArgName{name, -1, ""}, like, written);
}

void require_shape(const py::array& a, const std::string& name, std::initializer_list<py::ssize_t> shape) {
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t d = 0;
  for (const py::ssize_t extent : shape) {
    if (!same) break;
    same = a.shape(d++) == extent;
  }
  if (!same) {
    std::string wanted = "(";
    for (const py::ssize_t extent : shape) wanted += std::to_string(extent) + ", ";
    wanted = wanted.substr(0, wanted.size() - 2) + (shape.size() == 1 ? ",)" : ")");
    throw py::value_error(name + " has shape " + py::str(a.attr("shape")).cast<std::string>() + ", expected " +
                          wanted);
  }
}

// ---- SGD ------------------------------------------------------------------------------------
struct SgdSettings {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, first_step;
};

// One loop per combination of options, so each is a plain vectorisable loop. Operation order
// is torch.optim.SGD's: g = grad + wd*p; buf = m*buf + (1-d)*g; g = g + m*buf or buf; p -= lr*g.
template <typename T, bool kDecay, bool kMomentum, bool kNesterov, bool kFirst>
void sgd_loop(std::int64_t n, T* __restrict param, const T* __restrict grad, T* __restrict buffer,
              const SgdSettings& s) {
  const T lr = static_cast<T>(s.lr), momentum = static_cast<T>(s.momentum);
  const T keep = static_cast<T>(1.0 - s.dampening), weight_decay = static_cast<T>(s.weight_decay);
  for (std::int64_t i = 0; i < n; ++i) {
    T step = grad[i];
    if (kDecay) step = step + weight_decay * param[i];
    if (kMomentum) {
      const T b = kFirst ? step : momentum * buffer[i] + keep * step;
      buffer[i] = b;
      step = kNesterov ? step + momentum * b : b;
#ifdef FASTLOSS_PLANTED_FAULT_SGD_NESTEROV_IGNORED
      step = b;
#endif
    }
    param[i] = param[i] - lr * step;
  }
}

template <typename T, bool kDecay>
void sgd_update(std::int64_t n, T* param, const T* grad, T* buffer, const SgdSettings& s) {
  if (s.momentum == 0.0) return sgd_loop<T, kDecay, false, false, false>(n, param, grad, buffer, s);
  if (s.first_step) {
    if (s.nesterov) return sgd_loop<T, kDecay, true, true, true>(n, param, grad, buffer, s);
    return sgd_loop<T, kDecay, true, false, true>(n, param, grad, buffer, s);
  }
  if (s.nesterov) return sgd_loop<T, kDecay, true, true, false>(n, param, grad, buffer, s);
  sgd_loop<T, kDecay, true, false, false>(n, param, grad, buffer, s);
}

template <typename T>
void sgd_dispatch(std::int64_t n, T* param, const T* grad, T* buffer, const SgdSettings& s) {
  if (s.weight_decay != 0.0) return sgd_update<T, true>(n, param, grad, buffer, s);
  sgd_update<T, false>(n, param, grad, buffer, s);
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
    const long index = static_cast<long>(i);
    const ArgName data_name{"params", index, ".data"}, grad_name{"params", index, ".grad"};
    const py::object parameter = params[i];
    py::array param = checked(parameter.attr("data"), data_name, nullptr, true);
    py::array grad = checked(parameter.attr("grad"), grad_name, &param, false);
    if (grad.size() != param.size() || grad.ndim() != param.ndim()) {
      throw py::value_error(grad_name.str() + " has another shape than " + data_name.str());
    }
    py::array buffer = param;
    if (use_momentum) {
      buffer = checked(buffers[i], ArgName{"momentum_buffers", index, ""}, &param, true);
      if (buffer.size() != param.size()) throw py::value_error("momentum buffer size differs from its parameter");
      if (overlaps(buffer, param) || overlaps(buffer, grad)) {
        throw py::value_error("a momentum buffer shares memory with its parameter");
      }
    }
    if (overlaps(grad, param)) throw py::value_error(grad_name.str() + " shares memory with " + data_name.str());
    const std::int64_t n = param.size();
    with_element_type(param, [&](auto zero) {
      using T = decltype(zero);
      sgd_dispatch(n, write_ptr<T>(param), read_ptr<T>(grad), write_ptr<T>(buffer, use_momentum), settings);
    });
  }
}

// ---- dense layer: bias and ReLU around the matrix product ------------------------------------
template <typename T>
void bias_relu_forward(std::int64_t rows, std::int64_t columns, T* __restrict output, const T* __restrict bias,
                       bool relu) {
  for (std::int64_t r = 0; r < rows; ++r) {
    T* row = output + r * columns;
    if (bias != nullptr) {
      for (std::int64_t c = 0; c < columns; ++c) row[c] = row[c] + bias[c];
    }
    if (relu) {
      // As numpy.maximum(x, 0): NaN stays NaN.
      for (std::int64_t c = 0; c < columns; ++c) row[c] = row[c] < T(0) ? T(0) : row[c];
    }
  }
}

// grad_input = grad_output * relu'(output), written as sign(output) * grad_output like the
// unfused ReLU layer (0 where the output is 0, NaN where it is NaN); bias_grad = column sums.
template <typename T>
void bias_relu_backward(std::int64_t rows, std::int64_t columns, const T* __restrict grad_output,
                        const T* __restrict output, T* __restrict grad_input, T* __restrict bias_grad) {
  const T* grad = grad_output;
  if (output != nullptr) {
    for (std::int64_t i = 0; i < rows * columns; ++i) {
      const T y = output[i];
      const T sign = y > T(0) ? T(1) : y;  // y is 0 or NaN otherwise (a ReLU output)
      grad_input[i] = sign * grad_output[i];
    }
    grad = grad_input;
  }
  if (bias_grad != nullptr) {
    // Row by row, in order: the same sums as numpy.add.reduce(grad, axis=0).
    for (std::int64_t c = 0; c < columns; ++c) bias_grad[c] = grad[c];
    for (std::int64_t r = 1; r < rows; ++r) {
      const T* row = grad + r * columns;
      for (std::int64_t c = 0; c < columns; ++c) bias_grad[c] = bias_grad[c] + row[c];
    }
  }
}

void dense_bias_relu(py::handle output_obj, py::handle bias_obj, bool relu) {
  py::array output = checked(output_obj, "output", nullptr, true);
  if (output.ndim() != 2) throw py::value_error("output must be 2-D (batch, features)");
  const std::int64_t rows = output.shape(0), columns = output.shape(1);
  py::array bias;
  if (!bias_obj.is_none()) {
    bias = checked(bias_obj, "bias", &output, false);
    require_shape(bias, "bias", {columns});
    if (overlaps(bias, output)) throw py::value_error("bias shares memory with output");
  }
  const bool has_bias = !bias_obj.is_none();
  with_element_type(output, [&](auto zero) {
    using T = decltype(zero);
    bias_relu_forward(rows, columns, write_ptr<T>(output), read_ptr<T>(bias, has_bias), relu);
  });
}

// Returns the gradient at the pre-activation: grad_input (with ReLU) or grad_output itself.
py::array dense_bias_relu_backward(py::handle grad_output_obj, py::handle output_obj, py::handle grad_input_obj,
                                   py::handle bias_grad_obj) {
  py::array grad_output = checked(grad_output_obj, "grad_output", nullptr, false);
  if (grad_output.ndim() != 2) throw py::value_error("grad_output must be 2-D (batch, features)");
  const std::int64_t rows = grad_output.shape(0), columns = grad_output.shape(1);
  const bool relu = !output_obj.is_none();
  py::array output, grad_input, bias_grad;
  if (relu) {
    output = checked(output_obj, "output", &grad_output, false);
    require_shape(output, "output", {rows, columns});
    grad_input = checked(grad_input_obj, "grad_input", &grad_output, true);
    require_shape(grad_input, "grad_input", {rows, columns});
    if (overlaps(grad_input, output)) throw py::value_error("grad_input shares memory with output");
    const bool same = grad_input.data() == grad_output.data();
    if (!same && overlaps(grad_input, grad_output)) {
      throw py::value_error("grad_input partly overlaps grad_output");
    }
  }
  const bool has_bias = !bias_grad_obj.is_none();
  if (has_bias) {
    bias_grad = checked(bias_grad_obj, "bias_grad", &grad_output, true);
    require_shape(bias_grad, "bias_grad", {columns});
    if (overlaps(bias_grad, grad_output) || (relu && (overlaps(bias_grad, grad_input) || overlaps(bias_grad, output)))) {
      throw py::value_error("bias_grad shares memory with another argument");
    }
  }
  with_element_type(grad_output, [&](auto zero) {
    using T = decltype(zero);
    bias_relu_backward(rows, columns, read_ptr<T>(grad_output), read_ptr<T>(output, relu),
                       write_ptr<T>(grad_input, relu), write_ptr<T>(bias_grad, has_bias));
  });
  return relu ? grad_input : grad_output;
}

// ---- narrow dense layers: the products themselves -------------------------------------------
// BLAS costs ~4-5 us a call on a (32, 64) x (64, 1) product, nearly all of it overhead; an
// output layer of one or a few units is cheaper as plain loops. Forward sums in 8 lanes (a
// vectorisable order), backward accumulates over the batch in order.
constexpr std::int64_t kNarrowMaxOutputs = 4;

template <typename T>
void narrow_forward(std::int64_t batch, std::int64_t in, std::int64_t out, const T* __restrict input,
                    const T* __restrict weight, const T* __restrict bias, T* __restrict output, bool relu) {
  for (std::int64_t b = 0; b < batch; ++b) {
    const T* x = input + b * in;
    for (std::int64_t o = 0; o < out; ++o) {
      const T* w = weight + o * in;
      T lanes[8] = {};
      std::int64_t i = 0;
      for (; i + 8 <= in; i += 8) {
        for (int l = 0; l < 8; ++l) lanes[l] += x[i + l] * w[i + l];
      }
      T sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
      for (; i < in; ++i) sum += x[i] * w[i];
      if (bias != nullptr) sum += bias[o];
      output[b * out + o] = relu && sum < T(0) ? T(0) : sum;
    }
  }
}

template <typename T>
void narrow_backward(std::int64_t batch, std::int64_t in, std::int64_t out, const T* __restrict grad,
                     const T* __restrict input, const T* __restrict weight, T* __restrict weight_grad,
                     T* __restrict grad_input) {
  for (std::int64_t o = 0; o < out; ++o) {
    T* dw = weight_grad + o * in;
    for (std::int64_t i = 0; i < in; ++i) dw[i] = T(0);
    for (std::int64_t b = 0; b < batch; ++b) {
      const T g = grad[b * out + o];
      const T* x = input + b * in;
      for (std::int64_t i = 0; i < in; ++i) dw[i] += g * x[i];
    }
  }
  if (grad_input == nullptr) return;
  for (std::int64_t b = 0; b < batch; ++b) {
    T* dx = grad_input + b * in;
    for (std::int64_t i = 0; i < in; ++i) dx[i] = T(0);
    for (std::int64_t o = 0; o < out; ++o) {
      const T g = grad[b * out + o];
      const T* w = weight + o * in;
      for (std::int64_t i = 0; i < in; ++i) dx[i] += g * w[i];
    }
  }
}

void require_distinct(const py::array& written, const char* written_name, std::initializer_list<const py::array*> others) {
  for (const py::array* other : others) {
    if (other != nullptr && overlaps(written, *other)) {
      throw py::value_error(std::string(written_name) + " shares memory with another argument");
    }
  }
}

// The dense-layer products of the build the module chose (isa.h); false where it has none.
template <typename T>
bool product(const Product<T>& p) {
  switch (chosen_isa()) {
#if defined(__x86_64__)
#if !defined(FASTLOSS_WITHOUT_X86_64_V4)
    case Isa::X86_64_V4: return x86_64_v4::dense_product(p);
#endif
    case Isa::X86_64_V3: return x86_64_v3::dense_product(p);
#endif
    default: return baseline::dense_product(p);
  }
}

template <typename T>
bool product_bt(std::int64_t m, std::int64_t n, std::int64_t k, const T* a, const T* b, T* c) {
  switch (chosen_isa()) {
#if defined(__x86_64__)
#if !defined(FASTLOSS_WITHOUT_X86_64_V4)
    case Isa::X86_64_V4: return x86_64_v4::dense_product_bt(m, n, k, a, b, c);
#endif
    case Isa::X86_64_V3: return x86_64_v3::dense_product_bt(m, n, k, a, b, c);
#endif
    default: return baseline::dense_product_bt(m, n, k, a, b, c);
  }
}

// output = relu?(input @ weight.T + bias) in one call: True; False, with nothing written, for a
// layer wider than kNarrowMaxOutputs where this CPU's build has no product kernel.
bool dense_forward(py::handle input_obj, py::handle weight_obj, py::handle bias_obj, py::handle output_obj,
                   bool relu) {
  py::array weight = checked(weight_obj, "weight", nullptr, false);
  if (weight.ndim() != 2) throw py::value_error("weight must be 2-D (out_features, in_features)");
  const std::int64_t out = weight.shape(0), in = weight.shape(1);
  py::array input = checked(input_obj, "input", &weight, false);
  if (input.ndim() != 2 || input.shape(1) != in) {
    throw py::value_error("input has shape " + py::str(input.attr("shape")).cast<std::string>() +
                          ", expected (batch, " + std::to_string(in) + ")");
  }
  const std::int64_t batch = input.shape(0);
  py::array output = checked(output_obj, "output", &weight, true);
  require_shape(output, "output", {batch, out});
  const bool has_bias = !bias_obj.is_none();
  py::array bias;
  if (has_bias) {
    bias = checked(bias_obj, "bias", &weight, false);
    require_shape(bias, "bias", {out});
  }
  require_distinct(output, "output", {&input, &weight, has_bias ? &bias : nullptr});
  bool done = false;
  with_element_type(weight, [&](auto zero) {
    using T = decltype(zero);
    const T* b = read_ptr<T>(bias, has_bias);
    if (out <= kNarrowMaxOutputs) {
      narrow_forward(batch, in, out, read_ptr<T>(input), read_ptr<T>(weight), b, write_ptr<T>(output), relu);
      done = true;
    } else if (product_bt(batch, out, in, read_ptr<T>(input), read_ptr<T>(weight), write_ptr<T>(output))) {
      bias_relu_forward(batch, out, write_ptr<T>(output), b, relu);
      done = true;
    }
  });
  return done;
}

// weight_grad = grad.T @ input; grad_input = grad @ weight (if not None). grad is the gradient
// at the pre-activation (after dense_bias_relu_backward). True; False, with nothing written,
// where a wide layer has no product kernel on this CPU (as dense_forward).
bool dense_backward(py::handle grad_obj, py::handle input_obj, py::handle weight_obj, py::handle weight_grad_obj,
                    py::handle grad_input_obj) {
  py::array weight = checked(weight_obj, "weight", nullptr, false);
  if (weight.ndim() != 2) throw py::value_error("weight must be 2-D (out_features, in_features)");
  const std::int64_t out = weight.shape(0), in = weight.shape(1);
  py::array input = checked(input_obj, "input", &weight, false);
  if (input.ndim() != 2 || input.shape(1) != in) throw py::value_error("input does not match weight");
  const std::int64_t batch = input.shape(0);
  py::array grad = checked(grad_obj, "grad_output", &weight, false);
  require_shape(grad, "grad_output", {batch, out});
  py::array weight_grad = checked(weight_grad_obj, "weight_grad", &weight, true);
  require_shape(weight_grad, "weight_grad", {out, in});
  require_distinct(weight_grad, "weight_grad", {&input, &weight, &grad});
  const bool want_input_grad = !grad_input_obj.is_none();
  py::array grad_input;
  if (want_input_grad) {
    grad_input = checked(grad_input_obj, "grad_input", &weight, true);
    require_shape(grad_input, "grad_input", {batch, in});
    require_distinct(grad_input, "grad_input", {&input, &weight, &grad, &weight_grad});
  }
  bool done = false;
  with_element_type(weight, [&](auto zero) {
    using T = decltype(zero);
    const T* g = read_ptr<T>(grad);
    if (out <= kNarrowMaxOutputs) {
      narrow_backward(batch, in, out, g, read_ptr<T>(input), read_ptr<T>(weight), write_ptr<T>(weight_grad),
                      write_ptr<T>(grad_input, want_input_grad));
      done = true;
      return;
    }
    // (out x batch, grad read transposed) times (batch x in)
    if (!product(Product<T>{out, in, batch, g, 1, out, read_ptr<T>(input), in, write_ptr<T>(weight_grad), in})) {
      return;
    }
    done = true;
    if (!want_input_grad) return;
    // (batch x out) times (out x in)
    product(Product<T>{batch, in, out, g, out, 1, read_ptr<T>(weight), in, write_ptr<T>(grad_input), in});
  });
  return done;
}

}  // namespace

void register_training(py::module_& m) {
  m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("momentum_buffers"), py::arg("lr"),
        py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
        py::arg("first_step"),
        "One torch.optim.SGD step over a list of Parameters (NumPy .data and .grad), in place.");
  m.def("dense_bias_relu", &dense_bias_relu, py::arg("output"), py::arg("bias"), py::arg("relu"),
        "In place: output += bias (if not None), then max(output, 0) if relu.");
  m.def("dense_bias_relu_backward", &dense_bias_relu_backward, py::arg("grad_output"), py::arg("output"),
        py::arg("grad_input"), py::arg("bias_grad"),
        "With output (a ReLU output): grad_input = grad_output * (output > 0); bias_grad = column sums of "
        "the gradient at the pre-activation, which is returned.");
  m.def("dense_forward", &dense_forward, py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("output"),
        py::arg("relu"),
        "output = relu?(input @ weight.T + bias); False (nothing written) where a layer of more than 4 outputs "
        "has no product kernel on this CPU.");
  m.def("dense_backward", &dense_backward, py::arg("grad_output"), py::arg("input"), py::arg("weight"),
        py::arg("weight_grad"), py::arg("grad_input"),
        "weight_grad = grad_output.T @ input; grad_input = grad_output @ weight (if not None); False as "
        "dense_forward.");
}

}  // namespace fastloss
