#!/usr/bin/env bash
# Everything one short GPU lease is for, in one call (the device tool's machine: no network, its
# own python3 with CuPy and PyTorch): build there, the GPU tests, bench/gpu.py and
# bench/gpu_multiclass.py, the 2^31 + 5 test, the rest of the suite, a memory check of the
# kernels. Each step has its own time limit so that one hang cannot take the others' time; logs
# go under $OUT/logs, packed at the end into one file (the tool brings back 8 files at most), and
# a summary line per step is printed last. The first lease (2026-12-04, H200) ran it in 5 + 5.5 min.
#
#   bash bench/gpu_session.sh                 every step
#   STEPS="build suite" bash bench/gpu_session.sh   only those (a second, shorter call)
#   TESTS="tests/x.py::y ..."                 the gpu-tests step runs these instead
set -u
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16 FASTLOSS_TEST_REQUIRE_NVRTC=1
OUT=${OUT:-/tmp/fastloss-gpu}
mkdir -p "$OUT/logs"
STEPS=${STEPS:-"build gpu-tests gpu-bench gpu-bench-float64 gpu-multiclass largemem suite memcheck"}
start=$SECONDS
summary=()
step() {  # step NAME LIMIT_S COMMAND...: runs it, its log $OUT/logs/NAME.log, if STEPS names it
    local name=$1 limit=$2; shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    local t=$SECONDS
    echo "== $name (limit ${limit} s) at $((SECONDS - start)) s"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    local rc=$?
    summary+=("$name: rc=$rc in $((SECONDS - t)) s")
    tail -n 25 "$OUT/logs/$name.log"
    return $rc
}
# pytest's ini turns warnings into errors; this image's versions (not our constraints) may warn
# about their own deprecations, which says nothing about fastloss.
pytest_args=(-q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning)

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu \
        --format=csv
    lscpu | grep -E "Model name|^CPU\(s\)"
    python3 -c "import sys, numpy, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__,
        'cupy', cupy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} >"$OUT/facts.txt" 2>&1
cat "$OUT/facts.txt"

step build 150 python3 -m pip install --no-build-isolation --no-deps -v . || {
    tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs; printf '%s\n' "${summary[@]}"; exit 3; }
python3 -m fastloss info >>"$OUT/facts.txt" 2>&1

gpu_tests=(tests/test_cuda.py tests/test_cuda_multiclass.py tests/test_cuda_partials.py
           tests/test_torch_functions.py tests/test_torch_half.py tests/test_multiclass_half.py
           tests/test_multiclass_torch.py bench/test_bench_gpu.py bench/test_gpu_harness.py)
# shellcheck disable=SC2206
selected=(${TESTS:-${gpu_tests[*]}})
step gpu-tests 120 python3 -m pytest "${pytest_args[@]}" -n 8 -ra --tb=short "${selected[@]}"
step gpu-bench 150 python3 bench/gpu.py --out "$OUT/gpu-run.md"
step gpu-bench-float64 90 python3 bench/gpu.py --dtype float64 --sizes 20,24,28 \
    --out "$OUT/gpu-run-float64.md"
step gpu-multiclass 90 python3 bench/gpu_multiclass.py --out "$OUT/gpu-multiclass.md"
step largemem 60 python3 -m pytest "${pytest_args[@]}" -ra --tb=short --largemem \
    tests/test_cuda.py::test_more_than_2_to_the_31_elements
# -v: xdist names each failure as it happens, so a run cut by the limit still says which
step suite 200 python3 -m pytest "${pytest_args[@]}" -n 16 -v -ra --tb=short --maxfail=30 \
    tests bench "${gpu_tests[@]/#/--ignore=}"
# every CUDA kernel at awkward sizes under compute-sanitizer's memcheck (out-of-bounds reads and
# writes, misaligned accesses)
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 -m pytest "${pytest_args[@]}" -x --tb=short tests/test_cuda_multiclass.py \
    tests/test_cuda.py -k "values_on_the_gpu or edge_values or alignment or float16_against or float16_on"
echo "== done at $((SECONDS - start)) s"
grep -h "FAILED\|ERROR " "$OUT"/logs/*.log | sort -u | head -40
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -r "$OUT/logs"
printf '%s\n' "${summary[@]}"
