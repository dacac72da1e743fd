// The multi-class entries of fastloss._cpu (softmax family, cross-entropy, tanh and relu),
// defined in csrc/multiclass_module.cpp and registered by module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace fastloss {
void register_multiclass(pybind11::module_& m);
}
