// Optimizer updates bound into fastloss._cpu (csrc/optim.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace fastloss {
void register_optim(pybind11::module_& m);
}
