"""The op and pass-output codes: defined once per language (csrc/include/fastloss/codes.h for
the C++ module and the CUDA kernels, fastloss/_codes.py for Python), and all three agree."""

from __future__ import annotations

import re

import fastloss._cpu
from fastloss import _codes, _cuda

HEADER_NAMES = {
    "LossOp": {"SquaredError": "SQUARED_ERROR", "BinaryCrossEntropy": "BINARY_CROSS_ENTROPY",
               "BinaryCrossEntropyWithLogits": "BINARY_CROSS_ENTROPY_WITH_LOGITS"},
    "PassOutputs": {"Sum": "SUM", "SumAndGrad": "SUM_AND_GRAD", "Elementwise": "ELEMENTWISE",
                    "ElementwiseAndGrad": "ELEMENTWISE_AND_GRAD", "Grad": "GRAD"},
    "RowOp": {"Softmax": "SOFTMAX", "LogSoftmax": "LOG_SOFTMAX",
              "SoftmaxBackward": "SOFTMAX_BACKWARD", "LogSoftmaxBackward": "LOG_SOFTMAX_BACKWARD"},
    "TargetKind": {"ClassIndex64": "CLASS_INDEX_64", "ClassIndex32": "CLASS_INDEX_32",
                   "Probabilities": "PROBABILITIES"},
    "Activation": {"Tanh": "TANH", "TanhBackward": "TANH_BACKWARD", "Relu": "RELU",
                   "ReluBackward": "RELU_BACKWARD"},
}
# each enum's tuple of every code in _codes and in the compiled module
ALL_CODES = {"LossOp": "LOSS_OPS", "PassOutputs": "PASS_OUTPUTS", "RowOp": "ROW_OPS",
             "TargetKind": "TARGET_KINDS", "Activation": "ACTIVATIONS"}


def _header_enums():
    text = (_cuda.include_dir() / "fastloss" / "codes.h").read_text()
    enums = {}
    for name, body in re.findall(r"enum class (\w+) : int \{(.*?)\};", text, flags=re.S):
        body = re.sub(r"//[^\n]*", "", body)
        enums[name] = {key: int(value) for key, value in re.findall(r"(\w+) = (\d+)", body)}
    return enums


def test_python_codes_are_the_headers():
    enums = _header_enums()
    assert set(enums) == set(HEADER_NAMES)
    for enum, names in HEADER_NAMES.items():
        assert set(enums[enum]) == set(names), enum
        for cpp_name, python_name in names.items():
            assert getattr(_codes, python_name) == enums[enum][cpp_name], (enum, cpp_name)
    for enum, all_codes in ALL_CODES.items():
        assert getattr(_codes, all_codes) == tuple(sorted(enums[enum].values())), enum


def test_the_compiled_module_has_the_same_codes():
    for all_codes in ALL_CODES.values():
        assert getattr(fastloss._cpu, all_codes) == getattr(_codes, all_codes), all_codes


def test_the_cuda_kernels_take_the_headers_codes():
    """losses.cu defines no codes of its own: it converts its template arguments to the
    header's enums, and the kernels the CUDA backend asks for are named by Python's codes."""
    source, options, names = _cuda.kernel_sources_and_options()
    assert '#include "fastloss/loss_pass.h"' in source  # which includes codes.h
    assert "static_cast<LossOp>(kOp)" in source and "static_cast<PassOutputs>(kOutputs)" in source
    assert not re.search(r"const int k(Sum|Grad|Elementwise)\w* = \d", source)
    passes = set()
    for name in names:
        match = re.fullmatch(r"fastloss::gpu::loss_pass<\w+, (\d), (\d), \w+>", name)
        if match:
            passes.add((int(match[1]), int(match[2])))
    assert passes == {(op, outputs) for op in _codes.LOSS_OPS for outputs in _codes.PASS_OUTPUTS}


def test_the_multiclass_cuda_kernels_take_the_headers_codes():
    source, _, names = _cuda.kernel_sources_and_options("multiclass.cu")
    for cast in ("static_cast<RowOp>(kOp)", "static_cast<TargetKind>(kTargetKind)",
                 "static_cast<Activation>(kOp)", "static_cast<PassOutputs>(kOutputs)"):
        assert cast in source, cast
    row_ops, kinds, activations = set(), set(), set()
    for name in names:
        if match := re.fullmatch(r"fastloss::gpu::row_pass<\w+, (\d), \d+>", name):
            row_ops.add(int(match[1]))
        if match := re.fullmatch(r"fastloss::gpu::cross_entropy<\w+, (\d), (\d), \d+>", name):
            kinds.add((int(match[1]), int(match[2])))
        if match := re.fullmatch(r"fastloss::gpu::activation<\w+, (\d)>", name):
            activations.add(int(match[1]))
    assert row_ops == set(_codes.ROW_OPS)
    assert kinds == {(o, k) for o in _codes.PASS_OUTPUTS for k in _codes.TARGET_KINDS}
    assert activations == set(_codes.ACTIVATIONS)
