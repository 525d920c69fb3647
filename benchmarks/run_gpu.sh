#!/usr/bin/env bash
# Everything that needs the GPU, in one call on the GPU machine, made to give
# every answer it can even when a step breaks (a lent GPU comes rarely: ~15
# minutes in all, machine start included, at most 10 minutes a command, at
# most 8 result files back).  Every step is time-boxed (`timeout`), its status
# and wall time go to summary.txt, and no step's failure stops the script.
#
# Steps (limit in seconds; each is also cut to the time left of BUDGET_S):
#    0. environment, GPU clocks before                                   20
#    1. build, in parallel: the standalone CUDA test (nvcc, all kernels)  240
#       and the extension (setup.py build_ext --inplace)                  300
#    2. SASS counts per kernel (cuobjdump --dump-sass): HMMA, HGMMA,
#       LDL/STL local-memory traffic                                       60
#    3. standalone test csrc/tests/test_cuda_kernels.cu (full set)         60
#       on failure: compute-sanitizer memcheck and racecheck on --tiny
#       (90 each), and the benchmark is skipped
#    4. pytest tests/test_ops_cuda.py, one process per op, 60 s per test:
#       token_topk 180, supcon 120, bank_similarity 90
#    5. tiny end-to-end CUDA scans (tiny_end_to_end.py: planted BERT,
#       Patronus scan; planted chat LLaMA, BAIT scan + trigger search)  150
#    6. benchmark (bench_cuda.py --key-only; torch.compile only when
#       at least 200 s are left for it)                   min(240, left - 150)
#    7. ncu (SpeedOfLight + MemoryWorkloadAnalysis, --clock-control none)
#       on one token_topk launch, N=4096 d=768 V=30522 bf16, k=10, k=256  90 each
#    8. if time is left: memcheck --tiny on the standalone test            90
#    9. GPU clocks after; logs packed                                      20
#
# Results in $OUT (default ./build/gpu_out), 6 files: summary.txt (printed
# last), gpu_logs.tar.gz (every log), bench_cuda.json, RESULTS.md,
# sass_counts.txt, ncu_topk.txt.
#
# Knobs: BUDGET_S (default 470: seconds for the whole script), PYTHON (default
# python3), JOBS (default nproc), SKIP_BENCH=1, SKIP_NCU=1, SKIP_SCAN=1.
set -uo pipefail  # deliberately no -e: one failing step must not end the run

export PATH=/usr/local/cuda/bin:$PATH
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/build/gpu_out}"
mkdir -p "$OUT"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_logs.XXXXXX")"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 8)}"
START=$(date +%s)
DEADLINE=$((START + ${BUDGET_S:-470}))
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
: >"$SUMMARY"

left() { echo $((DEADLINE - $(date +%s))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
stamp() { echo "[$(($(date +%s) - START)) s] $*"; }
record() {  # name, status, wall s, limit s, detail
  printf '%-26s %-14s %5s s (limit %3s s)  %s\n' "$1" "$2" "$3" "$4" "${5:-}" | tee -a "$SUMMARY"
}

# step NAME LIMIT LOG CMD...: run CMD under `timeout` (cut to the time left),
# append its output to LOG, record status and wall time; returns CMD's status
# (125 when skipped for lack of time).
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local avail=$(($(left) - 10))
  ((limit > avail)) && limit=$avail
  if ((limit < 10)); then
    record "$name" "SKIPPED" 0 "$limit" "no time left"
    return 125
  fi
  stamp "$name (limit $limit s)"
  echo "== $name: $* (limit $limit s)" >>"$log"
  local t0 rc status
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT" ;;
    77) status="SKIP(no GPU)" ;;
    *) status="FAIL(rc=$rc)" ;;
  esac
  record "$name" "$status" $(($(date +%s) - t0)) "$limit" "$(basename "$log")"
  return $rc
}

clocks() {  # label
  {
    echo "== GPU clocks $1 ($(date -u +%FT%TZ))"
    timeout 20 nvidia-smi --query-gpu=clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,temperature.gpu,power.draw,utilization.gpu \
      --format=csv 2>&1
    timeout 20 nvidia-smi -q -d CLOCK,PERFORMANCE 2>&1 | grep -vE '^\s*$' | head -n 60
  } >>"$LOGS/clocks.log"
  note "clocks $1 (SM MHz, memory MHz, temperature, power): $(timeout 20 nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader 2>&1 | head -n 1)"
}

# ------------------------------------------------------------------ 0. environment
{
  echo "== environment"
  timeout 20 nvidia-smi -L 2>&1 | head -n 4
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 2
  timeout 20 nvcc --version 2>&1 | tail -n 1
  timeout 60 "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1
  for tool in compute-sanitizer ncu cuobjdump; do command -v "$tool" >/dev/null || echo "$tool: not on PATH"; done
} >>"$SUMMARY" 2>&1
cat "$SUMMARY"
clocks before

ARCH=$(timeout 60 "$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}" + ("a" if m == 9 else ""))' 2>/dev/null || echo "9.0a")
GENCODE="-gencode=arch=compute_${ARCH//./},code=sm_${ARCH//./}"
note "arch: TORCH_CUDA_ARCH_LIST=$ARCH ($GENCODE)"

# ------------------------------------------------------------------ 1. builds
CT="$ROOT/build/ctest"
mkdir -p "$CT"
rm -f "$CT"/*.o "$CT/test_cuda_kernels"
build_standalone() {
  set -e
  NVFLAGS="-std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -DPATRONUS_WITH_CUDA -D__CUDA_NO_HALF_OPERATORS__ \
-D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -Icsrc/include -Icsrc"
  export NVFLAGS GENCODE CT
  ls csrc/cuda/*.cu csrc/tests/test_cuda_kernels.cu |
    xargs -P "$((JOBS / 2 > 0 ? JOBS / 2 : 1))" -I{} bash -c 'nvcc -c $NVFLAGS $GENCODE {} -o "$CT/$(basename {}).o"'
  nvcc $GENCODE "$CT"/*.o -o "$CT/test_cuda_kernels"
}
build_extension() {
  TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" PATRONUS_CUDA=1 "$PY" setup.py build_ext --inplace
}
export -f build_standalone build_extension
export ARCH GENCODE CT JOBS PY
step "build standalone test" 240 "$LOGS/build_standalone.log" bash -c build_standalone &
CT_PID=$!
BUILD_OK=0
step "build extension" 300 "$LOGS/build_extension.log" bash -c build_extension && BUILD_OK=1
CT_OK=0
wait "$CT_PID" && [[ -x "$CT/test_cuda_kernels" ]] && CT_OK=1
if [[ $BUILD_OK == 0 ]]; then
  tail -n 25 "$LOGS/build_extension.log" | tee -a "$SUMMARY"
else
  timeout 60 "$PY" -c 'import torch, patronus_ext._C as c; i = c.build_info(); print("build_info: cuda", i["cuda"], "runtime", i.get("cuda_runtime_version"), "arch", i.get("cuda_arch_list"), "kernels", i["kernels"].get("cuda"))' 2>&1 | tee -a "$SUMMARY"
fi
[[ $CT_OK == 0 ]] && tail -n 15 "$LOGS/build_standalone.log" | tee -a "$SUMMARY"

# ------------------------------------------------------------------ 2. SASS counts
# Per kernel: instructions, HMMA (mma.sync), HGMMA (wgmma), LDL / STL (local memory).
sass_counts() {  # binary...
  for bin in "$@"; do
    echo "== $bin"
    cuobjdump --dump-sass "$bin" | awk '
      /code for sm_/ { arch = $NF }
      /Function :/ { fn = $3; order[++nf] = fn; farch[fn] = arch; next }
      fn != "" && /\/\*[0-9a-f]+\*\/ / {
        ins[fn]++
        if ($0 ~ / HMMA[. ]/) hmma[fn]++
        if ($0 ~ / HGMMA[. ]/) hgmma[fn]++
        if ($0 ~ / LDL[. ]/) ldl[fn]++
        if ($0 ~ / STL[. ]/) stl[fn]++
      }
      END {
        printf "%-8s %6s %6s %6s %5s %5s  %s\n", "arch", "instr", "HMMA", "HGMMA", "LDL", "STL", "kernel"
        for (i = 1; i <= nf; i++) {
          f = order[i]
          printf "%-8s %6d %6d %6d %5d %5d  %s\n", farch[f], ins[f], hmma[f], hgmma[f], ldl[f], stl[f], f
        }
      }' | (command -v c++filt >/dev/null && c++filt || cat) | cut -c1-240
  done
}
export -f sass_counts
SASS_BINS=()
[[ $CT_OK == 1 ]] && SASS_BINS+=("$CT/test_cuda_kernels")
[[ $BUILD_OK == 1 ]] && for so in patronus_ext/_C*.so; do [[ -f $so ]] && SASS_BINS+=("$so"); done
if ((${#SASS_BINS[@]} > 0)); then
  step "sass counts" 60 "$OUT/sass_counts.txt" bash -c 'sass_counts "$@"' _ "${SASS_BINS[@]:0:1}"
  grep -E "topk_(mma|simt)_kernel|merge_round" "$OUT/sass_counts.txt" | head -n 12 | tee -a "$SUMMARY"
else
  record "sass counts" "SKIPPED" 0 60 "nothing built"
fi

# ------------------------------------------------------------------ 3. standalone test
SAN="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
CT_PASS=0
if [[ $CT_OK == 1 ]]; then
  step "standalone test" 60 "$LOGS/test_cuda_kernels.log" "$CT/test_cuda_kernels"
  rc=$?
  [[ $rc == 0 ]] && CT_PASS=1
  note "  $(tail -n 1 "$LOGS/test_cuda_kernels.log")"
  grep -E "^FAIL|^  " "$LOGS/test_cuda_kernels.log" | head -n 15 | tee -a "$SUMMARY"
  if [[ $rc != 0 && $rc != 77 ]]; then
    note "standalone test failed: memcheck / racecheck on --tiny, benchmark skipped"
    SKIP_BENCH=1
    step "memcheck --tiny" 90 "$LOGS/sanitizer.log" "$SAN" --tool memcheck --leak-check no --error-exitcode 3 \
      "$CT/test_cuda_kernels" --tiny
    step "racecheck --tiny" 90 "$LOGS/sanitizer.log" "$SAN" --tool racecheck --racecheck-report hazard \
      --error-exitcode 3 "$CT/test_cuda_kernels" --tiny
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOGS/sanitizer.log" | tee -a "$SUMMARY"
  fi
else
  record "standalone test" "SKIPPED" 0 60 "build failed"
fi

# ------------------------------------------------------------------ 4. pytest, one process per op
if [[ $BUILD_OK == 1 ]]; then
  if timeout 60 "$PY" -c 'import pytest_timeout' 2>/dev/null; then
    PT_TIMEOUT=(--timeout 60)
  else
    PT_TIMEOUT=(-o faulthandler_timeout=60)
  fi
  for spec in "token_topk:180" "supcon:120" "bank_similarity:90"; do
    op=${spec%%:*}
    step "pytest $op" "${spec##*:}" "$LOGS/pytest_$op.log" "$PY" -m pytest tests/test_ops_cuda.py -q -rs \
      -p no:cacheprovider "${PT_TIMEOUT[@]}" -k "$op"
    note "  $(grep -E '(passed|failed|error|skipped|no tests ran)' "$LOGS/pytest_$op.log" | tail -n 1)"
    grep -E "^(FAILED|ERROR)" "$LOGS/pytest_$op.log" | head -n 10 | tee -a "$SUMMARY"
  done
else
  record "pytest" "SKIPPED" 0 0 "extension build failed"
fi

# ------------------------------------------------------------------ 5. tiny end-to-end CUDA scans
# benchmarks/tiny_end_to_end.py (tests/test_bait.py runs the same on the CPU): the Patronus scan of a planted
# 2-layer BERT and the BAIT scan (+ trigger search) of a planted tiny chat LLaMA, through the CLI, --device cuda.
if [[ $BUILD_OK == 1 && "${SKIP_SCAN:-0}" != "1" ]]; then
  step "tiny CUDA scans" 150 "$LOGS/tiny_scan.log" "$PY" benchmarks/tiny_end_to_end.py --device cuda --work "$LOGS/e2e"
  grep -E "^(PASS|FAIL)|Error" "$LOGS/tiny_scan.log" | cut -c1-300 | tee -a "$SUMMARY"
else
  record "tiny CUDA scans" "SKIPPED" 0 150 "build failed or SKIP_SCAN=1"
fi

# ------------------------------------------------------------------ 6. benchmark
if [[ "${SKIP_BENCH:-0}" != "1" && $BUILD_OK == 1 ]]; then
  BB=$(($(left) - 150))
  ((BB > 240)) && BB=240
  if ((BB >= 60)); then
    COMPILE=(--no-compile)
    ((BB >= 200)) && COMPILE=(--compile-budget-s $((BB / 3)))
    step "benchmark (key shapes)" $((BB + 30)) "$LOGS/bench.log" "$PY" benchmarks/bench_cuda.py --out "$OUT" \
      --budget-s "$BB" --key-only "${COMPILE[@]}"
    if [[ -f "$OUT/RESULTS.md" ]]; then
      sed -n '/^## Target check/,$p' "$OUT/RESULTS.md" | tee -a "$SUMMARY"
    else
      tail -n 10 "$LOGS/bench.log" | tee -a "$SUMMARY"
    fi
  else
    record "benchmark (key shapes)" "SKIPPED" 0 0 "only $(left) s left"
  fi
else
  record "benchmark (key shapes)" "SKIPPED" 0 0 "standalone test failed, build failed or SKIP_BENCH=1"
fi

# ------------------------------------------------------------------ 7. ncu on one token_topk launch each
if [[ "${SKIP_NCU:-0}" != "1" && $BUILD_OK == 1 ]] && command -v ncu >/dev/null; then
  : >"$OUT/ncu_topk.txt"
  for k in 10 256; do
    step "ncu token_topk k=$k" 90 "$OUT/ncu_topk.txt" ncu --clock-control none --section SpeedOfLight \
      --section MemoryWorkloadAnalysis --kernel-name "regex:topk_(mma|simt)_kernel" --launch-count 1 \
      --target-processes all "$PY" benchmarks/bench_cuda.py --out "$LOGS" --single-topk "$k" --single-precision bf16
  done
  grep -E "==PROF==|topk_|Duration|Memory Throughput|Compute \(SM\) Throughput|DRAM Throughput|L2 Hit|Grid Size" \
    "$OUT/ncu_topk.txt" | grep -v "^== " | head -n 30 | tee -a "$SUMMARY"
else
  record "ncu" "SKIPPED" 0 0 "build failed, SKIP_NCU=1 or no ncu"
fi

# ------------------------------------------------------------------ 8. sanitizer when time is left
if [[ $CT_PASS == 1 ]] && (($(left) > 100)) && [[ -x "$SAN" ]]; then
  step "memcheck --tiny" 90 "$LOGS/sanitizer.log" "$SAN" --tool memcheck --leak-check no --error-exitcode 3 \
    "$CT/test_cuda_kernels" --tiny
  grep -E "ERROR SUMMARY" "$LOGS/sanitizer.log" | tail -n 1 | tee -a "$SUMMARY"
fi

# ------------------------------------------------------------------ 9. clocks after, pack
clocks after
note "total: $(($(date +%s) - START)) s"
cp "$SUMMARY" "$LOGS/summary.txt"
for f in bench_cuda.json RESULTS.md sass_counts.txt ncu_topk.txt; do [[ -f "$OUT/$f" ]] && cp "$OUT/$f" "$LOGS/"; done
timeout 20 tar -czf "$OUT/gpu_logs.tar.gz" -C "$LOGS" . || echo "packing the logs failed" | tee -a "$SUMMARY"
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
echo "================ summary ================"
cat "$SUMMARY"
exit 0
