"""Planted faults: the test suite must fail on each of them, or it cannot see the bugs it is for.

Each fault is one small, plausible mistake:
- C++ faults are blocks in csrc/ (and the shared header) guarded by FASTLOSS_PLANTED_FAULT_<NAME>;
  the extension is built with exactly one of them defined (the CMake cache variable
  FASTLOSS_PLANTED_FAULT), in its own build directory.
- Python faults are one exact text replacement in a copy of python/fastloss.
For every fault the package is assembled in a scratch directory as an install would lay it out
(the Python sources, the built _cpu module, the CUDA sources and the shared header), put first
on PYTHONPATH, and the fault's own fast subset of the test suite is run. A fault is caught when
that run fails its tests (pytest exit status 1); the check fails unless every fault is caught.
A control run first builds without any fault and runs every subset: all of them must pass, so a
broken harness can never look like a caught fault.

    python .ci/planted_faults.py                 every fault (about 9 minutes on 2 Zen 5 cores)
    python .ci/planted_faults.py --ci            CI's selection: every Python fault, 3 C++ ones
    python .ci/planted_faults.py --list          the faults and their subsets
    python .ci/planted_faults.py --only NAME...  some of them (after the control run)

Needs cmake, a C++ compiler with OpenMP, pybind11 and the test extras in the running
environment. CI (.ci/run) runs --ci: each C++ fault is a build of its own (~12 s here, three
times that on a slow CI machine), too many for CI's budget. Run the whole check by hand before
resolving any issue that touches the kernels or the module.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = ROOT / "build" / "planted-faults"


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    what: str
    tests: tuple[str, ...]  # pytest arguments: the fault's fast subset
    # Python faults: (file under python/fastloss, exact text, replacement); C++ faults: None
    edit: tuple[str, str, str] | None = None
    ci: bool = True  # in the --ci selection (every Python fault; the C++ faults are a build each)

    @property
    def in_cpp(self) -> bool:
        return self.edit is None


CPP_FAULTS = (
    Fault("MSE_GRAD_SIGN", "MSE family: the gradient-only kernel returns 2(y - x)",
          ("tests/test_small_arrays.py", "-k", "sizes and mse"), ci=False),
    Fault("BCE_LOG_CLAMP", "BCE family: the logs clamped at -50 instead of PyTorch's -100",
          ("tests/test_edge_values.py", "-k", "bce"), ci=False),
    Fault("BCE_RANGE_FLAG_IGNORED", "BCE family: probabilities outside [0, 1] go unreported",
          ("tests/test_errors.py", "-k", "outside_unit_interval"), ci=False),
    Fault("BCE_GRAD_PARALLEL",
          "parallel path only: float32 BCE gradient 1.5x too large for 0.01 < p < 0.99",
          ("tests/test_small_arrays.py", "-k", "sizes and bce")),
    Fault("LOGITS_INF_LIMIT",
          "logits family: max(-z, 0) not zeroed where y = 0, so z = -inf gives NaN",
          ("tests/test_edge_values.py", "-k", "logits"), ci=False),
    Fault("SIGMOID_FLUSHES_TAIL", "sigmoid family: results for x < -80 flushed to 0",
          ("tests/test_small_arrays.py", "-k", "sigmoid"), ci=False),
    Fault("SIGMOID_BACKWARD_RANGE_IGNORED",
          "sigmoid family: sigmoid_backward takes outputs outside [0, 1] without a word",
          ("tests/test_errors.py", "-k", "sigmoid_backward_range"), ci=False),
    Fault("SUM_TAIL_DROPPED",
          "tail only: the last term of a run that is not a multiple of the lanes is not summed",
          ("tests/test_small_arrays.py", "-k", "sizes and mse")),
    Fault("WEIGHT_OFFSET_PER_CHUNK",
          "weighted path: a weight's period restarts at every chunk instead of running on",
          ("tests/test_small_arrays.py", "-k", "period"), ci=False),
    Fault("FUSED_LOSS_UNWEIGHTED", "fused path: *_and_grad's loss ignores the weight",
          ("tests/test_small_arrays.py", "-k", "sizes and weighted"), ci=False),
    Fault("LANE_LO_DROPPED",
          "double-double lanes: each lane's sum of the exact errors is dropped",
          ("tests/test_accuracy.py", "-k", "compensated")),
    Fault("DD_COMBINE_DROPS_LO",
          "double-double additions (lanes, chunks) add the high words only",
          ("tests/test_exact_reduction.py", "-k", "float64"), ci=False),
    Fault("PLAIN_SUM_UNCHECKED",
          "module: an unweighted plain double sum (MSE, BCE) is rounded without checking it is certain",
          ("tests/test_exact_reduction.py", "-k", "plain_sum or not_its_double"), ci=False),
    Fault("FLOAT32_TERMS_BOUND_AS_DOUBLES",
          "module: a 16-bit squared error summed in float32 lanes is checked with the double sums' bound",
          ("tests/test_exact_reduction.py", "-k", "float32"), ci=False),
    Fault("FLOAT32_TERMS_UNDERFLOW_IGNORED",
          "module: the float32 lanes' underflow (2^-149 a term) is left out of the check",
          ("tests/test_exact_reduction.py", "-k", "float32"), ci=False),
    Fault("HALF_GRAD_HALFWAY_UNCHECKED",
          "16-bit MSE gradient in float32 lanes: a float32 value near a half-way point is stored as it rounds",
          ("tests/test_half_gradient_lanes.py",), ci=False),
    Fault("HALF_GRAD_DIFFERENCE_UNCHECKED",
          "16-bit MSE gradient in float32 lanes, power-of-two scale: an inexact float32 difference is taken as exact",
          ("tests/test_half_gradient_lanes.py",), ci=False),
    Fault("BFLOAT16_SUBNORMAL_GRAD_NOT_REDONE",
          "AVX512_BF16 gradient stores: a chunk with subnormal float32 lanes keeps the conversion's zeros",
          ("tests/test_half.py", "-k", "subnormal_lanes"), ci=False),
    Fault("STREAMING_STORE_LOW_HALF_TWICE",
          "AVX-512 float32 streaming stores (outputs of 32 MiB and more): a vector's low 4 floats written twice",
          ("tests/test_streaming_stores.py",), ci=False),
    Fault("STREAMING_STORE_FLOAT64_LOW_PAIR_TWICE",
          "AVX-512 float64 streaming stores: a vector's first two doubles written again in place of the next two",
          ("tests/test_streaming_stores.py", "-k", "float64"), ci=False),
    Fault("PLAIN_SUM_SIGN_UNCHECKED",
          "plain BCE sums: a negative term (a target outside [0, 1]) is not seen, so the sum is not redone",
          ("tests/test_exact_reduction.py", "-k", "plain_bce"), ci=False),
    Fault("FLOAT32_DOUBLE_ROUNDING",
          "module: a float32 loss is the double-double's high word rounded to float32 again",
          ("tests/test_exact_reduction.py", "-k", "not_its_double"), ci=False),
    # (out of CI's selection, 2026-12-03: CI stood at 1794 s of its 30 minutes on Zen 4;
    # PY_DASK_COMBINE_NAIVE keeps the Dask partials' combination in it)
    Fault("PARTIAL_DROPS_LO", "module: a Dask block's partial sum loses its low word",
          ("tests/test_dask.py", "-k", "threaded and float64 and loss"), ci=False),
    Fault("CE_LANE_LO_DROPPED",
          "multi-class double-double lanes: each lane's sum of the exact errors is dropped",
          ("tests/test_multiclass.py", "-k", "row_sums_are_exact"), ci=False),
    Fault("BASELINE_SIGMOID", "baseline ISA only: sigmoid 3e-5 relative too large",
          ("tests/test_determinism.py", "-k", "baseline"), ci=False),
    Fault("MEAN_GRAD_SCALE", "module: reduction='mean' scales the gradient by 1/(N + 1)",
          ("tests/test_small_arrays.py", "-k", "sizes and float64 and plain"), ci=False),
    Fault("OVERLAP_CHECK_SKIPPED", "module: an out= that partly overlaps an input is accepted",
          ("tests/test_errors.py", "-k", "overlapping"), ci=False),
    Fault("SGD_NESTEROV_IGNORED", "training kernels: SGD's Nesterov step is a plain momentum step",
          ("tests/test_optim_data.py",), ci=False),
    Fault("SOFTMAX_BLOCK_RESCALE_DROPPED",
          "multi-class rows: a row's sum of exps restarts at every block of 256 classes",
          ("tests/test_multiclass.py", "-k", "softmax_and_log_softmax and 1000"), ci=False),
    Fault("CE_GRAD_IGNORES_WEIGHT",
          "multi-class rows: the cross-entropy gradient of a class index loses its class weight",
          ("tests/test_multiclass.py", "-k", "test_cross_entropy and 5x1000 and weight"),
          ci=False),
    Fault("HALF_STORE_VIA_FLOAT32",
          "AVX-512 16-bit stores: the double rounded to float32 first, then to the 16-bit format",
          ("tests/test_half.py", "-k", "this_build"), ci=False),
    Fault("AVX2_FLOAT16_STORE_VIA_FLOAT32",
          "AVX2 float16 stores: the double rounded to float32 first, then to float16",
          ("tests/test_half.py", "-k", "this_build or x86_64_v3"), ci=False),
    Fault("ROW_HALF_VIA_FLOAT32",
          "row kernels and activations: a float16 result rounded to float32 first, then to float16",
          ("tests/test_multiclass_half.py", "-k", "rounded_once"), ci=False),
    Fault("HALF_SUBNORMALS_FLUSHED",
          "baseline float16 loads: subnormal halves read as zero",
          ("tests/test_half.py", "-k", "narrower_builds and baseline"), ci=False),
    Fault("CE_ROW_SUM_BY_TILE_POSITION",
          "multi-class short rows: a row's other exps are summed in an order set by its place "
          "in the tile",
          # and the short-row tests': the AVX-512 build has its own float32 kernel, the fault is
          # in the portable one (float64 rows, the narrower builds)
          ("tests/test_multiclass_dask.py", "tests/test_multiclass_short_rows.py", "-k",
           "do_not_depend or narrower_builds"), ci=False),
)

PY_FAULTS = (
    Fault("PY_DASK_COMBINE_NAIVE", "Dask: the blocks' partials are added as plain doubles",
          ("tests/test_dask.py", "-k", "threaded and float64 and loss"),
          ("_dd.py", "        hi, lo = accumulate(hi, lo, float(h), float(l))",
           "        hi, lo = hi + float(h) + float(l), 0.0")),
    Fault("PY_DASK_MEAN_GRAD_SCALE", "Dask: a 'mean' gradient is scaled by 1/N of each block",
          ("tests/test_dask.py", "-k", "threaded and grad"),
          ("_dask.py", "        scale = scale / n if n else scale",
           "        scale = scale / input.chunksize[0] if n else scale")),
    Fault("PY_STREAM_DROPS_TAIL",
          "fit on Dask data: a chunk's rows after its last whole batch are dropped",
          ("tests/test_dask_training.py", "-k", "unshuffled"),
          ("data.py",
           "        tail_x, tail_y = (xb[whole:], yb[whole:]) if whole < len(xb) else (None, None)",
           "        tail_x, tail_y = None, None")),
    Fault("PY_MEAN_SUM_SWAPPED", "the plans of reduction='mean' and 'sum' swapped",
          ("tests/test_small_arrays.py", "-k", "sizes and mse and plain"),
          ("_dispatch.py",
           '"mean": Pass(outputs(True), True), "sum": Pass(outputs(True), False),',
           '"mean": Pass(outputs(True), False), "sum": Pass(outputs(True), True),')),
    Fault("PY_TRAILING_WEIGHT_ORDER",
          "a weight that is a trailing block is flattened in Fortran order",
          ("tests/test_losses.py", "-k", "weight_forms"),
          ("_dispatch.py", "flat = xp.ascontiguousarray(w).reshape(-1)",
           "flat = xp.ascontiguousarray(w.T).reshape(-1)")),
    Fault("PY_GRAD_OUTPUT_ARRAY_DROPPED", "an array grad_output is replaced by 1",
          ("tests/test_losses.py", "-k", "grad_output_array"),
          ("_dispatch.py", "    return 1.0, grad_output\n", "    return 1.0, None\n")),
    Fault("PY_GRAD_WEIGHT_DROPS_WEIGHT",
          "with an array grad_output, the gradient loses the weight",
          ("tests/test_losses.py", "-k", "grad_output_array"),
          ("_dispatch.py",
           "    return backend.array_module().multiply(w, grad_array, dtype=input.dtype)",
           "    return grad_array")),
    Fault("PY_GRAD_OUTPUT_SCALES_LOSS",
          "with an array grad_output, *_and_grad's loss is weighted by it too",
          ("tests/test_losses.py", "-k", "not_scaled_by_grad_output"),
          ("_dispatch.py", "                                        weights, pos_weights, 1.0, None)",
           "                                        grad_weights, pos_weights, 1.0, None)")),
    Fault("PY_OUT_OVERLAP_UNCHECKED",
          "dispatch: an out= that partly overlaps an argument goes to the backend",
          ("tests/test_errors.py", "-k", "overlapping"),
          ("_dispatch.py", "    for array, name in reads:\n",
           "    for array, name in reads[:0]:\n")),
    Fault("PY_CUDA_ROWS_REFUSE_HALVES",
          "CUDA backend: CuPy float16 refused by the row functions, cross_entropy, tanh and relu, "
          "whose float16 kernels exist",
          ("tests/test_cuda_multiclass.py", "-k", "launch_the_float16_kernels"),
          ("_cuda.py", 'ROW_HALF_DTYPES: tuple[str, ...] = ("float16",)', "ROW_HALF_DTYPES: tuple[str, ...] = ()")),
    Fault("PY_MIXED_DTYPES_UNCHECKED", "dispatch: arrays of different dtypes are not refused",
          ("tests/test_errors.py", "-k", "mixed"),
          ("_checks.py", "    if a.dtype != like.dtype:\n", "    if False:\n")),
    Fault("PY_LOGITS_SWAP_DROPS_WEIGHT",
          "training: Sigmoid + BCELoss trained as BCEWithLogitsLoss without the weight",
          ("tests/test_training.py",),
          ("training.py",
           "layers[:-1], BCEWithLogitsLoss(weight=loss.weight, reduction=loss.reduction)",
           "layers[:-1], BCEWithLogitsLoss(reduction=loss.reduction)")),
    Fault("PY_EVALUATE_DOUBLED", "training: evaluate (the validation loss) returns twice the loss",
          ("tests/test_training.py",),
          ("training.py",
           '    return float(value.mean() if evaluation.reduction == "none" else value)',
           '    return 2 * float(value.mean() if evaluation.reduction == "none" else value)')),
    Fault("PY_TORCH_BCELOSS_DROPS_WEIGHT", "fastloss.torch.BCELoss ignores its weight",
          ("tests/test_torch_functions.py",),
          ("torch.py",
           "        return binary_cross_entropy(input, target, weight=self.weight, "
           "reduction=self.reduction)",
           "        return binary_cross_entropy(input, target, reduction=self.reduction)")),
    Fault("PY_TORCH_BACKWARD_IGNORES_GRAD_OUTPUT",
          "fastloss.torch: the saved gradient is returned without the upstream gradient",
          ("tests/test_torch_functions.py",),
          ("torch.py", "        scaled = grad if _is_one(grad_loss) else grad * grad_loss",
           "        scaled = grad")),
    Fault("PY_BATCHES_DROP_LAST", "data.batches drops the last, smaller batch",
          ("tests/test_optim_data.py",),
          ("data.py", "    for start in range(0, n, batch_size):\n        rows =",
           "    for start in range(0, n - batch_size + 1, batch_size):\n        rows =")),
    Fault("PY_SGD_ARRAY_NESTEROV_IGNORED",
          "optim: the array-expression SGD (CuPy's) ignores Nesterov",
          ("tests/test_optim_data.py",),
          ("optim.py",
           "        grad = (grad + param.dtype.type(momentum) * momentum_buffer if nesterov",
           "        grad = (grad + param.dtype.type(momentum) * momentum_buffer if False")),
    Fault("PY_CE_INDEX_TARGET_OF_INPUT_SHAPE",
          "dispatch: an integer target of the input's shape is not refused by name",
          ("tests/test_multiclass.py", "-k", "bad_arguments"),
          ("_dispatch.py", "        if target.shape == input.shape and input.shape != loss_shape:\n",
           "        if False:\n")),
    Fault("PY_CE_WEIGHT_SHAPE_UNCHECKED", "dispatch: a weight not of shape (C,) goes to the backend",
          ("tests/test_multiclass.py", "-k", "bad_arguments"),
          ("_dispatch.py", "        if weight.shape != (classes,):\n", "        if False:\n")),
    Fault("PY_SOFTMAX_DIM_LAST", "dispatch: the fast path of softmax takes the last axis for any dim",
          ("tests/test_multiclass.py", "-k", "softmax_and_log_softmax"),
          ("_dispatch.py", "            axis = dim % ndim\n            shape = input.shape\n",
           "            axis = ndim - 1\n            shape = input.shape\n")),
    Fault("PY_SOFTMAX_NOT_SKIPPED",
          "training: a Sequential ending in Softmax trains CrossEntropyLoss through the Softmax",
          ("tests/test_training_multiclass.py",),
          ("training.py", "            and layers[-1].dim in (-1, 1)):\n        return layers[:-1], loss",
           "            and layers[-1].dim in (-1, 1)):\n        return layers, loss")),
    Fault("PY_TORCH_CE_ROWS_SHARE_UPSTREAM",
          "fastloss.torch: cross_entropy's 'none' backward uses one upstream gradient for all rows",
          ("tests/test_multiclass_torch.py", "-k", "gradcheck"),
          ("torch.py", "        scaled = grad * grad_loss.unsqueeze(1)",
           "        scaled = grad * grad_loss.mean()")),
    Fault("PY_TORCH_FAKE_LOSS_FLOAT32",
          "fastloss.torch: the losses' fake implementation gives a float32 loss for any input",
          ("tests/test_torch_pt2.py", "-k", "opcheck"),
          ("torch.py",
           '    return input.new_empty(input.shape if reduction == "none" else ()), '
           '_empty_like(input)',
           '    return input.new_empty(input.shape if reduction == "none" else (), '
           'dtype=torch.float32), _empty_like(input)')),
    Fault("PY_TORCH_VMAP_FIRST_SAMPLE",
          "fastloss.torch: the losses' vmap rule computes every sample from the first",
          ("tests/test_torch_pt2.py", "-k", "func"),
          ("torch.py", "        results = [op(*(arg.select(dim, i) if dim is not None else arg",
           "        results = [op(*(arg.select(dim, 0) if dim is not None else arg")),
    Fault("PY_TORCH_NO_CPU_AUTOCAST",
          "fastloss.torch: no CPU autocast rule, so a bfloat16 activation reaches the losses",
          ("tests/test_torch_pt2.py", "-k", "autocast"),
          ("torch.py", '    _op.register_autocast("cpu", torch.float32)',
           "    pass")),
    Fault("PY_DLPACK_COPIES", "interop: DLPack arrays are copied, so an out= is not written",
          ("tests/test_interop.py",),
          ("_interop.py", "                return np.from_dlpack(value)",
           "                return np.array(np.from_dlpack(value))")),
)

FAULTS = CPP_FAULTS + PY_FAULTS

# Makes the scratch package win over an editable install, whose import hook would otherwise
# find the checkout's fastloss first (in this process and in every subprocess a test starts).
SITECUSTOMIZE = """\
import sys
sys.meta_path[:] = [finder for finder in sys.meta_path
                    if not type(finder).__module__.startswith("_editable_skbc_fastloss")]
"""


def run(command, **kwargs):
    return subprocess.run(command, cwd=ROOT, text=True, **kwargs)


def cmake_build(fault: str, jobs: int, ci: bool) -> Path:
    """Builds fastloss._cpu with ``fault`` planted ('' for none); returns the module's path.

    ``ci``: without the AVX-512 build on any CPU. The faults of CI's selection are in code every
    build shares, so the AVX2 build shows them as well, and on an AVX-512 machine the third
    build cost ~11 s a fault (--ci 505 -> 448 s on Zen 4, 2026-12-03)."""
    import pybind11
    # Without link-time optimisation (pybind11's default): a third less build time per fault,
    # and the kernels are compiled with the same flags.
    configure = ["cmake", "-S", str(ROOT), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
                 "-DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF",
                 f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                 f"-DPython_EXECUTABLE={sys.executable}", f"-DFASTLOSS_PLANTED_FAULT={fault}",
                 # the AVX-512 build is the slowest to compile; a CPU without it never runs it
                 f"-DFASTLOSS_WITHOUT_X86_64_V4={'ON' if ci else 'AUTO'}"]
    if shutil.which("ninja") and not (BUILD_DIR / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"]
    for command in (configure, ["cmake", "--build", str(BUILD_DIR), "-j", str(jobs)]):
        result = run(command, capture_output=True)
        if result.returncode != 0:
            sys.exit(f"planted faults: {' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    (module,) = BUILD_DIR.glob("_cpu*.so")
    return module


def assemble(site: Path, module: Path, edit=None) -> None:
    """The package as an install lays it out, in ``site``, with ``edit`` applied."""
    if site.exists():
        shutil.rmtree(site)
    package = site / "fastloss"
    shutil.copytree(ROOT / "python" / "fastloss", package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(module, package / module.name)
    shutil.copytree(ROOT / "csrc" / "include" / "fastloss", package / "include" / "fastloss")
    shutil.copytree(ROOT / "cuda", package / "cuda")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    if edit is not None:
        file, old, new = edit
        path = package / file
        text = path.read_text()
        if text.count(old) != 1:
            sys.exit(f"planted faults: the text to replace is in python/fastloss/{file} "
                     f"{text.count(old)} times, expected once (has the code moved?):\n{old}")
        path.write_text(text.replace(old, new))


def environment(site: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("FASTLOSS_ISA", None)
    return env


def check_import(site: Path) -> None:
    code = "import fastloss, fastloss._cpu; print(fastloss.__file__); print(fastloss._cpu.__file__)"
    result = run([sys.executable, "-c", code], env=environment(site), capture_output=True)
    paths = result.stdout.split()
    if result.returncode != 0 or len(paths) != 2 or not all(
            Path(p).resolve().is_relative_to(site.resolve()) for p in paths):
        sys.exit(f"planted faults: the scratch package is not the one imported:\n"
                 f"{result.stdout}{result.stderr}")


def run_tests(site: Path, tests) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                "--benchmark-disable", *tests], env=environment(site), capture_output=True)


def check_sites() -> None:
    """Every C++ fault has exactly one guarded block in the sources (a refactor that drops one
    would otherwise be reported as a fault the tests cannot see)."""
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp")]
    text = "\n".join(p.read_text() for p in sources)
    for fault in CPP_FAULTS:
        guard = f"FASTLOSS_PLANTED_FAULT_{fault.name}"
        blocks = text.count(f"#ifdef {guard}") + text.count(f"#ifndef {guard}")
        if blocks != 1:
            sys.exit(f"planted faults: {guard} guards {blocks} blocks in csrc/, expected 1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these faults")
    parser.add_argument("--ci", action="store_true", help="run CI's selection of the faults")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build jobs")
    args = parser.parse_args()
    if args.list:
        for fault in FAULTS:
            print(f"{fault.name:38} {'C++' if fault.in_cpp else 'Python'}: {fault.what}\n"
                  f"{'':38} pytest {' '.join(fault.tests)}")
        return 0
    faults = FAULTS
    if args.only:
        unknown = set(args.only) - {fault.name for fault in FAULTS}
        if unknown:
            parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
        faults = tuple(fault for fault in FAULTS if fault.name in args.only)
    if args.ci:
        faults = tuple(fault for fault in faults if fault.ci)
    check_sites()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastloss-faults-") as scratch:
        site = Path(scratch) / "site"
        clean_module = Path(scratch) / "clean"
        clean_module.mkdir()
        clean_module = Path(shutil.copy2(cmake_build("", args.jobs, args.ci), clean_module))

        # The control: no fault, every subset passes. CI's main job has just run every test on
        # the same sources, so --ci runs one subset, which is enough to show the scratch
        # package works.
        assemble(site, clean_module)
        check_import(site)
        control = list(dict.fromkeys(fault.tests for fault in faults))
        for tests in control[:1] if args.ci else control:
            result = run_tests(site, tests)
            if result.returncode != 0:
                sys.exit(f"planted faults: without a fault, pytest {' '.join(tests)} did not "
                         f"pass (status {result.returncode}):\n{result.stdout[-3000:]}")
        print(f"control run (no fault): every subset passes ({time.monotonic() - started:.0f} s)")

        missed = []
        # Python faults first: they reuse the clean build.
        for fault in sorted(faults, key=lambda f: f.in_cpp):
            module = cmake_build(fault.name, args.jobs, args.ci) if fault.in_cpp else clean_module
            assemble(site, module, fault.edit)
            check_import(site)
            result = run_tests(site, fault.tests)
            if result.returncode == 1:
                verdict = "caught"
            elif result.returncode == 0:
                verdict = "MISSED"
                missed.append(fault.name)
            else:
                sys.exit(f"planted faults: {fault.name}: pytest exited with status "
                         f"{result.returncode}, not a test failure:\n{result.stdout[-3000:]}"
                         f"{result.stderr[-2000:]}")
            print(f"{verdict:7} {fault.name:38} {fault.what} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    if missed:
        print(f"planted faults: {len(missed)} of {len(faults)} not caught: {', '.join(missed)}")
        return 1
    print(f"planted faults: all {len(faults)} caught in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
