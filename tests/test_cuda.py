"""The CUDA backend (fastloss._cuda, cuda/losses.cu).

Two parts:
- Compile tests that need no GPU and no CuPy: cuda/losses.cu (with the shared header) is
  compiled with exactly the options and template instantiations the run-time path uses, by
  nvcc when it is on PATH and by NVRTC when CuPy's binding to it works. A syntax error in a
  .cu file, or in the header under the device compiler, fails them.
- GPU tests (skipped without CuPy or without a CUDA device): every function against
  fastloss.reference and against the CPU path on the same data, determinism, alignment,
  argument checks, edge values, and N > 2^31 (marked largemem, like the CPU one: it needs
  ~21 GiB of GPU memory and runs only with ``pytest --largemem``).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss
from _helpers import (
    import_cupy_or_skip,
    loss_case,
    DTYPES,
    LOGITS,
    OPS,
    OPS_BY_NAME,
    ATOL,
    RTOL,
    assert_elementwise_close,
    assert_loss_matches,
    assert_reduction_close,
    assert_same_bits,
    float32_ulp,
    make_inputs,
    make_weight,
    reduction_ulp_bound,
    seed_for,
    ulp_distance_f32,
)
from fastloss import _cuda, _dispatch
from fastloss import reference as R
from fastloss._dispatch import loss_kind
from fastloss._codes import (
    BINARY_CROSS_ENTROPY,
    BINARY_CROSS_ENTROPY_WITH_LOGITS,
    SQUARED_ERROR,
)

dtype_ids = lambda d: np.dtype(d).name  # noqa: E731


# ==== compile tests: no GPU needed ================================================================

class CompileFailed(AssertionError):
    pass


def _instantiation_unit(source, names):
    """The source followed by a reference to every name expression, which makes the compiler
    instantiate each kernel (what NVRTC's name expressions do)."""
    refs = "".join(f"void* fastloss_instantiation_{i} = (void*)&{name};\n"
                   for i, name in enumerate(names))
    return f"{source}\n// ---- instantiations (tests/test_cuda.py) ----\n{refs}"


def _compile_with_nvcc(source, options, names, tmp_path):
    unit = tmp_path / "losses_instantiated.cu"
    unit.write_text(_instantiation_unit(source, names))
    ptx = tmp_path / "losses.ptx"
    command = ["nvcc", "--ptx", "-arch=sm_90", *options, "-x", "cu", str(unit), "-o", str(ptx)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileFailed(f"nvcc failed ({' '.join(command)}):\n{result.stdout}{result.stderr}")
    return ptx.read_text()


def _nvrtc_unavailable_reason():
    try:
        from cupy.cuda import nvrtc
    except Exception as error:  # not installed, or a broken CUDA install
        return f"cupy.cuda.nvrtc is not importable ({type(error).__name__}: {error})"
    try:
        program = nvrtc.createProgram("__global__ void k() {}", "probe.cu", [], [])
        nvrtc.compileProgram(program, ["--gpu-architecture=compute_90"])
        nvrtc.destroyProgram(program)
    except Exception as error:  # e.g. the NVRTC library itself is missing
        return f"NVRTC does not work here ({type(error).__name__}: {error})"
    return None


def _assert_no_contracted_multiply_adds(ptx, finishing="finish_sum"):
    """-fmad=false reached the compiler: no fma.rn in any kernel but the ``finishing`` one
    (losses.cu's finish_sum, multiclass.cu's finish_pairs), whose one is the explicit fma() of
    dd::divide or dd::divide_by_sum (the exact remainder of the mean's division, as on the
    CPU). Each kernel's body is its own: every device function is inlined."""
    head = re.split(r"^\.(?:visible|weak) \.entry ", ptx, flags=re.M)
    assert "fma.rn." not in head[0]
    for body in head[1:]:
        name = body.split("(", 1)[0]
        expected = 1 if finishing in name else 0
        assert body.count("fma.rn.") == expected, f"{name}: {body.count('fma.rn.')} fma.rn"


# nvcc is an extra check where it is installed; the run-time path (NVRTC, from CuPy's wheels)
# is what CI requires: .ci/run installs CuPy and NVRTC and sets this, so those tests fail
# instead of skipping when they cannot run.
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
REQUIRE_NVRTC = "FASTLOSS_TEST_REQUIRE_NVRTC"


@pytest.fixture(scope="module")
def nvrtc_or_skip():
    reason = _nvrtc_unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_NVRTC) == "1":
            pytest.fail(f"{REQUIRE_NVRTC}=1 but {reason}")
        pytest.skip(reason)


def test_kernel_sources_and_options():
    source, options, names = _cuda.kernel_sources_and_options()
    assert '#include "fastloss/loss_pass.h"' in source  # the shared pass body and math
    assert "-std=c++17" in options
    includes = [o[2:] for o in options if o.startswith("-I")]
    assert len(includes) == 1
    for header in ("loss_pass.h", "codes.h", "elementwise.h"):
        assert (Path(includes[0]) / "fastloss" / header).is_file(), header
    assert (Path(includes[0]) / "fastloss" / "scalar_math.h").is_file()
    # IEEE arithmetic: the reduction order and the header's accuracy depend on it
    for forbidden in ("-use_fast_math", "--use_fast_math", "-ftz=true", "--ftz=true"):
        assert forbidden not in options
    assert "-ftz=false" in options
    # every (dtype, op, outputs, weighted) loss pass, finish_sum, sigmoid and its backward
    assert len(names) == len(set(names)) == 3 * (3 * 5 * 2 + 3)
    ctype = r"(float|double|fastloss::gpu::Float16)"
    for name in names:
        assert re.fullmatch(rf"fastloss::gpu::(loss_pass<{ctype}, [012], [0-4], (true|false)>"
                            rf"|(finish_sum|sigmoid|sigmoid_backward)<{ctype}>)", name), name
    # each run-time module compiles a subset of these, from the same source and options
    for dtype_name in ("float32", "float64", "float16"):
        for family in _cuda._FAMILIES:
            assert set(_cuda._module_names(family, dtype_name)) <= set(names)


def test_sources_include_no_standard_headers():
    """NVRTC has no standard headers: only the project's own includes are allowed."""
    source, options, _ = _cuda.kernel_sources_and_options()
    include = Path([o[2:] for o in options if o.startswith("-I")][0])
    texts = {"losses.cu": source}
    texts.update({p.name: p.read_text() for p in (include / "fastloss").glob("*.h")})
    for name, text in texts.items():
        for line in text.splitlines():
            if re.match(r"\s*#\s*include", line):
                assert re.match(r'\s*#\s*include\s+"fastloss/[a-z_]+\.h"', line), (
                    f"{name}: {line.strip()} (NVRTC has no standard headers)")


def test_importing_fastloss_never_imports_cupy():
    code = (
        "import sys\n"
        "sys.modules['cupy'] = None  # any import of cupy now fails\n"
        "import fastloss, fastloss._cuda\n"
        "source, options, names = fastloss._cuda.kernel_sources_and_options()\n"
        "assert source and options and names\n"
        "import numpy as np\n"
        "fastloss.mse_loss(np.ones(3), np.zeros(3))\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@needs_nvcc
def test_compiles_with_nvcc(tmp_path):
    source, options, names = _cuda.kernel_sources_and_options()
    ptx = _compile_with_nvcc(source, options, names, tmp_path)
    entries = re.findall(r"^\.visible \.entry (\S+?)\(", ptx, flags=re.M)
    assert len(entries) == len(names), f"{len(entries)} kernels for {len(names)} name expressions"
    # -ftz=false and -fmad=false reached the compiler: no flushing float instruction, no
    # contracted multiply-add (the header's one fma() is dd::divide's, in finish_sum)
    assert ".ftz." not in ptx
    _assert_no_contracted_multiply_adds(ptx)


@needs_nvcc
def test_nvcc_check_fails_on_a_syntax_error(tmp_path):
    source, options, names = _cuda.kernel_sources_and_options()
    broken = source.replace("namespace gpu {", "namespace gpu { int broken(", 1)
    assert broken != source
    with pytest.raises(CompileFailed):
        _compile_with_nvcc(broken, options, names, tmp_path)


def test_compiles_with_nvrtc(nvrtc_or_skip):
    """The run-time compile function itself (fastloss._cuda.nvrtc_compile), for sm_90, as
    PTX (the run-time path asks for a cubin when NVRTC supports the device: ptxas then runs
    too, which takes a few seconds more)."""
    source, options, names = _cuda.kernel_sources_and_options()
    binary, kind, lowered = _cuda.nvrtc_compile(source, options, names, 90, kind="ptx")
    assert kind == "ptx"
    ptx = binary.decode()
    assert set(lowered) == set(names)
    for name, mangled in lowered.items():
        assert f".entry {mangled}(" in ptx, f"{name} ({mangled}) missing from the PTX"
    assert ".ftz." not in ptx
    _assert_no_contracted_multiply_adds(ptx)


def test_nvrtc_check_fails_on_a_syntax_error(nvrtc_or_skip):
    source, options, names = _cuda.kernel_sources_and_options()
    broken = source.replace("namespace gpu {", "namespace gpu { int broken(", 1)
    with pytest.raises(_cuda.CompileError, match="error"):
        _cuda.nvrtc_compile(broken, options, names[:1], 90, kind="ptx")


def test_describe_without_a_device():
    cupy = import_cupy_or_skip()
    info = _cuda.describe()
    assert info["cupy"] == cupy.__version__
    assert info["available"] == bool(cupy.cuda.is_available())
    for key in ("cuda_runtime", "cuda_driver", "nvrtc"):
        assert key in info


# ---- the grid: many waves deep, no spills (no GPU needed) ----------------------------------------

# An H100 SXM, as the CUDA occupancy calculator sees it: what limits the resident blocks per SM.
H100 = {"sms": 132, "registers": 65536, "threads": 2048, "blocks": 32, "register_unit": 256}


def _resident_blocks_per_sm(registers_per_thread, gpu=H100):
    unit = gpu["register_unit"]  # registers are allocated per warp, in units of 256
    per_warp = -(-registers_per_thread * 32 // unit) * unit
    warps_per_block = _cuda.THREADS // 32
    return min(gpu["registers"] // per_warp // warps_per_block,
               gpu["threads"] // _cuda.THREADS, gpu["blocks"])


def _ptxas_report(arch, file_name="losses.cu"):
    """{name expression: (registers, spill stores, spill loads)} of every kernel of
    cuda/<file_name>, from ptxas as the run-time compile runs it (NVRTC, the run-time options,
    a cubin for sm_<arch>). tests/test_cuda_multiclass.py and test_cuda_partials.py use it."""
    from cupy.cuda import nvrtc
    source, options, names = _cuda.kernel_sources_and_options(file_name)
    target, kind = _cuda._nvrtc_target(arch)
    assert kind == "cubin", target
    program = nvrtc.createProgram(source, file_name, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        nvrtc.compileProgram(program, [*options, target, "--ptxas-options=-v"])
        log = nvrtc.getProgramLog(program)
        by_mangled = {nvrtc.getLoweredName(program, name): name for name in names}
    finally:
        nvrtc.destroyProgram(program)
    report, spills, entry = {}, None, None
    for line in log.splitlines():
        if match := re.search(r"Compiling entry function '(\w+)'", line):
            entry = by_mangled[match.group(1)]
        elif match := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = (int(match.group(1)), int(match.group(2)))
        elif match := re.search(r"Used (\d+) registers", line):
            report[entry] = (int(match.group(1)), *spills)
    return report


def test_grid_is_many_waves_deep_and_no_kernel_spills(nvrtc_or_skip):
    """The grid is a function of N only (the same bits on every GPU), so it cannot be sized to a
    device's resident blocks: it must be deep enough that a ragged last wave costs little. On
    an H100, with each kernel's registers as ptxas counts them, the full grid (MAX_BLOCKS)
    must reach 90% of the time of whole waves (1024 blocks, the old grid, made 1.3-1.9
    waves: 65%), and no kernel may spill."""
    report = _ptxas_report(90)
    _, _, names = _cuda.kernel_sources_and_options()
    assert set(report) == set(names)
    for name, (registers, spill_stores, spill_loads) in report.items():
        assert spill_stores == spill_loads == 0, f"{name} spills ({registers} registers)"
        if "finish_sum" in name:  # one block
            continue
        waves = _cuda.MAX_BLOCKS / (H100["sms"] * _resident_blocks_per_sm(registers))
        assert waves / math.ceil(waves) >= 0.9, f"{name}: {registers} registers, {waves:.2f} waves"
    for dtype_name in ("float32", "float64", "float16"):  # the grid reaches its depth, from N alone
        assert _cuda._grid(2**31, dtype_name) == _cuda.MAX_BLOCKS
        assert _cuda._grid(1, dtype_name) == 1


# ---- the disk cache holds whole cubins (no GPU needed) ------------------------------------------

def _elf64_length(image):
    """The length an ELF64 image's headers give it, read here without fastloss._cuda: the end
    of its header tables and of every section and segment that occupies bytes of the file."""
    assert image[:4] == b"\x7fELF" and image[4] == 2 and image[5] == 1, image[:6]
    phoff, shoff = struct.unpack_from("<QQ", image, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<4H", image, 54)
    ends = [64, phoff + phnum * phentsize, shoff + shnum * shentsize]
    for i in range(shnum):
        _, sh_type, _, _, offset, size, _, _, _, _ = struct.unpack_from(
            "<IIQQQQIIQQ", image, shoff + i * shentsize)
        if sh_type != 8:  # SHT_NOBITS
            ends.append(offset + size)
    for i in range(phnum):
        _, _, offset, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", image,
                                                              phoff + i * phentsize)
        ends.append(offset + filesz)
    return max(ends)


def _elf64_with_section_last(data):
    """A minimal ELF64 image whose last bytes are the contents of a section (not a header)."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    shoff, shnum = 64, 2  # the null section and one PROGBITS section after the table
    struct.pack_into("<QQ", header, 32, 0, shoff)
    struct.pack_into("<5H", header, 52, 64, 56, 0, 64, shnum)
    null_section = bytes(64)
    section = struct.pack("<IIQQQQIIQQ", 0, 1, 0, 0, 64 + shnum * 64, len(data), 0, 0, 1, 0)
    return bytes(header) + null_section + section + data


@pytest.fixture
def cuda_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLOSS_CUDA_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("family, dtype_name", [("sigmoid", "float32"), ("loss2", "float64")])
def test_cached_cubin_is_as_long_as_its_elf_headers_say(nvrtc_or_skip, cuda_cache, family,
                                                        dtype_name):
    """CuPy's nvrtc.getCUBIN drops the last byte of the image; the file the driver loads must
    be whole."""
    path, lowered = _cuda._module_file(family, dtype_name, "90")
    assert path.parent == cuda_cache and path.suffix == ".cubin"
    assert set(lowered) == set(_cuda._module_names(family, dtype_name))
    image = path.read_bytes()
    assert len(image) == _elf64_length(image)


def test_cache_reuses_whole_cubins_and_replaces_short_ones(nvrtc_or_skip, cuda_cache,
                                                           monkeypatch):
    path, _ = _cuda._module_file("sigmoid", "float64", "90")
    whole = path.read_bytes()
    compiles = []
    real_compile = _cuda.nvrtc_compile

    def counting_compile(*args, **kwargs):
        compiles.append(args)
        return real_compile(*args, **kwargs)
    monkeypatch.setattr(_cuda, "nvrtc_compile", counting_compile)
    assert _cuda._module_file("sigmoid", "float64", "90")[0] == path
    assert compiles == []
    path.write_bytes(whole[:-1])  # what fastloss wrote before the cache format 2
    assert _cuda._module_file("sigmoid", "float64", "90")[0] == path
    assert len(compiles) == 1
    # not the same bytes: NVRTC names internal-linkage symbols with a per-compile id
    image = path.read_bytes()
    assert len(image) == len(whole) == _elf64_length(image)


def test_cache_key_holds_the_cache_format(nvrtc_or_skip, cuda_cache, monkeypatch):
    """Files written under an older format (one-byte-short cubins) have other names."""
    current, _ = _cuda._module_file("sigmoid", "float32", "90")
    monkeypatch.setattr(_cuda, "_CACHE_FORMAT", _cuda._CACHE_FORMAT - 1)
    older, _ = _cuda._module_file("sigmoid", "float32", "90")
    assert older.name != current.name


def test_complete_cubin(nvrtc_or_skip):
    source, options, _ = _cuda.kernel_sources_and_options()
    names = _cuda._module_names("sigmoid", "float32")
    image, kind, _ = _cuda.nvrtc_compile(source, options, names, 90)
    assert kind == "cubin" and len(image) == _elf64_length(image)
    assert _cuda.complete_cubin(image) == image  # a CuPy that keeps the last byte
    assert _cuda.complete_cubin(image[:-1]) == image  # CuPy 14.2
    assert _cuda.complete_cubin(image[:-2]) is None
    assert _cuda.complete_cubin(b"//\n// Generated by NVIDIA NVVM Compiler\n") is None
    # the last byte of a section's contents cannot be guessed
    other = _elf64_with_section_last(b"\x01\x02\x03\x04")
    assert _elf64_length(other) == len(other) == _cuda.elf_image_size(other)
    assert _cuda.complete_cubin(other) == other
    assert _cuda.complete_cubin(other[:-1]) is None


def test_ptx_when_the_cubin_cannot_be_made_whole(nvrtc_or_skip, cuda_cache, monkeypatch):
    monkeypatch.setattr(_cuda, "complete_cubin", lambda image: None)
    source, options, _ = _cuda.kernel_sources_and_options()
    names = _cuda._module_names("sigmoid", "float32")
    binary, kind, lowered = _cuda.nvrtc_compile(source, options, names, 90)
    assert kind == "ptx"
    assert all(f".entry {mangled}(" in binary.decode() for mangled in lowered.values())
    path, _ = _cuda._module_file("sigmoid", "float32", "90")
    assert path.suffix == ".ptx"
    monkeypatch.setattr(_cuda, "nvrtc_compile", None)  # the cached PTX is found: no compile
    assert _cuda._module_file("sigmoid", "float32", "90")[0] == path


# ---- device placement, with a stand-in for CuPy (no GPU needed) --------------------------------

@pytest.fixture
def fake_cupy(monkeypatch):
    from _fake_cupy import FakeCupy
    fake = FakeCupy()
    monkeypatch.setattr(_cuda, "_cupy", lambda: fake)
    monkeypatch.setattr(_cuda, "_kernel", fake.kernel)
    return fake


def _to_fake_device(fake, device_id, *values):
    """Host arrays copied to fake device ``device_id``; None and Python floats as they are."""
    with fake.cuda.Device(device_id):
        return [fake.asarray(v) if isinstance(v, np.ndarray) else v for v in values]


def _placement_cases():
    cases = []
    for op in OPS:
        weights = [(None, None), ("scalar", None), ("trailing", None), ("col", None),
                   ("full", None)]
        if op.has_pos_weight:
            weights += [(None, "scalar"), ("col", "trailing")]
        for want_loss, want_grad in ((True, False), (False, True), (True, True)):
            for reduction in ("mean", "sum", "none"):
                grad_outputs = [None] if not want_grad else (
                    ["scalar", "full", "trailing"] if reduction == "none" else ["scalar"])
                for wkind, pkind in weights:
                    for go in grad_outputs:
                        cases.append(pytest.param(
                            op, want_loss, want_grad, reduction, wkind, pkind, go,
                            id=f"{op.name}-{'loss' if want_loss else ''}"
                               f"{'grad' if want_grad else ''}-{reduction}-w{wkind}-pw{pkind}"
                               f"-go{go}"))
    return cases


OP_CODES = {"mse": SQUARED_ERROR, "bce": BINARY_CROSS_ENTROPY,
            "logits": BINARY_CROSS_ENTROPY_WITH_LOGITS}


def _off_device(fake, device_id):
    return [entry for entry in fake.log if entry[1] != device_id]


@pytest.mark.parametrize("op, want_loss, want_grad, reduction, wkind, pkind, go",
                         _placement_cases())
def test_loss_pass_works_on_the_inputs_device(fake_cupy, op, want_loss, want_grad, reduction,
                                              wkind, pkind, go):
    """Inputs on GPU 1 while GPU 0 is current: every buffer of the call (outputs, the loss, the
    weight buffers from full/tile/broadcast_to, weight * grad_output) and every launch land
    on GPU 1."""
    rng = np.random.default_rng(seed_for("placement", op.name, wkind, pkind, go))
    shape = (6, 7)
    x, y = make_inputs(op.name, shape, np.float32, rng, soft=True)
    w, pw = make_weight(wkind, shape, np.float32, rng), make_weight(pkind, shape, np.float32, rng)
    grad_output = {None: 1.0, "scalar": GRAD_OUTPUT,
                   "full": np.asarray(rng.standard_normal(shape), np.float32),
                   "trailing": np.asarray(rng.standard_normal(shape[-1:]), np.float32)}[go]
    gx, gy, gw, gpw, ggo = _to_fake_device(fake_cupy, 1, x, y, w, pw, grad_output)
    fake_cupy.log.clear()
    result = _dispatch.loss(loss_kind(OP_CODES[op.name], want_loss, want_grad), gx, gy, gw,
                            gpw, reduction, ggo, None)
    assert fake_cupy.current == [0]
    assert any(what.startswith("launch") for what, _ in fake_cupy.log)
    assert _off_device(fake_cupy, 1) == []
    for array in result if isinstance(result, tuple) else (result,):
        assert array.device.id == 1


def test_sigmoids_work_on_the_inputs_device(fake_cupy):
    x, g = _to_fake_device(fake_cupy, 1, np.linspace(-3, 3, 50, dtype=np.float32),
                           np.ones(50, np.float32))
    fake_cupy.log.clear()
    s = fastloss.sigmoid(x)
    b = fastloss.sigmoid_backward(g, s)
    assert [what for what, _ in fake_cupy.log if what.startswith("launch")] == [
        "launch fastloss::gpu::sigmoid<float>", "launch fastloss::gpu::sigmoid_backward<float>"]
    assert _off_device(fake_cupy, 1) == []
    assert s.device.id == b.device.id == 1


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_out_partly_over_grad_output_is_refused(fake_cupy, op):
    """Like the CPU path: out may be grad_output itself but not overlap it in part (one
    thread would overwrite elements another has still to read)."""
    n = 42  # below MIN_PERIOD and whole: grad_output is read in place, not tiled
    x, y = make_inputs(op.name, (n,), np.float32, np.random.default_rng(3), soft=True)
    both = np.ones(n + 1, np.float32)
    with pytest.raises(ValueError, match="overlaps"):  # the CPU path
        op.grad(x, y, reduction="none", grad_output=both[:n], out=both[1:])
    gx, gy, gboth = _to_fake_device(fake_cupy, 1, x, y, both)
    for want_loss in (False, True):
        kind = loss_kind(OP_CODES[op.name], want_loss, True)
        with pytest.raises(ValueError, match="out overlaps grad_output"):
            _dispatch.loss(kind, gx, gy, None, None, "none", gboth[:n], gboth[1:])
    assert not any(what.startswith("launch") for what, _ in fake_cupy.log)
    # grad_output itself, or grad_output times a weight (a new array), are fine
    grad_only = loss_kind(OP_CODES[op.name], False, True)
    assert _dispatch.loss(grad_only, gx, gy, None, None, "none", gboth[:n],
                          gboth[:n]) is not None
    assert _dispatch.loss(grad_only, gx, gy, 0.5, None, "none", gboth[:n],
                          gboth[1:]) is not None


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_misaligned_weights_and_grad_output_are_refused(fake_cupy, op):
    """An array the kernels (or CuPy's tile and multiply) read must be aligned to its element
    size, like input and target: a misaligned load faults."""
    shape = (5, 9)
    x, y = make_inputs(op.name, shape, np.float32, np.random.default_rng(4), soft=True)
    gx, gy = _to_fake_device(fake_cupy, 1, x, y)
    with fake_cupy.cuda.Device(1):
        unaligned = fake_cupy.unaligned(shape, np.float32)
    assert unaligned.data.ptr % 4 and unaligned.flags.c_contiguous
    cases = [("weight", dict(weight=unaligned))]
    if op.has_pos_weight:
        cases.append(("pos_weight", dict(pos_weight=unaligned)))
    for name, kwargs in cases:
        for want_loss, want_grad in ((True, False), (False, True), (True, True)):
            args = dict(dict(weight=None, pos_weight=None), **kwargs)
            with pytest.raises(ValueError, match=f"^{name} is not aligned"):
                _dispatch.loss(loss_kind(OP_CODES[op.name], want_loss, want_grad), gx, gy,
                               args["weight"], args["pos_weight"], "mean", 1.0, None)
    for weight in (None, 0.5):
        with pytest.raises(ValueError, match="^grad_output is not aligned"):
            _dispatch.loss(loss_kind(OP_CODES[op.name], True, True), gx, gy, weight, None,
                           "none", unaligned, None)
    assert not any(what.startswith("launch") for what, _ in fake_cupy.log)


# ==== GPU tests ================================================================================
# (the `cp` fixture, in conftest.py, skips them without CuPy or a CUDA device)

REDUCTIONS = ("mean", "sum", "none")
GRAD_OUTPUT = 0.375
BIG = (10**6 + 3,)


def _host(result, cp, dtype):
    """A GPU result as the CPU path would return it: arrays to NumPy, a 0-d loss to a NumPy
    scalar; checks that it is a CuPy array of the input's dtype on the way."""
    assert isinstance(result, cp.ndarray), f"expected a cupy.ndarray, got {type(result)}"
    assert result.dtype == np.dtype(dtype), f"dtype {result.dtype}, expected {np.dtype(dtype)}"
    host = cp.asnumpy(result)
    return host[()] if host.ndim == 0 else host


def _to_gpu(cp, value):
    return cp.asarray(value) if isinstance(value, np.ndarray) else value


def _weight_combos(op_name, shape):
    multi = len(shape) >= 2
    combos = [(w, None) for w in [None, "scalar", "full"] + (["trailing", "col"] if multi else [])]
    if op_name == "logits":
        combos += [(None, "scalar"), (None, "full"), ("full", "scalar")]
        if multi:
            combos += [(None, "trailing"), ("trailing", "trailing"), ("col", "full")]
    return combos


def _cases():
    cases = []
    for op in OPS:
        for dtype in DTYPES:
            for reduction in REDUCTIONS:
                for shape in [(0,), (1,), (7,), (4097,), (3, 5), (2, 3, 4097)]:
                    for wkind, pkind in _weight_combos(op.name, shape):
                        cases.append(loss_case(op.name, shape, dtype, reduction, wkind, pkind))
                big = [(None, None), ("full", None)] + ([("scalar", "full")] if op.name == "logits"
                                                       else [])
                for wkind, pkind in big:
                    cases.append(loss_case(op.name, BIG, dtype, reduction, wkind, pkind))
    return cases


def _assert_same_bits_as_cpu(gpu, cpu, what="result"):
    """Bitwise equal to the CPU path's result, except that any NaN matches any NaN (a NaN's
    sign and payload are not portable: CUDA arithmetic returns a canonical NaN)."""
    g, c = np.asarray(gpu), np.asarray(cpu)
    assert g.dtype == c.dtype and g.shape == c.shape, (
        f"{what}: {g.dtype}{g.shape} vs {c.dtype}{c.shape}")
    g_nan, c_nan = np.isnan(g), np.isnan(c)
    if not np.array_equal(g_nan, c_nan):
        i = int(np.flatnonzero((g_nan != c_nan).reshape(-1))[0])
        raise AssertionError(f"{what}: NaN mismatch at flat index {i}: "
                             f"{g.reshape(-1)[i]!r} vs {c.reshape(-1)[i]!r}")
    assert_same_bits(np.where(g_nan, 0, g).astype(g.dtype), np.where(c_nan, 0, c).astype(c.dtype),
                     what=what)


def _assert_close_to_cpu(gpu, cpu, dtype, reduction, what, max_ulps=1, atol=0.0):
    """GPU vs the CPU path's default build: each is within tolerance of the exact value, so
    they are within twice that of each other (``atol``: the per-element allowance of the
    check against the reference, already doubled). (They need not have the same bits: the CPU
    build for AVX2 contracts multiply-adds into FMAs, the GPU kernels do not; see
    test_elementwise_bits_match_the_cpu_baseline_build.)"""
    dtype = np.dtype(dtype)
    if reduction == "none" or isinstance(cpu, np.ndarray):
        assert_elementwise_close(gpu, cpu.astype(np.float64), dtype, rtol=2 * RTOL[dtype],
                                 atol=atol, what=what + " vs CPU")
        return
    got, want = float(gpu), float(cpu)
    if math.isnan(want) or math.isinf(want):
        assert got == want or (math.isnan(got) and math.isnan(want)), f"{what}: {got} vs {want}"
    elif dtype == np.float32:
        assert abs(got - want) <= 2 * max_ulps * float32_ulp(want), (
            f"{what} vs CPU: {got!r} vs {want!r}")
    else:
        assert abs(got - want) <= 2e-13 * abs(want), f"{what} vs CPU: {got!r} vs {want!r}"


_BASELINE_SCRIPT = r"""
import pickle, sys
import fastloss, fastloss._cpu
assert fastloss._cpu.build_info()["isa"] == "baseline", fastloss._cpu.build_info()
with open(sys.argv[1], "rb") as f:
    calls = pickle.load(f)
results = [getattr(fastloss, name)(*args, **kwargs) for name, args, kwargs in calls]
with open(sys.argv[2], "wb") as f:
    pickle.dump(results, f)
"""


def _cpu_baseline(calls, tmp_path):
    """Results of ``calls`` [(fastloss function name, args, kwargs)] on NumPy arrays, computed
    by the CPU path's portable build (FASTLOSS_ISA=baseline: SSE2, no FMA) in a fresh
    interpreter (the build is chosen once per process)."""
    source, target = tmp_path / "calls.pkl", tmp_path / "results.pkl"
    with open(source, "wb") as f:
        pickle.dump(calls, f)
    result = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, str(source), str(target)],
                            env=dict(os.environ, FASTLOSS_ISA="baseline"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with open(target, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("op_name, shape, dtype, reduction, wkind, pkind", _cases())
def test_against_reference_and_cpu(cp, op_name, shape, dtype, reduction, wkind, pkind):
    op = OPS_BY_NAME[op_name]
    rng = np.random.default_rng(seed_for("cuda", op_name, shape, np.dtype(dtype).name,
                                         reduction, wkind, pkind))
    x, y = make_inputs(op_name, shape, dtype, rng, soft=op_name != "mse")
    w = make_weight(wkind, shape, dtype, rng)
    pw = make_weight(pkind, shape, dtype, rng)
    gx, gy, gw, gpw = (_to_gpu(cp, a) for a in (x, y, w, pw))

    cpu_loss = op.call_loss(x, y, w, pw, reduction)
    cpu_grad = op.call_grad(x, y, w, pw, reduction, GRAD_OUTPUT)

    ulps = reduction_ulp_bound(op_name, x.size)
    loss = _host(op.call_loss(gx, gy, gw, gpw, reduction), cp, dtype)
    op.check_loss(loss, x, y, w, pw, reduction, what="loss")
    _assert_close_to_cpu(loss, cpu_loss, dtype, reduction, "loss", max_ulps=ulps,
                         atol=2 * op.loss_term_size(x, y, w, pw))

    grad = _host(op.call_grad(gx, gy, gw, gpw, reduction, GRAD_OUTPUT), cp, dtype)
    op.check_grad(grad, x, y, w, pw, reduction, GRAD_OUTPUT, what="grad")
    _assert_close_to_cpu(grad, cpu_grad, dtype, "none", "grad", atol=2 * ATOL[np.dtype(dtype)]
                         * op.grad_term_size(x, y, w, pw, reduction, GRAD_OUTPUT))

    both_loss, both_grad = op.call_and_grad(gx, gy, gw, gpw, reduction, GRAD_OUTPUT)
    both_loss, both_grad = _host(both_loss, cp, dtype), _host(both_grad, cp, dtype)
    # one pass computes the same values as the separate calls (the same IEEE operations:
    # the kernels are compiled without FMA contraction)
    assert_same_bits(both_loss, loss, what="and_grad loss")
    assert_same_bits(both_grad, grad, what="and_grad grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", [0, 1, 7, 4097, 10**6 + 3])
def test_sigmoid_against_reference_and_cpu(cp, dtype, n):
    rng = np.random.default_rng(seed_for("cuda-sigmoid", n, np.dtype(dtype).name))
    x = np.asarray(rng.standard_normal(n) * 8.0, dtype=dtype)
    g = np.asarray(rng.standard_normal(n), dtype=dtype)
    s = _host(fastloss.sigmoid(cp.asarray(x)), cp, dtype)
    assert_elementwise_close(s, R.sigmoid(x), dtype, what="sigmoid")
    _assert_close_to_cpu(s, fastloss.sigmoid(x), dtype, "none", "sigmoid")
    b = _host(fastloss.sigmoid_backward(cp.asarray(g), cp.asarray(s)), cp, dtype)
    assert_elementwise_close(b, R.sigmoid_backward(g, s), dtype, what="sigmoid_backward")
    _assert_close_to_cpu(b, fastloss.sigmoid_backward(g, s), dtype, "none", "sigmoid_backward")


def _edge_inputs(dtype):
    """(op, input, target) triples of edge values: infinities, FLT_MAX, zeros, subnormals, NaN."""
    info = np.finfo(dtype)
    big, tiny, sub = float(info.max), float(info.tiny), float(info.smallest_subnormal)
    z = np.array([np.inf, np.inf, -np.inf, -np.inf, big, -big, 0.0, -0.0, 50.0, -50.0, np.nan,
                  tiny, -sub], dtype=dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0], dtype=dtype)
    p = np.array([0.0, 1.0, 0.0, 1.0, tiny, sub, tiny / 4, 1e-30, 0.5, 1.0 - float(info.eps),
                  np.nan, 1.0, sub * 3], dtype=dtype)
    return [(LOGITS, z, t), (OPS_BY_NAME["bce"], p, t), (OPS_BY_NAME["mse"], z, t)]


def test_elementwise_bits_match_the_cpu_baseline_build(cp, tmp_path):
    """Per-element losses, gradients and sigmoids have the exact bits of the CPU path's portable
    build: both evaluate the shared header with the same IEEE operations in the same order
    (no FMA contraction: SSE2 has none, the kernels are compiled with -fmad=false; no
    flush-to-zero: -ftz=false). NaNs only need to be NaN. Covers edge values (infinities,
    FLT_MAX, subnormals, NaN) and a dense float32 grid of sigmoid on [-88, 88]."""
    calls, gpu = [], []
    for dtype in DTYPES:
        for op in OPS:
            rng = np.random.default_rng(seed_for("cuda-bits", op.name, np.dtype(dtype).name))
            shape = (37, 129)
            x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
            w = make_weight("trailing", shape, dtype, rng)
            kw = {"weight": w}
            if op.has_pos_weight:
                kw["pos_weight"] = make_weight("full", shape, dtype, rng)
            gkw = {k: cp.asarray(v) for k, v in kw.items()}
            for reduction in ("none", "mean"):
                calls.append((op.and_grad.__name__, (x, y),
                              dict(kw, reduction=reduction, grad_output=GRAD_OUTPUT)))
                gpu.append(op.and_grad(cp.asarray(x), cp.asarray(y), reduction=reduction,
                                       grad_output=GRAD_OUTPUT, **gkw))
        for op, inp, t in _edge_inputs(dtype):
            calls.append((op.and_grad.__name__, (inp, t), {"reduction": "none"}))
            gpu.append(op.and_grad(cp.asarray(inp), cp.asarray(t), reduction="none"))
            calls.append((op.grad.__name__, (inp, t), {"reduction": "sum"}))
            gpu.append(op.grad(cp.asarray(inp), cp.asarray(t), reduction="sum"))
        rng = np.random.default_rng(seed_for("cuda-bits-sigmoid", np.dtype(dtype).name))
        x = np.concatenate([np.asarray(rng.standard_normal(10_001) * 8.0, dtype=dtype),
                            _edge_inputs(dtype)[0][1]])
        g = np.asarray(rng.standard_normal(x.size), dtype=dtype)
        calls += [("sigmoid", (x,), {}), ("sigmoid_backward", (g, fastloss.sigmoid(x)), {})]
        gpu += [fastloss.sigmoid(cp.asarray(x)),
                fastloss.sigmoid_backward(cp.asarray(g), cp.asarray(fastloss.sigmoid(x)))]
    grid = np.linspace(-88.0, 88.0, 2_000_001, dtype=np.float32)
    calls.append(("sigmoid", (grid,), {}))
    gpu.append(fastloss.sigmoid(cp.asarray(grid)))

    cpu = _cpu_baseline(calls, tmp_path)
    for (name, args, kwargs), want, got in zip(calls, cpu, gpu):
        what = f"{name}({args[0].dtype}, {kwargs.get('reduction', '')})"
        if isinstance(want, tuple):
            loss, grad = got
            if kwargs["reduction"] == "none":
                _assert_same_bits_as_cpu(cp.asnumpy(loss), want[0], what=what + " loss")
            _assert_same_bits_as_cpu(cp.asnumpy(grad), want[1], what=what + " grad")
        else:
            _assert_same_bits_as_cpu(cp.asnumpy(got), want, what=what)


# ---- results: kinds, out=, in place, grad_output forms -----------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_result_kinds(cp, dtype):
    x = cp.asarray(np.linspace(-2, 2, 10, dtype=dtype))
    y = cp.asarray(np.zeros(10, dtype=dtype))
    for reduction in ("mean", "sum"):
        loss = fastloss.mse_loss(x, y, reduction=reduction)
        assert isinstance(loss, cp.ndarray) and loss.shape == () and loss.dtype == dtype
        loss, grad = fastloss.mse_loss_and_grad(x, y, reduction=reduction)
        assert loss.shape == () and grad.shape == (10,) and grad.dtype == dtype
    loss = fastloss.mse_loss(x, y, reduction="none")
    assert isinstance(loss, cp.ndarray) and loss.shape == (10,) and loss.dtype == dtype
    empty = cp.asarray(np.zeros(0, dtype=dtype))
    assert math.isnan(float(fastloss.mse_loss(empty, empty)))
    assert float(fastloss.mse_loss(empty, empty, reduction="sum")) == 0.0
    assert fastloss.mse_loss_grad(empty, empty).shape == (0,)


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_out_and_in_place(cp, op, dtype):
    rng = np.random.default_rng(seed_for("cuda-out", op.name, np.dtype(dtype).name))
    x, y = make_inputs(op.name, (5, 33), dtype, rng, soft=True)
    gx, gy = cp.asarray(x), cp.asarray(y)
    expected = _host(op.call_grad(gx, gy), cp, dtype)
    out = cp.empty(x.shape, dtype=dtype)
    assert op.call_grad(gx, gy, out=out) is out
    assert_same_bits(_host(out, cp, dtype), expected)
    loss, grad = op.call_and_grad(gx, gy, out=out)
    assert grad is out
    assert op.call_grad(gx, gy, out=gx) is gx  # in place over the input
    assert_same_bits(_host(gx, cp, dtype), expected)
    s = cp.asarray(x)
    assert fastloss.sigmoid(s, out=s) is s
    _assert_same_bits_as_cpu(_host(s, cp, dtype), fastloss.sigmoid(x))


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_grad_output_forms(cp, op, dtype):
    rng = np.random.default_rng(seed_for("cuda-go", op.name, np.dtype(dtype).name))
    shape = (6, 7)
    x, y = make_inputs(op.name, shape, dtype, rng, soft=True)
    w = make_weight("trailing", shape, dtype, rng)
    gx, gy, gw = cp.asarray(x), cp.asarray(y), cp.asarray(w)
    # an upstream gradient per element (reduction='none'), full shape or broadcast
    for go_shape in (shape, shape[-1:], shape[:-1] + (1,)):
        go = np.asarray(rng.standard_normal(go_shape), dtype=dtype)
        grad = _host(op.call_grad(gx, gy, gw, None, "none", cp.asarray(go)), cp, dtype)
        op.check_grad(grad, x, y, w, None, "none", go)
        loss, grad2 = op.call_and_grad(gx, gy, gw, None, "none", cp.asarray(go))
        # the loss is not scaled by grad_output (the gradient is)
        op.check_loss(_host(loss, cp, dtype), x, y, w, None, "none")
        assert_same_bits(_host(grad2, cp, dtype), grad)
    # a 0-d CuPy grad_output (read to the host once), a NumPy 0-d array and a NumPy scalar
    want = _host(op.call_grad(gx, gy, reduction="mean", grad_output=0.5), cp, dtype)
    for go in (cp.asarray(np.asarray(0.5, dtype=dtype)), np.asarray(0.5), np.float32(0.5)):
        assert_same_bits(_host(op.call_grad(gx, gy, reduction="mean", grad_output=go), cp, dtype),
                         want)


# ---- determinism and alignment ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_same_bits_over_100_calls(cp, dtype):
    n = 10**6 + 3
    rng = np.random.default_rng(seed_for("cuda-det", np.dtype(dtype).name))
    x, y = make_inputs("logits", (n,), dtype, rng, soft=True)
    w = make_weight("full", (n,), dtype, rng)
    gx, gy, gw = cp.asarray(x), cp.asarray(y), cp.asarray(w)
    first = [cp.asnumpy(a) for a in fastloss.binary_cross_entropy_with_logits_and_grad(
        gx, gy, weight=gw, pos_weight=0.5)]
    first_mse = cp.asnumpy(fastloss.mse_loss(gx, gy, reduction="sum"))
    for _ in range(100):
        again = fastloss.binary_cross_entropy_with_logits_and_grad(gx, gy, weight=gw,
                                                                   pos_weight=0.5)
        assert_same_bits(cp.asnumpy(again[0]), first[0], what="loss")
        assert_same_bits(cp.asnumpy(again[1]), first[1], what="grad")
        assert_same_bits(cp.asnumpy(fastloss.mse_loss(gx, gy, reduction="sum")), first_mse)


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
@pytest.mark.parametrize("n", [5, 4097, 300_001])
def test_alignment_never_changes_bits(cp, op, dtype, n):
    """A view starting one element in (contiguous, not 16-byte aligned) takes the scalar-load
    path; its results have the bits of the aligned copy's vector-load path."""
    rng = np.random.default_rng(seed_for("cuda-align", op.name, np.dtype(dtype).name, n))
    x, y = make_inputs(op.name, (n + 1,), dtype, rng, soft=True)
    w = make_weight("full", (n,), dtype, rng)
    gx, gy = cp.asarray(x)[1:], cp.asarray(y)[1:]
    assert gx.data.ptr % 16 != 0
    ax, ay = cp.ascontiguousarray(gx.copy()), cp.ascontiguousarray(gy.copy())
    assert ax.data.ptr % 16 == 0
    gw = cp.asarray(w)
    for reduction in REDUCTIONS:
        for weight in (None, gw):
            got = op.call_and_grad(gx, gy, weight, None, reduction)
            want = op.call_and_grad(ax, ay, weight, None, reduction)
            assert_same_bits(cp.asnumpy(got[0]), cp.asnumpy(want[0]), what="loss")
            assert_same_bits(cp.asnumpy(got[1]), cp.asnumpy(want[1]), what="grad")
    assert_same_bits(cp.asnumpy(fastloss.sigmoid(gx)), cp.asnumpy(fastloss.sigmoid(ax)))


# ---- edge values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_edge_values(cp, dtype):
    """Infinities, FLT_MAX, zeros, subnormals and NaN: the reference's values (the defined
    limits of BCE with logits at +-inf, PyTorch's clamped logs for BCE), like the CPU path."""
    for reduction in REDUCTIONS:
        for op, inp, t in _edge_inputs(dtype):
            gpu = op.call_and_grad(cp.asarray(inp), cp.asarray(t), None, None, reduction)
            cpu = op.call_and_grad(inp, t, None, None, reduction)
            loss, grad = _host(gpu[0], cp, dtype), _host(gpu[1], cp, dtype)
            ulps = reduction_ulp_bound(op.name, inp.size)
            try:
                ref_loss = op.reference_loss(inp, t, None, None, reduction)
            except OverflowError:  # math.fsum: the exact sum of these non-negative terms
                # exceeds DBL_MAX (two float64 losses of DBL_MAX): +inf, or NaN if one is NaN
                terms = op.reference_loss(inp, t, None, None, "none")
                ref_loss = math.nan if np.isnan(terms).any() else math.inf
            if reduction == "none":
                op.check_loss(loss, inp, t, reduction=reduction, what=f"{op.name} loss")
            else:
                assert_loss_matches(loss, ref_loss, dtype, reduction, what=f"{op.name} loss",
                                    max_ulps=ulps)
            op.check_grad(grad, inp, t, reduction=reduction, what=f"{op.name} grad")
            _assert_close_to_cpu(loss, cpu[0], dtype, reduction, f"{op.name} loss", max_ulps=ulps,
                                 atol=2 * op.loss_term_size(inp, t))
            _assert_close_to_cpu(grad, cpu[1], dtype, "none", f"{op.name} grad",
                                 atol=2 * ATOL[np.dtype(dtype)] * op.grad_term_size(
                                     inp, t, reduction=reduction))


def test_sigmoid_float32_dense_grid_and_subnormals(cp):
    """The accuracy claim of sigmoid (within 2 float32 ulp on [-88, 88]) holds on the GPU, and
    subnormal results are not flushed to zero (the kernels are compiled with -ftz=false)."""
    grid = np.linspace(-88.0, 88.0, 2_000_001, dtype=np.float32)
    out = _host(fastloss.sigmoid(cp.asarray(grid)), cp, np.float32)
    assert ulp_distance_f32(out, R.sigmoid(grid)).max() <= 2.0
    assert 0 < out[0] < np.finfo(np.float32).tiny


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_binary_cross_entropy_rejects_inputs_outside_unit_interval(cp, dtype):
    bce = OPS_BY_NAME["bce"]
    x = np.full(10_001, 0.5, dtype=dtype)
    y = np.zeros_like(x)
    for bad in (-1e-7, 1.0 + 1e-6, -np.inf):
        x[7777] = bad
        for kind in ("loss", "grad", "and_grad"):
            for reduction in REDUCTIONS:
                with pytest.raises(ValueError, match=r"\[0, 1\]"):
                    getattr(bce, "call_" + kind)(cp.asarray(x), cp.asarray(y),
                                                 reduction=reduction)
    x[7777] = np.nan  # NaN propagates, like the CPU path
    assert math.isnan(float(bce.call_loss(cp.asarray(x), cp.asarray(y))))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_ids)
def test_sigmoid_backward_rejects_outputs_outside_unit_interval(cp, dtype):
    """As on the CPU: an output outside [0, 1] is no sigmoid output (the kernel flags it);
    0, 1 and NaN are outputs."""
    g = np.ones(10_001, dtype=dtype)
    s = np.full(10_001, 0.25, dtype=dtype)
    for bad in (-1e-7, 1.0 + 1e-6, np.inf, -3.0):
        s[7777] = bad
        with pytest.raises(ValueError, match=r"^output must hold sigmoid outputs in \[0, 1\]"):
            fastloss.sigmoid_backward(cp.asarray(g), cp.asarray(s))
    s[7777], s[0], s[-1] = np.nan, 0.0, 1.0
    b = _host(fastloss.sigmoid_backward(cp.asarray(g), cp.asarray(s)), cp, dtype)
    assert_elementwise_close(b, R.sigmoid_backward(g, s), dtype, what="sigmoid_backward")


def test_sigmoid_backward_reads_the_kernels_range_flag(fake_cupy, monkeypatch):
    """The flag the kernel sets (here by a stand-in kernel that sets it) becomes the
    dispatch's ValueError; it is allocated on the input's device like everything else."""
    g, s = _to_fake_device(fake_cupy, 1, np.ones(50, np.float32), np.full(50, 0.5, np.float32))
    fastloss.sigmoid_backward(g, s)
    launch = fake_cupy.kernel

    def flagging_kernel(family, dtype_name, name, device):
        run = launch(family, dtype_name, name, device)

        def flagged(grid, block, args):
            run(grid, block, args)
            args[-1][0] = 1  # the out_of_range flag: the kernel's last argument
        return flagged

    monkeypatch.setattr(_cuda, "_kernel", flagging_kernel)
    fake_cupy.log.clear()
    with pytest.raises(ValueError, match=r"^output must hold sigmoid outputs in \[0, 1\]"):
        fastloss.sigmoid_backward(g, s)
    assert _off_device(fake_cupy, 1) == []


# ---- argument checks -----------------------------------------------------------------------

LOSS_FUNCTIONS = [(f"{op.name}.{kind}", getattr(op, kind), op)
                  for op in OPS for kind in ("loss", "grad", "and_grad")]
LOSS_IDS = [name for name, _, _ in LOSS_FUNCTIONS]


@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
def test_mixed_cpu_and_gpu_arrays(cp, name, fn, op):
    x, y = make_inputs(op.name, (4, 3), np.float32, np.random.default_rng(0), soft=True)
    gx, gy = cp.asarray(x), cp.asarray(y)
    with pytest.raises(TypeError):
        fn(gx, y)
    with pytest.raises(TypeError):
        fn(x, gy)
    with pytest.raises(TypeError):
        fn(gx, gy, weight=np.ones(3, np.float32))
    with pytest.raises(TypeError):
        fn(x, y, weight=cp.ones(3, dtype=np.float32))
    if name.endswith("grad"):
        with pytest.raises(TypeError):
            fn(gx, gy, out=np.empty((4, 3), np.float32))
        with pytest.raises(TypeError):
            fn(x, y, out=cp.empty((4, 3), dtype=np.float32))
        with pytest.raises(TypeError):
            fn(gx, gy, reduction="none", grad_output=np.ones((4, 3), np.float32))
    if op.has_pos_weight:
        with pytest.raises(TypeError):
            fn(gx, gy, pos_weight=np.ones(3, np.float32))


def test_mixed_cpu_and_gpu_sigmoid(cp):
    x = np.ones(4, np.float32)
    with pytest.raises(TypeError):
        fastloss.sigmoid(cp.asarray(x), out=np.empty(4, np.float32))
    with pytest.raises(TypeError):
        fastloss.sigmoid(x, out=cp.empty(4, dtype=np.float32))
    with pytest.raises(TypeError):
        fastloss.sigmoid_backward(cp.asarray(x), x)
    with pytest.raises(TypeError):
        fastloss.sigmoid_backward(x, cp.asarray(x))


@pytest.mark.parametrize("name, fn, op", LOSS_FUNCTIONS, ids=LOSS_IDS)
def test_argument_errors(cp, name, fn, op):
    x, y = make_inputs(op.name, (4, 3), np.float32, np.random.default_rng(1), soft=True)
    gx, gy = cp.asarray(x), cp.asarray(y)
    for bad in ("int32", "float16", "float64"):
        with pytest.raises(TypeError, match=bad):
            fn(gx.astype(bad), gy)
        with pytest.raises(TypeError, match=bad):
            fn(gx, gy.astype(bad))
    with pytest.raises(ValueError) as info:
        fn(gx, cp.asarray(np.zeros((3, 4), np.float32)))
    assert "(4, 3)" in str(info.value) and "(3, 4)" in str(info.value)
    big_x = cp.asarray(np.zeros((8, 6), np.float32))
    big_y = cp.asarray(np.zeros((8, 6), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        fn(big_x[::2], big_y[::2])
    with pytest.raises(ValueError, match="contiguous"):
        fn(gx, big_y[:, :3][:4])
    with pytest.raises(ValueError, match="reduction"):
        fn(gx, gy, reduction="avg")
    with pytest.raises(ValueError, match="broadcast"):
        fn(gx, gy, weight=cp.ones(4, dtype=np.float32))
    with pytest.raises(TypeError, match="float64"):
        fn(gx, gy, weight=cp.ones(3, dtype=np.float64))
    if name.endswith("grad"):
        with pytest.raises(ValueError):
            fn(gx, gy, out=cp.empty((3, 4), dtype=np.float32))
        with pytest.raises(TypeError):
            fn(gx, gy, out=cp.empty((4, 3), dtype=np.float64))
        with pytest.raises(ValueError):
            fn(gx, gy, out=cp.empty((4, 6), dtype=np.float32)[:, ::2])
        with pytest.raises(ValueError, match="scalar"):
            fn(gx, gy, reduction="mean", grad_output=cp.ones((4, 3), dtype=np.float32))
        both = cp.empty(13, dtype=np.float32)
        with pytest.raises(ValueError, match="overlaps"):
            fn(both[:12].reshape(4, 3), gy, out=both[1:].reshape(4, 3))
        both[...] = 1
        with pytest.raises(ValueError, match="overlaps grad_output"):
            fn(gx, gy, reduction="none", grad_output=both[:12].reshape(4, 3),
               out=both[1:].reshape(4, 3))


def test_sigmoid_argument_errors(cp):
    with pytest.raises(TypeError, match="int32"):
        fastloss.sigmoid(cp.asarray(np.zeros(3, np.int32)))
    with pytest.raises(TypeError) as info:
        fastloss.sigmoid_backward(cp.asarray(np.ones(3, np.float32)),
                                  cp.asarray(np.ones(3, np.float64)))
    assert "float32" in str(info.value) and "float64" in str(info.value)
    with pytest.raises(ValueError) as info:
        fastloss.sigmoid_backward(cp.asarray(np.ones((2, 3))), cp.asarray(np.ones((3, 2))))
    assert "(2, 3)" in str(info.value) and "(3, 2)" in str(info.value)
    with pytest.raises(ValueError, match="contiguous"):
        fastloss.sigmoid(cp.asarray(np.ones((4, 4)))[:, 1])


def test_arrays_on_different_devices(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    with cp.cuda.Device(0):
        x = cp.asarray(np.ones(8, np.float32))
    with cp.cuda.Device(1):
        y = cp.asarray(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="device"):
        fastloss.mse_loss(x, y)


def test_inputs_on_another_device_than_the_current_one(cp):
    """Inputs on GPU 1 while GPU 0 is current: results on GPU 1, with the bits of the same call
    made with GPU 1 current (on a machine with one GPU, the stand-in tests above cover it)."""
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    shape = (37, 129)
    calls = []
    for op in OPS:
        rng = np.random.default_rng(seed_for("cuda-device-1", op.name))
        x, y = make_inputs(op.name, shape, np.float32, rng, soft=True)
        kw = {"weight": make_weight("trailing", shape, np.float32, rng)}
        if op.has_pos_weight:
            kw["pos_weight"] = make_weight("col", shape, np.float32, rng)
        go = np.asarray(rng.standard_normal(shape), np.float32)
        calls += [(op.and_grad, (x, y), dict(kw, reduction="mean")),
                  (op.and_grad, (x, y), dict(kw, reduction="none", grad_output=go))]
    calls.append((fastloss.sigmoid, (np.linspace(-5, 5, 1000, dtype=np.float32),), {}))

    def run(current):
        results = []
        for fn, args, kwargs in calls:
            with cp.cuda.Device(1):
                args = [cp.asarray(a) for a in args]
                kwargs = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v
                          for k, v in kwargs.items()}
            with cp.cuda.Device(current):
                result = fn(*args, **kwargs)
            results += list(result) if isinstance(result, tuple) else [result]
        return results

    for got, want in zip(run(0), run(1)):
        assert got.device.id == 1
        assert_same_bits(cp.asnumpy(got), cp.asnumpy(want))


def test_kernels_compile_once_per_module(cp, monkeypatch):
    x = cp.asarray(np.ones(100, np.float32))
    fastloss.mse_loss(x, x)  # compiled (or loaded from the disk cache) here at the latest
    fastloss.sigmoid(x)

    def fail(*args, **kwargs):
        raise AssertionError("compiled again")
    monkeypatch.setattr(_cuda, "nvrtc_compile", fail)
    monkeypatch.setattr(_cuda, "_module_file", fail)
    for _ in range(3):
        fastloss.mse_loss(x, x, reduction="sum")
        fastloss.mse_loss_and_grad(x, x, weight=0.5)
        fastloss.sigmoid(x)


def test_describe_with_a_device(cp):
    info = _cuda.describe()
    assert info["available"] is True
    for key in ("device_name", "sm_count", "memory_total_bytes", "compute_capability"):
        assert info[key], key


# ---- N > 2^31 ----------------------------------------------------------------------------

def test_the_2_to_the_31_test_is_opt_in():
    """Skipped without --largemem (before it asks for a device), like tests/test_large_arrays.py."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # CI's -n 2: one test here
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         f"{Path(__file__).resolve()}::test_more_than_2_to_the_31_elements"],
        cwd=root, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "run with --largemem" in result.stdout, result.stdout


@pytest.mark.largemem
def test_more_than_2_to_the_31_elements(cp):
    n = 2**31 + 5
    free, _ = cp.cuda.Device().mem_info
    if free < 21 * 2**30:
        pytest.skip(f"needs ~21 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    pattern = np.array([0.5, -1.25, 2.0, 3.0, -0.75, 1.5, -2.5], dtype=np.float32)
    x = cp.empty(n, dtype=np.float32)
    whole = n // 7 * 7
    x[:whole].reshape(-1, 7)[...] = cp.asarray(pattern)
    x[whole:] = cp.asarray(pattern[: n - whole])
    y = cp.zeros(n, dtype=np.float32)
    exact = math.fsum([(n // 7 + (k < n % 7)) * float(v) ** 2 for k, v in enumerate(pattern)])
    assert_reduction_close(_host(fastloss.mse_loss(x, y, reduction="sum"), cp, np.float32),
                           exact, np.float32, what="sum over 2^31 + 5")
    assert_reduction_close(_host(fastloss.mse_loss(x, y), cp, np.float32), exact / n,
                           np.float32, what="mean over 2^31 + 5")
    del y
    out = fastloss.sigmoid(x)
    expected = cp.asnumpy(fastloss.sigmoid(cp.asarray(pattern)))  # the small-N path's bits
    del x
    for start in range(0, n, 2**28):  # compared in slices: no 2 GB temporaries
        stop = min(n, start + 2**28)
        piece = cp.asnumpy(out[start:stop])
        want = np.resize(np.roll(expected, -(start % 7)), stop - start)
        assert_same_bits(piece, want, what=f"sigmoid[{start}:{stop}]")


# ---- float16 storage ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [37, 40003])
def test_float16_against_reference_and_cpu(cp, n):
    """CuPy float16 through the 16-bit kernels: the squared error and its gradient rounded once
    from double (the same bits as the CPU's), the float32-grade terms within half an ulp of
    the float64 reference plus 1e-8, reduced losses 0-d float16 arrays within half an ulp of
    the exact mean, and a value just above a half-way point stored rounded up."""
    from test_half import half_ulp_bound
    dtype = np.dtype(np.float16)
    rng = np.random.default_rng(seed_for("cuda-float16", n))
    x = (rng.standard_normal(n) * 3).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    labels = (rng.random(n) < 0.5).astype(dtype)
    x64, y64, l64 = (a.astype(np.float64) for a in (x, y, labels))
    gx, gy, gl = cp.asarray(x), cp.asarray(y), cp.asarray(labels)
    loss = fastloss.mse_loss(gx, gy, reduction="none")
    assert loss.dtype == dtype
    assert_same_bits(cp.asnumpy(loss), fastloss.mse_loss(x, y, reduction="none"), what="mse none")
    grad = fastloss.mse_loss_grad(gx, gy, reduction="none", grad_output=0.7431)
    assert_same_bits(cp.asnumpy(grad), fastloss.mse_loss_grad(x, y, reduction="none",
                                                               grad_output=0.7431), what="mse grad")
    mean = fastloss.mse_loss(gx, gy)
    assert mean.shape == () and mean.dtype == dtype
    exact = math.fsum(((x64 - y64) ** 2).tolist()) / n
    assert half_ulp_bound(cp.asnumpy(mean), exact, dtype, relative=1e-12)
    z = cp.asnumpy(fastloss.binary_cross_entropy_with_logits(gx, gl, reduction="none"))
    assert half_ulp_bound(z, R.binary_cross_entropy_with_logits(x64, l64, reduction="none"), dtype)
    s = cp.asnumpy(fastloss.sigmoid(gx))
    assert half_ulp_bound(s, 1.0 / (1.0 + np.exp(-x64)), dtype)
    s64 = s.astype(np.float64)
    bce = cp.asnumpy(fastloss.binary_cross_entropy_grad(cp.asarray(s), gl, reduction="none"))
    assert half_ulp_bound(bce, R.binary_cross_entropy_grad(s64, l64, reduction="none"), dtype)
    back = cp.asnumpy(fastloss.sigmoid_backward(gy, cp.asarray(s)))
    assert half_ulp_bound(back, y64 * s64 * (1 - s64), dtype)
    above = fastloss.mse_loss_grad(cp.ones(n, dtype), cp.zeros(n, dtype), reduction="sum",
                                   grad_output=(1.0 + 2.0 ** -11 + 2.0 ** -40) / 2)
    assert bool(cp.all(above == dtype.type(1.0 + 2.0 ** -10)))


def test_float16_with_float32_is_a_type_error(cp):
    x = cp.zeros((4, 3), dtype=cp.float16)
    with pytest.raises(TypeError, match="^target has dtype float32 but input has dtype float16"):
        fastloss.mse_loss(x, cp.zeros((4, 3), dtype=cp.float32))
    # the multi-class kernels take float16 too (tests/test_cuda_multiclass.py), not mixed
    with pytest.raises(TypeError, match="^target has dtype float32 but input has dtype float16"):
        fastloss.cross_entropy(x, cp.full((4, 3), 1 / 3, dtype=cp.float32))
    with pytest.raises(TypeError, match="^out has dtype float32 but input has dtype float16"):
        fastloss.softmax(x, dim=1, out=cp.empty((4, 3), dtype=cp.float32))
