"""Writes PyTorch's own test samples, taken once from its OpInfo and ModuleInfo databases in
torch 2.13: torch_multiclass_samples.json for the multi-class ops (OpInfo
``nn.functional.cross_entropy``, ``softmax``, ``log_softmax``; ModuleInfo
``nn.CrossEntropyLoss``), for tests/test_multiclass_torch.py, and torch_binary_samples.json for
the ops that take 16-bit storage (OpInfo ``nn.functional.mse_loss``,
``nn.functional.binary_cross_entropy``, ``nn.functional.binary_cross_entropy_with_logits``,
``sigmoid``, drawn in float32), for tests/test_torch_half.py.

Why a file: importing ``torch.testing._internal`` takes ~5-10 s and needs ``expecttest`` (not
a test dependency); the samples are fixed inputs (PyTorch seeds its sample generators), so
they are stored once, as values. Regenerate after a torch upgrade:

    pip install expecttest && python tests/data/make_torch_samples.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import module_db

OPS = ("nn.functional.cross_entropy", "softmax", "log_softmax", "nn.functional.softmax",
       "nn.functional.log_softmax")
HALF_OPS = ("nn.functional.mse_loss", "nn.functional.binary_cross_entropy",
            "nn.functional.binary_cross_entropy_with_logits", "sigmoid")


def _short(values):
    """Floats to 7 significant digits (the samples are inputs: their exact bits do not matter,
    and the file stays at a few hundred kB)."""
    if isinstance(values, list):
        return [_short(v) for v in values]
    return float(f"{values:.7g}") if isinstance(values, float) else values


def encode(value):
    if isinstance(value, torch.Tensor):
        return {"tensor": _short(value.detach().tolist()), "dtype": str(value.dtype).split(".")[1],
                "shape": list(value.shape)}
    if isinstance(value, torch.dtype):
        return {"torch_dtype": str(value).split(".")[1]}
    return value


def op_samples(names, dtype):
    samples = []
    for op in op_db:
        if op.name not in names:
            continue
        for sample in op.sample_inputs("cpu", dtype, requires_grad=True):
            samples.append({"source": f"OpInfo {op.name} {op.variant_test_name}".strip(),
                            "function": op.name.split(".")[-1],
                            "input": encode(sample.input),
                            "args": [encode(a) for a in sample.args],
                            "kwargs": {k: encode(v) for k, v in sample.kwargs.items()}})
    return samples


def write(name, samples):
    path = Path(__file__).with_name(name)
    path.write_text(json.dumps({"torch": torch.__version__, "samples": samples}) + "\n")
    print(f"{len(samples)} samples written to {path}")


def main():
    torch.manual_seed(0)
    write("torch_binary_samples.json", op_samples(HALF_OPS, torch.float32))
    torch.manual_seed(0)
    samples = op_samples(OPS, torch.float64)
    (info,) = [m for m in module_db if m.module_cls.__name__ == "CrossEntropyLoss"]
    for sample in info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                          requires_grad=True, training=True):
        samples.append({"source": "ModuleInfo nn.CrossEntropyLoss",
                        "function": "CrossEntropyLoss",
                        "constructor": {k: encode(v)
                                        for k, v in sample.constructor_input.kwargs.items()},
                        "args": [encode(a) for a in sample.forward_input.args],
                        "kwargs": {k: encode(v) for k, v in sample.forward_input.kwargs.items()}})
    write("torch_multiclass_samples.json", samples)


if __name__ == "__main__":
    main()
