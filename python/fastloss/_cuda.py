"""The CuPy backend: CUDA kernels compiled at run time from the installed ``cuda/losses.cu``
(and ``cuda/multiclass.cu``, the multi-class family),
behind the interface ``fastloss._dispatch`` expects of a backend (which validates everything
but the memory). Nothing is ever copied silently: an array that is not C-contiguous is a
``ValueError`` (make it contiguous with ``cupy.ascontiguousarray``), and every array of a call
is on the input's device, where the call allocates and launches. This module never imports
the CPU backend.

The per-element math and the body of a loss pass are the shared headers ``fastloss/*.h``
(installed under ``fastloss/include``), the same code the C++ kernels run. The kernels are compiled on first use
with NVRTC, one module per (loss, dtype) and one per dtype for the sigmoids, for the current
device's architecture, and cached in memory and on disk (``$FASTLOSS_CUDA_CACHE_DIR``, default
``~/.cache/fastloss/cuda``): a call never compiles once its module exists.

Why NVRTC directly and not ``cupy.RawModule(code=...)``: CuPy always appends ``-ftz=true`` to
the options of code it compiles, which flushes float32 subnormals to zero (sigmoid(-88) would
be 0, and binary_cross_entropy of a subnormal probability would take log(0)). The kernels must
compute what the header defines, so they are compiled with IEEE float32 semantics
(``-ftz=false``, the NVRTC default) and loaded with ``cupy.RawModule(path=...)``.

Synchronisation: none, except (1) binary_cross_entropy and its gradient read back one int
after the kernel to raise ``ValueError`` for inputs outside [0, 1] (like the CPU path),
(2) a 0-d CuPy ``grad_output`` is read to the host once, and (3) ``loss_partial`` (a Dask block's
partial sum) reads its (hi, lo) back. Reduced losses are 0-d CuPy arrays of the input dtype,
reduced with the CPU's double-double arithmetic and rounded once, all on the device
(cuda/losses.cu: the same bits as the CPU wherever the per-element terms are).

Importing this module does not import CuPy: ``kernel_sources_and_options`` works without it
(the compile test uses it), and ``fastloss._dispatch`` imports this module only for arrays
whose type comes from CuPy.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import _codes

# ---- the kernels: source, options, instantiations -----------------------------------------------

# Threads per block (must equal kThreads in cuda/losses.cu) and the most blocks of a launch.
# The grid is a function of N alone (not of the device): a reduction's summation order, and so
# its bits, is the same on every GPU; each thread walks the array with a grid stride. As the
# grid cannot be sized to a device's resident blocks, it is made many waves deep, so the
# ragged last one costs little: the kernels use 30-64 registers (4-8 resident blocks of 256
# per SM), which on an H100 (132 SMs) makes 8192 blocks 7.8-15.5 waves, at least 94% of the
# time of whole waves (1024 blocks were 1.3-1.9 waves: down to 65%). tests/test_cuda.py checks this
# against ptxas's register counts, and that no kernel spills.
THREADS = 256
MAX_BLOCKS = 8192
# Each thread reads groups of consecutive elements with one 16-byte load per array (4 float32 or
# 2 float64; float16 groups are 4 halves, one 8-byte load). Both numbers reach cuda/losses.cu as
# -D options (kernel_sources_and_options).
GROUP_BYTES = 16

_CTYPE = {"float32": "float", "float64": "double", "float16": "fastloss::gpu::Float16"}
# The storage dtypes of each source's kernels (float16: fastloss/device_half.h's Float16, read
# and written as 16 bits, computed as float32 is).
_DTYPES = {"losses.cu": ("float32", "float64", "float16"),
           "multiclass.cu": ("float32", "float64", "float16")}


def _loss_pass_name(dtype_name, op, outputs, weighted):
    return (f"fastloss::gpu::loss_pass<{_CTYPE[dtype_name]}, {op}, {outputs}, "
            f"{'true' if weighted else 'false'}>")


# Rows of up to this many classes are taken by a warp each, longer ones by a whole block
# (cuda/multiclass.cu): a warp-wide row of 1024 classes is 32 elements per thread.
WARP_ROWS_UP_TO = 1024
_GROUPS = (32, THREADS)  # the kGroup instantiations: a warp, a block

# The modules compiled from cuda/multiclass.cu; every other family is from cuda/losses.cu.
_MULTICLASS_FAMILIES = ("rows", "cross_entropy", "activations")


def _multiclass_names(family, ctype):
    if family == "rows":
        return [f"fastloss::gpu::row_pass<{ctype}, {op}, {group}>"
                for op in _codes.ROW_OPS for group in _GROUPS]
    if family == "activations":
        return [f"fastloss::gpu::activation<{ctype}, {op}>" for op in _codes.ACTIVATIONS]
    return ([f"fastloss::gpu::check_targets<{ctype}, long long>",
             f"fastloss::gpu::check_targets<{ctype}, int>",
             f"fastloss::gpu::finish_pairs<{ctype}>"]
            + [_cross_entropy_name(ctype, outputs, kind, group)
               for outputs in _codes.PASS_OUTPUTS for kind in _codes.TARGET_KINDS
               for group in _GROUPS])


def _cross_entropy_name(ctype, outputs, kind, group):
    return f"fastloss::gpu::cross_entropy<{ctype}, {outputs}, {kind}, {group}>"


def _source_name(family):
    return "multiclass.cu" if family in _MULTICLASS_FAMILIES else "losses.cu"


def _module_names(family, dtype_name):
    """The name expressions of one run-time module: family 'loss<op>' or 'sigmoid' (from
    losses.cu), or 'rows', 'cross_entropy', 'activations' (from multiclass.cu)."""
    ctype = _CTYPE[dtype_name]
    if family in _MULTICLASS_FAMILIES:
        return _multiclass_names(family, ctype)
    if family == "sigmoid":
        return [f"fastloss::gpu::sigmoid<{ctype}>", f"fastloss::gpu::sigmoid_backward<{ctype}>"]
    op = int(family[len("loss"):])
    names = [_loss_pass_name(dtype_name, op, outputs, weighted)
             for outputs in _codes.PASS_OUTPUTS for weighted in (False, True)]
    names.append(f"fastloss::gpu::finish_sum<{ctype}>")
    return names


_FAMILIES = tuple(f"loss{op}" for op in _codes.LOSS_OPS) + ("sigmoid",)
_ALL_FAMILIES = _FAMILIES + _MULTICLASS_FAMILIES


def _source_tree_root():
    return Path(__file__).resolve().parents[2]  # python/fastloss/_cuda.py -> the checkout


def _installed_path(*parts):
    """A file or directory shipped inside the fastloss package, or None (source checkout)."""
    try:
        from importlib.resources import files
        path = Path(os.fspath(files("fastloss").joinpath(*parts)))
    except (TypeError, ValueError, ModuleNotFoundError, NotImplementedError):
        return None
    return path if path.exists() else None


def cuda_source_path(name: str = "losses.cu") -> Path:
    """``name`` (losses.cu, multiclass.cu): installed as ``fastloss/cuda/<name>``, else the
    checkout's ``cuda/``."""
    installed = _installed_path("cuda", name)
    if installed is not None:
        return installed
    checkout = _source_tree_root() / "cuda" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(
        f"fastloss CUDA sources not found: expected fastloss/cuda/{name} in the installed "
        f"package or {checkout} in a source checkout")


def include_dir() -> Path:
    """The directory holding ``fastloss/elementwise.h`` (passed to the compiler with -I)."""
    installed = _installed_path("include")
    if installed is not None and (installed / "fastloss" / "elementwise.h").is_file():
        return installed
    checkout = _source_tree_root() / "csrc" / "include"
    if (checkout / "fastloss" / "elementwise.h").is_file():
        return checkout
    raise FileNotFoundError(
        "fastloss headers not found: expected fastloss/include/fastloss/elementwise.h in the "
        f"installed package or {checkout}/fastloss/elementwise.h in a source checkout")


def kernel_sources_and_options(name: str = "losses.cu"):
    """``(source, options, name_expressions)`` exactly as the run-time compile uses them.

    ``source`` is the text of ``name`` (``losses.cu``, or ``multiclass.cu``: the same options,
    the name expressions of its own modules); ``options`` the NVRTC options (also valid for
    ``nvcc``), to which the run-time path adds only the target architecture
    (``--gpu-architecture=sm_XY`` or ``compute_XY``); ``name_expressions`` every kernel
    instantiation any run-time module asks for (each module compiles a subset of them, from
    the same source with the same options). Needs no CuPy and no GPU.
    """
    source = cuda_source_path(name).read_text(encoding="utf-8")
    options = (
        "-std=c++17",
        "-I" + str(include_dir()),
        # IEEE semantics, spelled out: no flush-to-zero of float32 subnormals, correctly
        # rounded division and square root. Never -use_fast_math (the reduction and the
        # header's error bounds assume IEEE arithmetic). No FMA contraction either: every
        # per-element value is then the header's exact IEEE operation sequence, the same as
        # in the CPU path's portable (SSE2, FMA-free) build, whose bits the elementwise
        # results reproduce (tests/test_cuda.py); loss_and_grad and separate calls agree too.
        "-ftz=false",
        "-prec-div=true",
        "-prec-sqrt=true",
        "-fmad=false",
        f"-DFASTLOSS_CUDA_THREADS={THREADS}",
        f"-DFASTLOSS_CUDA_GROUP_BYTES={GROUP_BYTES}",
    )
    names = []
    for dtype_name in _DTYPES[name]:
        for family in _ALL_FAMILIES:
            if _source_name(family) != name:
                continue
            for expression in _module_names(family, dtype_name):
                if expression not in names:
                    names.append(expression)
    return source, options, names


# ---- compiling and loading -----------------------------------------------------------------------

class CompileError(RuntimeError):
    """NVRTC rejected cuda/losses.cu (the message holds the compiler log)."""


def _nvrtc_target(arch):
    """(option, kind) for compute capability ``arch`` (an int such as 90): a cubin when this
    NVRTC can generate code for it, else PTX for the newest virtual architecture it knows that
    the device can run (the driver compiles that PTX on load)."""
    from cupy.cuda import nvrtc
    try:
        supported = tuple(int(a) for a in nvrtc.getSupportedArchs())
    except Exception:  # very old NVRTC: no query; PTX for the device's own architecture
        return f"--gpu-architecture=compute_{arch}", "ptx"
    if arch in supported:
        return f"--gpu-architecture=sm_{arch}", "cubin"
    older = [a for a in supported if a <= arch]
    return f"--gpu-architecture=compute_{max(older) if older else arch}", "ptx"


def nvrtc_compile(source, options, name_expressions, arch, kind=None, file_name="losses.cu"):
    """Compiles with NVRTC (via ``cupy.cuda.nvrtc``; works without a GPU).

    ``arch`` is a compute capability as an int (90 for sm_90); ``kind`` None picks what the
    run-time path loads (a cubin if this NVRTC supports ``arch``, else PTX), 'ptx' forces PTX
    for ``compute_<arch>``. Returns ``(binary, kind, lowered)``: the cubin (whole: see
    ``complete_cubin``; PTX when it cannot be made whole) or PTX bytes, 'cubin' or 'ptx', and
    the mangled name of each name expression. Raises CompileError with the log.
    """
    from cupy.cuda import nvrtc
    if kind == "ptx":
        target = f"--gpu-architecture=compute_{int(arch)}"
    elif kind is None:
        target, kind = _nvrtc_target(int(arch))
    else:
        raise ValueError(f"kind must be None or 'ptx', got {kind!r}")
    program = nvrtc.createProgram(source, file_name, [], [])
    try:
        for name in name_expressions:
            nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, list(options) + [target])
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise CompileError(f"NVRTC failed to compile cuda/{file_name} ({error}) with options "
                               f"{list(options) + [target]}:\n{log}") from None
        binary = None
        if kind == "cubin":
            binary = complete_cubin(nvrtc.getCUBIN(program))
            if binary is None:  # not whole for certain: the driver compiles the PTX instead
                kind = "ptx"
        if binary is None:
            binary = nvrtc.getPTX(program)
        if isinstance(binary, str):
            binary = binary.encode()
        lowered = {name: nvrtc.getLoweredName(program, name) for name in name_expressions}
    finally:
        nvrtc.destroyProgram(program)
    return binary, kind, lowered


_SHT_NOBITS = 8  # a section that occupies no bytes of the file (.bss and the like)


def _elf_layout(image):
    """``(size, table_ends)`` of a 64-bit little-endian ELF image, or None when ``image`` does
    not start with such headers. ``size`` is the length its headers give it (the end of its
    last header table, section or segment); ``table_ends`` maps the end offset of the program
    and the section header table to the size of one entry."""
    if len(image) < 64 or image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        return None
    phoff, shoff = struct.unpack_from("<QQ", image, 32)
    ehsize, phentsize, phnum, shentsize, shnum = struct.unpack_from("<5H", image, 52)
    table_ends = {phoff + phnum * phentsize: phentsize, shoff + shnum * shentsize: shentsize}
    ends = [ehsize, *table_ends]
    # Only fields that end at least 16 bytes before their entry does are read, so a table cut
    # short by a byte still gives every entry.
    try:
        for i in range(shnum):
            entry = shoff + i * shentsize
            (sh_type,) = struct.unpack_from("<I", image, entry + 4)
            sh_offset, sh_size = struct.unpack_from("<QQ", image, entry + 24)
            if sh_type != _SHT_NOBITS:
                ends.append(sh_offset + sh_size)
        for i in range(phnum):
            entry = phoff + i * phentsize
            (p_offset,) = struct.unpack_from("<Q", image, entry + 8)
            (p_filesz,) = struct.unpack_from("<Q", image, entry + 32)
            ends.append(p_offset + p_filesz)
    except struct.error:  # a table starts past the end of the image
        return None
    return max(ends), table_ends


def elf_image_size(image):
    """The length an ELF image's headers give it, or None when it is not a 64-bit
    little-endian ELF image (a cubin is one)."""
    layout = _elf_layout(image)
    return None if layout is None else layout[0]


def complete_cubin(image):
    """The whole cubin from what ``cupy.cuda.nvrtc.getCUBIN`` returned, or None.

    CuPy (14.2 at least) drops the image's last byte, taking it for the NUL that ends PTX text;
    a cubin file one byte short is read past its end or rejected when the driver loads it. The
    byte is known when the image ends with its program or section header table: it is the
    most significant byte of the last entry's p_align or sh_entsize, 8-byte little-endian
    fields that are 0 there for any value below 2**56. An image its headers say is whole (a
    CuPy that keeps the byte) is returned as it is; any other is None (not repairable for
    certain).
    """
    layout = _elf_layout(image)
    if layout is None:
        return None
    size, table_ends = layout
    if size == len(image):
        return image
    if size == len(image) + 1 and table_ends.get(size) in (56, 64):  # Elf64_Phdr, Elf64_Shdr
        return image + b"\0"
    return None


# Part of the disk cache key: bumped whenever what a cached file holds changes meaning, so that
# files an older fastloss wrote are never loaded. 2: cubins are whole (1: one byte short).
_CACHE_FORMAT = 2


def _cache_dir():
    configured = os.environ.get("FASTLOSS_CUDA_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastloss" / "cuda"


def _headers_fingerprint(include):
    digest = hashlib.sha256()
    for path in sorted((include / "fastloss").glob("*.h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


_private_dir = None


def _write_atomically(directory, name, data):
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _module_file(family, dtype_name, arch):
    """Path of the compiled module (cubin/ptx) and its name -> mangled name map, compiling
    it unless the disk cache already has it."""
    global _private_dir
    from cupy.cuda import nvrtc
    source, options, _ = kernel_sources_and_options(_source_name(family))
    names = _module_names(family, dtype_name)
    target, _ = _nvrtc_target(int(arch))
    key = hashlib.sha256(json.dumps([
        _CACHE_FORMAT, source, _headers_fingerprint(include_dir()), list(options), names,
        target, list(nvrtc.getVersion())]).encode()).hexdigest()[:40]
    map_name = f"{key}.json"
    cache = _cache_dir()
    try:
        lowered = json.loads((cache / map_name).read_text())
        if set(lowered) == set(names):
            # a cubin, or PTX where the cubin could not be made whole (complete_cubin)
            for kind in ("cubin", "ptx"):
                path = cache / f"{key}.{kind}"
                if path.is_file() and (kind == "ptx" or _is_whole_elf(path.read_bytes())):
                    return path, lowered
    except (OSError, ValueError):
        pass
    binary, kind, lowered = nvrtc_compile(source, options, names, arch,
                                          file_name=_source_name(family))
    binary_name = f"{key}.{kind}"
    for directory in (cache, None):
        if directory is None:  # the cache is not writable: a private directory for this process
            if _private_dir is None:
                _private_dir = Path(tempfile.mkdtemp(prefix="fastloss-cuda-"))
                atexit.register(shutil.rmtree, _private_dir, ignore_errors=True)
            directory = _private_dir
        try:
            _write_atomically(directory, binary_name, binary)
            _write_atomically(directory, map_name, json.dumps(lowered).encode())
            return directory / binary_name, lowered
        except OSError:
            if directory is _private_dir:
                raise
    raise AssertionError("unreachable")


def _is_whole_elf(image):
    return elf_image_size(image) == len(image)


_kernels: dict[tuple, dict] = {}  # (family, dtype, arch) -> {name expression: cupy.RawKernel}
_kernels_lock = threading.Lock()


def _kernel(family, dtype_name, name, device):
    """The RawKernel for name expression ``name`` on ``device`` (compiled once per module)."""
    arch = device.compute_capability  # e.g. '90'
    key = (family, dtype_name, arch)
    module = _kernels.get(key)
    if module is None:
        with _kernels_lock:
            module = _kernels.get(key)
            if module is None:
                import cupy
                path, lowered = _module_file(family, dtype_name, arch)
                raw = cupy.RawModule(path=str(path))
                module = {expr: raw.get_function(mangled) for expr, mangled in lowered.items()}
                _kernels[key] = module
    return module[name]


# Elements per group (each kernel's Vec<T>::kWidth): 16 bytes of float32 or float64, 8 of float16
# (16 spilled registers in the unrolled double math: cuda/losses.cu).
_GROUP_ELEMENTS = {"float32": GROUP_BYTES // 4, "float64": GROUP_BYTES // 8, "float16": 4}


def _grid(n, dtype_name):
    groups = -(-n // _GROUP_ELEMENTS[dtype_name])
    return max(1, min(MAX_BLOCKS, -(-groups // THREADS)))


# ---- the backend interface (fastloss._dispatch has validated everything else) ----------------

ARRAY = "cupy.ndarray"
WHERE = "the same GPU"
MOVE_HINT = "move it with cupy.asarray"
# float16 in the elementwise losses and sigmoid (cuda/losses.cu) and in the row functions,
# cross_entropy, tanh and relu (cuda/multiclass.cu); CuPy has no bfloat16
HALF_DTYPES: tuple[str, ...] = ("float16",)
ROW_HALF_DTYPES: tuple[str, ...] = ("float16",)


class ProbabilityOutOfRange(ValueError):
    """binary_cross_entropy found an input outside [0, 1], or sigmoid_backward an output there
    (the dispatch words the error)."""


def _cupy():
    import cupy
    return cupy


def array_module():
    return _cupy()


def is_array(obj):
    return isinstance(obj, _cupy().ndarray)


def elsewhere(obj):
    return "a numpy.ndarray" if isinstance(obj, np.ndarray) else None


def on_device_of(array):
    # CuPy allocates on the current device, which need not be the input's: every buffer of a
    # call (outputs, the loss, weight buffers, weight * grad_output) and every launch go there.
    return array.device


def same_device(a, b):
    return a.device.id == b.device.id


def device_name(a):
    return f"GPU {a.device.id}"


def address(a):
    return a.data.ptr


def writeable(a):
    return True


def readable(a, name):
    # a misaligned load faults on the GPU (DLPack and __cuda_array_interface__ can deliver
    # any address), in the kernels and in CuPy's own (tile, multiply)
    if a.data.ptr % a.itemsize:
        raise ValueError(f"{name} is not aligned to its element size")


def contiguous(a, name):
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous; fastloss does not copy arrays on the GPU: "
                         f"pass cupy.ascontiguousarray({name}) (one copy) instead")
    readable(a, name)
    return a


def _weight_args(weight, pos_weight, ones):
    """Kernel arguments (weight, period, pos_weight, period) and whether the pass is weighted."""
    if weight is None and pos_weight is None:
        return (None, np.int64(1), None, np.int64(1)), False
    if weight is None:
        weight = ones
    if pos_weight is None:
        pos_weight = ones
    return (weight, np.int64(weight.size), pos_weight, np.int64(pos_weight.size)), True


def _run_pass(op, outputs, input, target, weight, pos_weight, grad_scale, loss_out, grad_out):
    """Launches the loss pass of ``outputs`` over ``input`` (``grad_scale``: the gradient's
    whole scale). Returns ``(partials, count, flag)``: for Sum* the blocks' (hi, lo) pairs, 2
    count doubles, else None; the probability flag of binary_cross_entropy, else None. An
    empty input launches nothing (count 0)."""
    cp = _cupy()
    dtype_name = input.dtype.name
    n = input.size
    want_sum = outputs in (_codes.SUM, _codes.SUM_AND_GRAD)
    if n == 0:
        return None, 0, None
    ones = None
    if (weight is None) != (pos_weight is None):
        ones = cp.ones((1,), dtype=input.dtype)
    weight_args, weighted = _weight_args(weight, pos_weight, ones)
    blocks = _grid(n, dtype_name)
    partials = cp.empty((2 * blocks,), dtype=cp.float64) if want_sum else None
    flag = cp.zeros((1,), dtype=cp.int32) if op == _codes.BINARY_CROSS_ENTROPY else None
    kernel = _kernel(f"loss{op}", dtype_name, _loss_pass_name(dtype_name, op, outputs, weighted),
                     input.device)
    # None is passed as a NULL pointer (those outputs are compiled out of the kernel)
    kernel((blocks,), (THREADS,), (np.int64(n), input, target, *weight_args, loss_out,
                                   grad_out, np.float64(grad_scale), partials, flag))
    return partials, blocks, flag


def _finish_sum(op, input, partials, count, mean, loss, sum_out):
    """Adds the pass's ``count`` block partials on the device (cuda/losses.cu finish_sum, one
    block, in an order fixed by N): into ``loss`` (a 0-d array of the input's dtype, or None)
    the total divided by N for ``mean`` and rounded once as the CPU rounds it; into
    ``sum_out`` (2 float64, or None) the normalized total (hi, lo).

    On the device rather than on the host from the partials array: a reduced loss then needs no
    synchronisation (it stays a 0-d device array and the stream runs on), and ``loss_partial``
    reads back 16 bytes instead of up to 128 KiB of partials followed by 8192 double-double
    additions in Python (``fastloss._dd.total``: 2.8 ms on Zen 5). The cost is one launch of
    one block (a few microseconds), as before this reduction."""
    dtype_name = input.dtype.name
    finish = _kernel(f"loss{op}", dtype_name, f"fastloss::gpu::finish_sum<{_CTYPE[dtype_name]}>",
                     input.device)
    finish((1,), (THREADS,), (partials, np.int64(count), np.int64(input.size),
                              np.int32(1 if mean else 0), loss, sum_out))


def _raise_if_flagged(flag):
    if flag is not None and int(flag.get()[0]):  # a host synchronisation (BCE only)
        raise ProbabilityOutOfRange()


def loss_pass(op, outputs, mean, input, target, weight, pos_weight, grad_output, out):
    """One pass of ``outputs`` on the device (called under ``on_device_of(input)``): the loss
    (a 0-d array of the input's dtype for Sum*: the blocks' double-double partials added on
    the device, divided by N as a double-double when ``mean`` and rounded once, so the exact
    sum or mean of the terms correctly rounded, as on the CPU: cuda/losses.cu; an array for
    Elementwise*), the gradient (into ``out`` or a new array, times grad_output, / N when
    ``mean``), or (loss, gradient). No host synchronisation, except that the probability check
    of binary_cross_entropy reads one int back."""
    cp = _cupy()
    n = input.size
    loss_out = (cp.empty(input.shape, dtype=input.dtype)
                if outputs in (_codes.ELEMENTWISE, _codes.ELEMENTWISE_AND_GRAD) else None)
    grad_out = None
    if outputs in (_codes.SUM_AND_GRAD, _codes.ELEMENTWISE_AND_GRAD, _codes.GRAD):
        grad_out = cp.empty(input.shape, dtype=input.dtype) if out is None else out
    scale = grad_output / n if mean and n > 0 else grad_output
    partials, count, flag = _run_pass(op, outputs, input, target, weight, pos_weight, scale,
                                      loss_out, grad_out)
    loss = loss_out
    if outputs in (_codes.SUM, _codes.SUM_AND_GRAD):
        loss = cp.empty((), dtype=input.dtype)
        _finish_sum(op, input, partials, count, mean, loss, None)
    _raise_if_flagged(flag)
    if grad_out is None:
        return loss
    return grad_out if loss is None else (loss, grad_out)


def loss_partial(op, outputs, input, target, weight, pos_weight, grad_scale):
    """One block of a larger array (the Dask family; called under ``on_device_of(input)``),
    with the contract of the NumPy backend's: ``outputs`` SUM gives ``(hi, lo)``, the block's
    sum unrounded, a normalized double-double of Python floats; SUM_AND_GRAD ``(hi, lo,
    gradient)``, the gradient (a new CuPy array) times ``grad_scale`` as given (the caller
    divides by the whole array's N). The same double-double arithmetic as the CPU's, so
    partials added by ``fastloss._dd`` and rounded once have the bits of the whole array's
    reduced loss, on either backend (cuda/losses.cu says when). Reading (hi, lo) back is a host
    synchronisation (16 bytes; the partials are added on the device, not here)."""
    cp = _cupy()
    if outputs not in (_codes.SUM, _codes.SUM_AND_GRAD):
        raise ValueError(f"loss_partial takes outputs SUM or SUM_AND_GRAD, got {outputs!r}")
    grad_out = (cp.empty(input.shape, dtype=input.dtype) if outputs == _codes.SUM_AND_GRAD
                else None)
    partials, count, flag = _run_pass(op, outputs, input, target, weight, pos_weight,
                                      grad_scale, None, grad_out)
    total = cp.zeros((2,), dtype=cp.float64)
    _finish_sum(op, input, partials, count, False, None, total)
    _raise_if_flagged(flag)
    hi, lo = (float(v) for v in total.get())
    return (hi, lo) if grad_out is None else (hi, lo, grad_out)


def sigmoid(input, out):
    cp = _cupy()
    out = cp.empty(input.shape, dtype=input.dtype) if out is None else out
    n = input.size
    if n:
        dtype_name = input.dtype.name
        kernel = _kernel("sigmoid", dtype_name, f"fastloss::gpu::sigmoid<{_CTYPE[dtype_name]}>",
                         input.device)
        kernel((_grid(n, dtype_name),), (THREADS,), (np.int64(n), input, out))
    return out


def sigmoid_backward(grad_output, output, out):
    """The gradient into ``out`` or a new array; reads one int back (a synchronisation) to
    raise ProbabilityOutOfRange for an output outside [0, 1], which the kernel flags."""
    cp = _cupy()
    out = cp.empty(grad_output.shape, dtype=grad_output.dtype) if out is None else out
    n = grad_output.size
    if n:
        dtype_name = grad_output.dtype.name
        kernel = _kernel("sigmoid", dtype_name,
                         f"fastloss::gpu::sigmoid_backward<{_CTYPE[dtype_name]}>",
                         grad_output.device)
        flag = cp.zeros((1,), dtype=cp.int32)
        kernel((_grid(n, dtype_name),), (THREADS,), (np.int64(n), grad_output, output, out,
                                                     flag))
        if int(flag.get()[0]):
            raise ProbabilityOutOfRange()
    return out


# ---- the multi-class family (cuda/multiclass.cu) ---------------------------------------------------

class ClassIndexOutOfRange(ValueError):
    """cross_entropy found a class index outside [0, C) (args: row, index; the dispatch words
    it). Raised before the loss pass runs: nothing is written."""


def _row_grid(rows, group):
    """Blocks for ``rows`` rows, a warp or a block each: a function of the row count only."""
    per_block = THREADS // group
    return max(1, min(MAX_BLOCKS, -(-rows // per_block)))


def _group(classes):
    return 32 if classes <= WARP_ROWS_UP_TO else THREADS


def row_pass(op, first, second, shape, out):
    cp = _cupy()
    out = cp.empty(first.shape, dtype=first.dtype) if out is None else out
    outer, classes, inner = shape
    rows = outer * inner
    if rows and classes:
        dtype_name = first.dtype.name
        group = _group(classes)
        kernel = _kernel("rows", dtype_name,
                         f"fastloss::gpu::row_pass<{_CTYPE[dtype_name]}, {op}, {group}>",
                         first.device)
        kernel((_row_grid(rows, group),), (THREADS,),
               (np.int64(rows), np.int64(classes), np.int64(inner), first, second, out))
    return out


def _cross_entropy_run(outputs, target_kind, mean, input, target, weight, ignore_index,
                       label_smoothing, grad_output, out, shape, loss_shape):
    """The passes of one cross-entropy call on the device: (loss sums' block pairs, their
    count, the divisor pair, the per-row losses, the gradient). Class indices are checked first
    on the device; reading that check back is the call's one host synchronisation."""
    cp = _cupy()
    dtype_name = input.dtype.name
    ctype = _CTYPE[dtype_name]
    device = input.device
    outer, classes, inner = shape
    rows = outer * inner
    want_sum = outputs in (_codes.SUM, _codes.SUM_AND_GRAD)
    loss_out = (cp.empty(tuple(loss_shape), dtype=input.dtype)
                if outputs in (_codes.ELEMENTWISE, _codes.ELEMENTWISE_AND_GRAD) else None)
    grad_out = None
    if outputs in (_codes.SUM_AND_GRAD, _codes.ELEMENTWISE_AND_GRAD, _codes.GRAD):
        grad_out = cp.empty(input.shape, dtype=input.dtype) if out is None else out
    divisor = cp.zeros((2,), dtype=cp.float64)  # a normalized double-double
    if target_kind == _codes.PROBABILITIES:
        divisor[0] = float(rows)
    elif rows:
        index_type = "long long" if target_kind == _codes.CLASS_INDEX_64 else "int"
        blocks = max(1, min(MAX_BLOCKS, -(-rows // THREADS)))
        sums = cp.empty((2 * blocks,), dtype=cp.float64)
        bad = cp.full((1,), rows, dtype=np.uint64)
        check = _kernel("cross_entropy", dtype_name,
                        f"fastloss::gpu::check_targets<{ctype}, {index_type}>", device)
        check((blocks,), (THREADS,), (np.int64(rows), np.int64(classes), target, weight,
                                      np.int64(ignore_index), sums, bad))
        _finish_pairs(input, sums, blocks, None, None, divisor)
        bad_row = int(bad.get()[0])  # the one host synchronisation
        if bad_row < rows:
            raise ClassIndexOutOfRange(bad_row, int(target.reshape(-1)[bad_row].get()))
    per_row = not isinstance(grad_output, float)
    group = _group(classes)
    blocks = _row_grid(rows, group) if rows else 0
    block_sums = cp.zeros((2 * max(blocks, 1),), dtype=cp.float64) if want_sum else None
    if rows:
        kernel = _kernel("cross_entropy", dtype_name,
                         _cross_entropy_name(ctype, outputs, target_kind, group), device)
        kernel((blocks,), (THREADS,), (
            np.int64(rows), np.int64(classes), np.int64(inner), input, target, weight,
            np.int64(ignore_index), np.float64(label_smoothing),
            grad_output if per_row else None, np.float64(0.0 if per_row else grad_output),
            divisor if mean else None, loss_out, grad_out, block_sums))
    return block_sums, blocks, divisor, loss_out, grad_out


def _finish_pairs(input, partials, count, divisor, out_t, pair_out):
    """cuda/multiclass.cu finish_pairs (one block): the ``count`` pairs added in a fixed order,
    into ``pair_out`` (two doubles) and/or ``out_t`` (the loss, divided by the ``divisor``
    pair when it is given, rounded once)."""
    dtype_name = input.dtype.name
    finish = _kernel("cross_entropy", dtype_name,
                     f"fastloss::gpu::finish_pairs<{_CTYPE[dtype_name]}>", input.device)
    finish((1,), (THREADS,), (partials, np.int64(count), divisor, out_t, pair_out))


def cross_entropy_pass(outputs, target_kind, mean, input, target, weight, ignore_index,
                       label_smoothing, grad_output, out, shape, loss_shape):
    """One cross-entropy pass on the device (called under ``on_device_of(input)``): as the
    CPU's, the loss a 0-d array (Sum*: the double-double sum, divided on the device by the
    mean's double-double divisor when ``mean``, rounded once) or an array of ``loss_shape``,
    the gradient, or both."""
    cp = _cupy()
    block_sums, blocks, divisor, loss_out, grad_out = _cross_entropy_run(
        outputs, target_kind, mean, input, target, weight, ignore_index, label_smoothing,
        grad_output, out, shape, loss_shape)
    loss = loss_out
    if block_sums is not None:
        loss = cp.empty((), dtype=input.dtype)
        _finish_pairs(input, block_sums, blocks, divisor if mean else None, loss, None)
    if grad_out is None:
        return loss
    return grad_out if loss is None else (loss, grad_out)


def cross_entropy_partial(want_grad, target_kind, input, target, weight, ignore_index,
                          label_smoothing, grad_scale, shape):
    """One Dask block of a larger cross-entropy: its unrounded (sum, sum_lo, divisor,
    divisor_lo) as Python floats (the NumPy backend's contract), or (that, the gradient of the
    block's 'sum' times ``grad_scale``)."""
    cp = _cupy()
    outputs = _codes.SUM_AND_GRAD if want_grad else _codes.SUM
    block_sums, blocks, divisor, _, grad_out = _cross_entropy_run(
        outputs, target_kind, False, input, target, weight, ignore_index, label_smoothing,
        float(grad_scale), None, shape, (shape[0] * shape[2],))
    total = cp.empty((2,), dtype=cp.float64)
    _finish_pairs(input, block_sums, blocks, None, None, total)
    hi, lo = (float(v) for v in total.get())
    d_hi, d_lo = (float(v) for v in divisor.get())
    partial = (hi, lo, d_hi, d_lo)
    return (partial, grad_out) if want_grad else partial


def activation(op, x, y, out):
    cp = _cupy()
    out = cp.empty(x.shape, dtype=x.dtype) if out is None else out
    n = x.size
    if n:
        dtype_name = x.dtype.name
        kernel = _kernel("activations", dtype_name,
                         f"fastloss::gpu::activation<{_CTYPE[dtype_name]}, {op}>", x.device)
        kernel((max(1, min(MAX_BLOCKS, -(-n // THREADS))),), (THREADS,),
               (np.int64(n), x, y, out))
    return out


# ---- python -m fastloss info -------------------------------------------------------------------

def _version_string(code):
    return f"{code // 1000}.{code % 1000 // 10}" if code else None


def describe() -> dict:
    """CuPy, CUDA and device facts for ``python -m fastloss info`` (needs CuPy importable).

    Keys: ``available`` (bool), ``cupy``, ``cuda_runtime``, ``cuda_driver``, ``nvrtc``
    (version strings or None), and when a device is available ``device_count`` and, for the
    current device, ``device_id``, ``device_name``, ``compute_capability``, ``sm_count``,
    ``memory_total_bytes``, ``memory_free_bytes``; ``error`` says why when something failed.
    """
    import cupy
    info = {"cupy": cupy.__version__}
    runtime = cupy.cuda.runtime
    for key, query in (("cuda_runtime", runtime.runtimeGetVersion),
                       ("cuda_driver", runtime.driverGetVersion)):
        try:
            info[key] = _version_string(query())
        except Exception:
            info[key] = None
    try:
        from cupy.cuda import nvrtc
        major, minor = nvrtc.getVersion()
        info["nvrtc"] = f"{major}.{minor}"
    except Exception:
        info["nvrtc"] = None
    try:
        available = bool(cupy.cuda.is_available())
    except Exception as error:  # a broken driver install fails in many ways
        info["error"] = f"{type(error).__name__}: {error}"
        available = False
    info["available"] = available
    if not available:
        return info
    try:
        device = cupy.cuda.Device()
        props = runtime.getDeviceProperties(device.id)
        name = props["name"]
        free, total = device.mem_info
        info.update(
            device_count=runtime.getDeviceCount(),
            device_id=device.id,
            device_name=name.decode() if isinstance(name, bytes) else str(name),
            compute_capability=f"{device.compute_capability[:-1]}.{device.compute_capability[-1]}",
            sm_count=int(props["multiProcessorCount"]),
            memory_total_bytes=int(total),
            memory_free_bytes=int(free),
        )
    except Exception as error:
        info["error"] = f"{type(error).__name__}: {error}"
    return info
