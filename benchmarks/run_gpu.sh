#!/usr/bin/env bash
# Everything that needs the GPU, in one call on the GPU machine (about 9 minutes):
#   1. build the extension in place for this GPU's architecture (and, in
#      parallel, the standalone CUDA test csrc/tests/test_cuda_kernels.cu);
#   2. run the standalone test, then tests/test_ops_cuda.py;
#   3. the benchmark (benchmarks/bench_cuda.py) within the time left, keeping
#      about 2.5 minutes for
#   4. compute-sanitizer memcheck (--quick set), racecheck and synccheck
#      (--tiny set) on the standalone test, then memcheck on a few small pytest
#      shapes, while time is left.
# Results go to $OUT (default ./build/gpu_out), at most 8 files: summary.txt,
# build.log, test_cuda_kernels.log, pytest.log, sanitizer.log, bench.log,
# bench_cuda.json, RESULTS.md.  The summary is printed last.
#
# Knobs: BUDGET_S (default 540: seconds for the whole script), PYTHON (default
# python3), JOBS (default nproc), SKIP_TESTS=1, SKIP_BENCH=1, SKIP_SANITIZER=1
# (e.g. SKIP_TESTS=1 SKIP_SANITIZER=1 gives the benchmark almost all the time).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 8)}"
START=$(date +%s)
DEADLINE=$((START + ${BUDGET_S:-540}))
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

left() { echo $((DEADLINE - $(date +%s))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
stamp() { echo "[$(($(date +%s) - START)) s] $*"; }

# ------------------------------------------------------------------ environment
{
  echo "== environment"
  nvidia-smi -L 2>&1 | head -n 4
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 2
  nvcc --version 2>&1 | tail -n 1
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1
  command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"
} >>"$SUMMARY" 2>&1
cat "$SUMMARY"

ARCH=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}" + ("a" if m == 9 else ""))' 2>/dev/null || echo "9.0a")
GENCODE="-gencode=arch=compute_${ARCH//./},code=sm_${ARCH//./}"
note "arch: TORCH_CUDA_ARCH_LIST=$ARCH ($GENCODE)"

# ------------------------------------------------------------------ 1. builds
stamp "building the standalone CUDA test (background) and the extension"
CT="$ROOT/build/ctest"
mkdir -p "$CT"
(
  set -e
  NVFLAGS="-std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -DPATRONUS_WITH_CUDA -D__CUDA_NO_HALF_OPERATORS__ \
-D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Icsrc/include -Icsrc"
  export NVFLAGS GENCODE CT
  ls csrc/cuda/*.cu csrc/tests/test_cuda_kernels.cu |
    xargs -P "$((JOBS / 2 > 0 ? JOBS / 2 : 1))" -I{} bash -c 'nvcc -c $NVFLAGS $GENCODE {} -o "$CT/$(basename {}).o"'
  nvcc $GENCODE "$CT"/*.o -o "$CT/test_cuda_kernels"
) >"$OUT/test_cuda_kernels.log" 2>&1 &
CT_PID=$!

BUILD_START=$(date +%s)
if TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" PATRONUS_CUDA=1 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  note "build: ok ($(($(date +%s) - BUILD_START)) s)"
  BUILD_OK=1
else
  note "build: FAILED ($(($(date +%s) - BUILD_START)) s); tail of build.log:"
  tail -n 30 "$OUT/build.log" | tee -a "$SUMMARY"
  BUILD_OK=0
fi
if wait "$CT_PID"; then
  note "standalone test build: ok"
  CT_OK=1
else
  note "standalone test build: FAILED (see test_cuda_kernels.log)"
  tail -n 20 "$OUT/test_cuda_kernels.log" | tee -a "$SUMMARY"
  CT_OK=0
fi
if [[ $BUILD_OK == 1 ]]; then
  "$PY" -c 'import torch, patronus_ext._C as c; i = c.build_info(); print("build_info: cuda", i["cuda"], "runtime", i.get("cuda_runtime_version"), "arch", i.get("cuda_arch_list"), "kernels", i["kernels"].get("cuda"))' 2>&1 | tee -a "$SUMMARY"
fi

# ------------------------------------------------------------------ 2. tests
if [[ "${SKIP_TESTS:-0}" == "1" ]]; then
  note "tests: skipped (SKIP_TESTS=1)"
fi
if [[ $CT_OK == 1 && "${SKIP_TESTS:-0}" != "1" ]]; then
  stamp "standalone test"
  echo "== run (full set)" >>"$OUT/test_cuda_kernels.log"
  timeout 150 "$CT/test_cuda_kernels" >>"$OUT/test_cuda_kernels.log" 2>&1
  rc=$?
  note "standalone test: rc=$rc ($(tail -n 1 "$OUT/test_cuda_kernels.log"))"
  grep -E "^FAIL|^  " "$OUT/test_cuda_kernels.log" | head -n 15 | tee -a "$SUMMARY"
fi

if [[ $BUILD_OK == 1 && "${SKIP_TESTS:-0}" != "1" ]]; then
  stamp "pytest tests/test_ops_cuda.py"
  timeout $(( $(left) > 400 ? 240 : 150 )) "$PY" -m pytest tests/test_ops_cuda.py -q -rs -p no:cacheprovider \
    >"$OUT/pytest.log" 2>&1
  rc=$?
  note "pytest tests/test_ops_cuda.py: rc=$rc: $(grep -E '(passed|failed|error|skipped)' "$OUT/pytest.log" | tail -n 1)"
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -n 20 | tee -a "$SUMMARY"
fi

# ------------------------------------------------------------------ sanitizer helper
SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
san() {  # tool, time limit (s), label, command...
  local tool="$1" limit="$2" label="$3"
  shift 3
  if [[ ! -x "$SAN" ]]; then
    note "compute-sanitizer $tool: not available"
    return
  fi
  if (( limit < 20 )); then
    note "compute-sanitizer $tool: skipped (no time left)"
    return
  fi
  local first
  first=$(($(wc -l <"$OUT/sanitizer.log") + 1))
  echo "== compute-sanitizer --tool $tool $* (limit ${limit} s)" >>"$OUT/sanitizer.log"
  timeout "$limit" "$SAN" --tool "$tool" --error-exitcode 3 "$@" >>"$OUT/sanitizer.log" 2>&1
  local rc=$?
  local summary
  summary=$(tail -n +"$first" "$OUT/sanitizer.log" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -n 1)
  note "compute-sanitizer $tool ($label): rc=$rc${summary:+ ($summary)}$([[ $rc == 124 ]] && echo ' (timed out)')"
}
: >"$OUT/sanitizer.log"

# ------------------------------------------------------------------ 3. benchmark
if [[ "${SKIP_BENCH:-0}" != "1" && $BUILD_OK == 1 ]]; then
  RESERVE=$([[ "${SKIP_SANITIZER:-0}" == "1" ]] && echo 30 || echo 150)
  BB=$(( $(left) - RESERVE ))
  if (( BB > 60 )); then
    stamp "benchmark (budget $BB s)"
    timeout $((BB + 60)) "$PY" benchmarks/bench_cuda.py --out "$OUT" --budget-s "$BB" \
      --compile-budget-s $((BB / 3)) >"$OUT/bench.log" 2>&1
    note "benchmark: rc=$? (bench.log, bench_cuda.json, RESULTS.md)"
    if [[ -f "$OUT/RESULTS.md" ]]; then
      sed -n '/^## Target check/,$p' "$OUT/RESULTS.md" | tee -a "$SUMMARY"
    else
      tail -n 15 "$OUT/bench.log" | tee -a "$SUMMARY"
    fi
  else
    note "benchmark: skipped (only $(left) s left)"
  fi
fi

# ------------------------------------------------------------------ 4. compute-sanitizer
if [[ "${SKIP_SANITIZER:-0}" != "1" && $CT_OK == 1 ]]; then
  stamp "memcheck / racecheck / synccheck"
  L=$(left); san memcheck $(( L - 90 < 90 ? L - 90 : 90 )) "standalone --quick" --leak-check no \
    "$CT/test_cuda_kernels" --quick
  L=$(left); san racecheck $(( L - 45 < 120 ? L - 45 : 120 )) "standalone --tiny" --racecheck-report hazard \
    "$CT/test_cuda_kernels" --tiny
  L=$(left); san synccheck $(( L - 15 < 60 ? L - 15 : 60 )) "standalone --tiny" "$CT/test_cuda_kernels" --tiny
fi
if [[ "${SKIP_SANITIZER:-0}" != "1" && $BUILD_OK == 1 ]]; then
  L=$(left)
  if (( L > 60 )); then
    stamp "memcheck on small pytest shapes"
    san memcheck $(( L - 15 )) "pytest small shapes" --leak-check no "$PY" -m pytest tests/test_ops_cuda.py -q -p no:cacheprovider -x \
      -k "test_bank_similarity and 7-6-768 or test_supcon_forward_backward and 3-37-40 or test_token_topk_word_level_padding and 3-32"
  else
    note "memcheck on pytest shapes: skipped (only $L s left)"
  fi
fi

note "total: $(($(date +%s) - START)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
echo "================ summary ================"
cat "$SUMMARY"
