// The kernels of the training layer (SGD, dense-layer bias and ReLU), bound into
// fastloss._cpu by csrc/training.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace fastloss {
void register_training(pybind11::module_& m);
}
