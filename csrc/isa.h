// Which build of the kernels this process runs: the widest instruction set the CPU has, capped
// by FASTLOSS_ISA (baseline or x86_64_v3; the tests use it to check every build on one
// machine; an unknown value caps nothing). One choice for every kernel family, made once.
// FASTLOSS_WITHOUT_X86_64_V4 (CMake option, CI's extra builds only): that build is not linked in.
#pragma once

#include <cstdlib>
#include <string>

namespace fastloss {

enum class Isa { Baseline, X86_64_V3, X86_64_V4 };

inline Isa chosen_isa() {
  static const Isa chosen = [] {
    const char* forced = std::getenv("FASTLOSS_ISA");
    const std::string cap = forced != nullptr ? forced : "";
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool v3_allowed = cap != "baseline";
    const bool v4_allowed = v3_allowed && cap != "x86_64_v3";
#if !defined(FASTLOSS_WITHOUT_X86_64_V4)
    if (v4_allowed && __builtin_cpu_supports("x86-64-v4")) return Isa::X86_64_V4;
#else
    (void)v4_allowed;
#endif
    if (v3_allowed && __builtin_cpu_supports("x86-64-v3")) return Isa::X86_64_V3;
#endif
    (void)cap;
    return Isa::Baseline;
  }();
  return chosen;
}

}  // namespace fastloss
