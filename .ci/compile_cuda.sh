#!/usr/bin/env bash
# Compile-check the framework-free CUDA sources without a GPU (and without a CUDA
# build of torch): every csrc/**/*.cu with `nvcc -c` for sm_80 and sm_90a, in
# parallel, with the flags setup.py / torch's BuildExtension use.  Fails on any
# compile error.  Writes the ptxas resource usage (registers, spills, stack,
# shared memory per kernel) to $LOG_DIR/ptxas.log and a summary table to
# $LOG_DIR/ptxas_summary.txt (printed too).
#
# Then, if torch is importable, syntax-checks the CUDA torch glue
# (csrc/torch/cuda_ops.cpp) with g++ -fsyntax-only against torch's headers,
# /usr/local/cuda/include and -DPATRONUS_WITH_CUDA.  The CPU wheel of torch
# ships c10/cuda headers without the generated c10/cuda/impl/cuda_cmake_macros.h,
# so the check defines C10_CUDA_NO_CMAKE_CONFIGURE_FILE (the macro torch's own
# headers provide for builds without that file); set SKIP_GLUE_CHECK=1 to skip.
#
# Environment: NVCC (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc), JOBS
# (default: nproc), LOG_DIR (default: a temp dir), STRICT_SPILLS=1 to fail when
# a kernel spills registers.  Exit 0 with a message when nvcc is absent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$NVCC" ]]; then
  echo "compile_cuda.sh: nvcc not found; skipping the CUDA compile check"
  exit 0
fi

JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG_DIR="${LOG_DIR:-$WORK/logs}"
mkdir -p "$LOG_DIR" "$WORK/obj"

mapfile -t SOURCES < <(find csrc -name '*.cu' | sort)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "compile_cuda.sh: no .cu sources under csrc/"
  exit 0
fi

echo "compile_cuda.sh: $("$NVCC" --version | tail -n 1)"
echo "compile_cuda.sh: ${#SOURCES[@]} sources x {sm_80, sm_90a}, $JOBS parallel jobs"

# Same flags as setup.py (+ torch's COMMON_NVCC_FLAGS), plus the ptxas report.
export NVCC WORK
export NVCC_FLAGS="-std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -DPATRONUS_WITH_CUDA \
-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
-D__CUDA_NO_HALF2_OPERATORS__ -Icsrc/include -Icsrc -Xptxas -v"

compile_one() {
  local src="$1" arch="$2"
  local gencode tag
  case "$arch" in
    sm_80) gencode="-gencode=arch=compute_80,code=sm_80" ;;
    sm_90a) gencode="-gencode=arch=compute_90a,code=sm_90a" ;;
  esac
  tag="$(echo "$src" | tr '/.' '__')_$arch"
  # shellcheck disable=SC2086
  if "$NVCC" -c $NVCC_FLAGS $gencode "$src" -o "$WORK/obj/$tag.o" >"$WORK/obj/$tag.log" 2>&1; then
    echo "  ok    $arch  $src"
  else
    echo "  FAIL  $arch  $src"
    grep -E "error|Error" "$WORK/obj/$tag.log" | head -n 20 | sed 's/^/        /'
    return 1
  fi
}
export -f compile_one

START=$(date +%s)
status=0
for src in "${SOURCES[@]}"; do
  for arch in sm_80 sm_90a; do echo "$src $arch"; done
done | xargs -P "$JOBS" -n 2 bash -c 'compile_one "$0" "$1"' || status=1
END=$(date +%s)

cat "$WORK"/obj/*.log >"$LOG_DIR/ptxas.log" 2>/dev/null || true
grep -hE "warning" "$WORK"/obj/*.log | sort -u >"$LOG_DIR/warnings.log" || true

# Summary: one line per (arch, kernel): registers, spill stores/loads, stack, smem.
summarize() {  # POSIX awk (mawk or gawk)
  awk '
    /Compiling entry function/ {
      fn = $0; sub(/.*function ./, "", fn); sub(/. for .*/, "", fn)
      arch = $0; sub(/.* for ./, "", arch); sub(/[^a-z0-9_].*/, "", arch)
      next
    }
    /bytes stack frame/ && fn != "" { stack = $1; st = $5; ld = $9; next }
    /Used [0-9]+ registers/ && fn != "" {
      regs = 0; smem = 0
      for (i = 1; i <= NF; i++) {
        if ($i == "Used") regs = $(i + 1)
        if ($i == "smem" || $i == "smem,") smem = $(i - 2)
      }
      printf "%-7s %4d regs  %5d/%-5d spill st/ld  %4d stack  %6d smem  %s\n", arch, regs, st, ld, stack, smem, fn
      fn = ""; stack = 0; st = 0; ld = 0
    }' "$LOG_DIR/ptxas.log" | sort -u
}
if command -v c++filt >/dev/null 2>&1; then
  summarize | c++filt | sed -E 's/patronus::cuda:://g; s/\(anonymous namespace\):://g' >"$LOG_DIR/ptxas_summary.txt"
else
  summarize >"$LOG_DIR/ptxas_summary.txt"
fi

echo
echo "ptxas resource usage (static smem only; the token_topk kernels also take dynamic smem):"
cut -c1-220 "$LOG_DIR/ptxas_summary.txt"
spills=$(awk '{split($4, s, "/"); if (s[1] + 0 > 0 || s[2] + 0 > 0) n++} END {print n + 0}' "$LOG_DIR/ptxas_summary.txt")
nwarn=$(wc -l <"$LOG_DIR/warnings.log")
echo
echo "compile_cuda.sh: $((END - START)) s, kernels with spills: $spills, distinct warning lines: $nwarn (see $LOG_DIR)"
if [[ "$nwarn" -gt 0 ]]; then sed 's/^/  /' "$LOG_DIR/warnings.log" | head -n 20; fi
if [[ "${STRICT_SPILLS:-0}" == "1" && "$spills" -gt 0 ]]; then
  echo "compile_cuda.sh: STRICT_SPILLS=1 and $spills kernels spill"
  status=1
fi

# ------------------------------------------------------------ glue syntax check
if [[ "${SKIP_GLUE_CHECK:-0}" != "1" ]]; then
  PY="${PYTHON:-python3}"
  if TORCH_INC=$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I" + p for p in include_paths()))' 2>/dev/null); then
    CXX="${CXX:-g++}"
    # shellcheck disable=SC2086
    if "$CXX" -std=c++17 -fsyntax-only -Wall -Wno-sign-compare -DPATRONUS_WITH_CUDA -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
        $TORCH_INC -I"$CUDA_HOME/include" -Icsrc/include -Icsrc csrc/torch/cuda_ops.cpp >"$LOG_DIR/glue.log" 2>&1; then
      echo "compile_cuda.sh: glue syntax check (g++ -fsyntax-only csrc/torch/cuda_ops.cpp): ok"
    else
      echo "compile_cuda.sh: glue syntax check FAILED:"
      grep -E "error" "$LOG_DIR/glue.log" | head -n 20 | sed 's/^/  /'
      status=1
    fi
  else
    echo "compile_cuda.sh: torch not importable; skipping the glue syntax check"
  fi
fi

if [[ $status -ne 0 ]]; then
  echo "compile_cuda.sh: FAILED"
  exit 1
fi
echo "compile_cuda.sh: all CUDA sources compile for sm_80 and sm_90a"
