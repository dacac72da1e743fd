"""Instruction mix per 8 elements of the hot loops of the AVX-512 build's float32 kernels, read
from the built object with ``objdump -d`` (bench/NOTES.md quotes these counts).

    python bench/loop_mix.py [path/to/kernels.cpp.o] [-v]

The default object is the x86-64-v4 build's in build/. A kernel's hot loop is taken to be the
innermost backward jump whose body holds the most input conversions (``vcvtps2pd``); the vectors
per trip are those conversions over the kernel's inputs. "fp" counts what runs on the FP pipes
(arithmetic, conversions, shifts, compares, masked moves); logic, shuffles and plain moves are
apart, as they cost little or nothing beside them on Zen 5. -v lists the fp and shuffle
mnemonics.

The second line of each kernel splits that work the way a Zen 4 core runs 512-bit instructions
(bench/NOTES.md, "Issue 14's account per op on Zen 4"): group M (multiply-adds, multiplies,
divides, permutes, vscalefpd, vrcp14pd) and group A (the other fp and shuffle instructions),
each one instruction a cycle, a float32 <-> double conversion of 8 lanes taking two of A's; the
larger group over 8 is the fewest cycles per element the loop allows.
"""

from __future__ import annotations

import collections
import glob
import re
import subprocess
import sys

PASS = r"LossPassKernel<float, fastloss::elementwise::{op}, \(fastloss::PassOutputs\){outputs}, false>::chunk"
KERNELS = {
    "bce_logits": (PASS.format(op="BinaryCrossEntropyWithLogits", outputs=0), 2),
    "bce_logits_and_grad": (PASS.format(op="BinaryCrossEntropyWithLogits", outputs=1), 2),
    "bce": (PASS.format(op="BinaryCrossEntropy", outputs=0), 2),
    "bce_and_grad": (PASS.format(op="BinaryCrossEntropy", outputs=1), 2),
    "sigmoid": (r"map_chunk<float, fastloss::x86_64_v4::\(anonymous namespace\)::sigmoid_impl<float>", 1),
    "mse": (PASS.format(op="SquaredError", outputs=0), 2),
}
SCALAR = ("cmp", "add", "sub", "lea", "mov", "inc", "dec", "test", "nop", "xchg")


def classify(op: str, args: str) -> str:
    if op.startswith("j") or op in SCALAR or not op.startswith("v"):
        return "scalar"
    if any(word in op for word in ("perm", "shuf", "unpck", "insert", "extract")):
        return "shuffle"
    if re.match(r"v(p?and|p?or|p?xor|pternlog|andn|pandn)", op) or op in ("vpaddq", "vpsubq"):
        return "logic"
    if op.startswith(("vmov", "vbroadcast")):
        return "fp" if "{%k" in args else "mem/move"  # a masked move is a blend
    return "fp"


ZEN4_M = ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub", "vmul", "vperm", "vscalef", "vrcp14", "vdiv")


def zen4_slots(op: str, args: str) -> tuple[str, int] | None:
    """(group, slots) of a Zen 4 512-bit instruction, None for what either group takes."""
    if classify(op, args) not in ("fp", "shuffle"):
        return None
    if op.startswith(ZEN4_M):
        return "M", 1
    return "A", 2 if op in ("vcvtps2pd", "vcvtpd2ps") else 1


def functions(obj: str) -> dict[str, list[tuple[int, str, str]]]:
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", obj],
                          capture_output=True, text=True, check=True).stdout
    found: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for line in text.splitlines():
        if header := re.match(r"^([0-9a-f]+) <(.*)>:$", line):
            current = header.group(2)
            found[current] = []
        elif (row := re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)) and current:
            found[current].append((int(row.group(1), 16), row.group(2), row.group(3)))
    return found


def backward_target(address: int, op: str, args: str) -> int | None:
    target = re.match(r"([0-9a-f]+)", args) if op.startswith("j") else None
    if target and int(target.group(1), 16) < address:
        return int(target.group(1), 16)
    return None


def hot_loop(body: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    best: tuple[int, list[tuple[int, str, str]]] = (-1, [])
    for address, op, args in body:
        start = backward_target(address, op, args)
        if start is None:
            continue
        loop = [row for row in body if start <= row[0] <= address]
        if any(backward_target(*row) is not None and backward_target(*row) >= start  # type: ignore[operator]
               for row in loop[:-1]):
            continue  # not innermost
        conversions = sum(1 for row in loop if row[1] == "vcvtps2pd")
        if conversions > best[0]:
            best = (conversions, loop)
    return best[1]


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "-v"]
    obj = args[0] if args else glob.glob("build/*/CMakeFiles/fastloss_kernels_x86_64_v4.dir/csrc/kernels.cpp.o")[0]
    table = functions(obj)
    for name, (pattern, inputs) in KERNELS.items():
        candidates = [f for f in table if re.search(pattern, f)]
        if not candidates:
            print(f"{name}: not found")
            continue
        loop = hot_loop(table[candidates[0]])
        vectors = sum(1 for row in loop if row[1] == "vcvtps2pd") / inputs
        kinds = collections.Counter(classify(op, a) for _, op, a in loop)
        print(f"{name}: {len(loop)} instructions, {vectors:g} vectors of 8 a trip; per 8 elements: "
              + ", ".join(f"{k} {v / vectors:.1f}" for k, v in sorted(kinds.items())))
        groups: collections.Counter = collections.Counter()
        for _, op, a in loop:
            if slots := zen4_slots(op, a):
                groups[slots[0]] += slots[1]
        print(f"    Zen 4: M {groups['M'] / vectors:.1f}, A {groups['A'] / vectors:.1f} per 8 elements: "
              f">= {max(groups.values(), default=0) / vectors / 8:.2f} cycles per element")
        if "-v" in sys.argv:
            ops = collections.Counter(op for _, op, a in loop if classify(op, a) in ("fp", "shuffle"))
            print("   ", ", ".join(f"{k} {v / vectors:g}" for k, v in ops.most_common()))


if __name__ == "__main__":
    main()
