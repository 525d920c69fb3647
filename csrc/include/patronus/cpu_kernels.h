// Framework-free CPU kernels of the three ops, on raw row-major pointers.
//
// The host supplies a Runtime: a GEMM and a parallel-for.  The torch build plugs
// in ATen's (MKL/oneDNN GEMM, at::parallel_for); a C++ integrator can plug in
// any BLAS and thread pool, or use portable_runtime().  Inputs are assumed
// validated by the caller (shapes, k range, row ids); violated preconditions
// that are cheap to check throw std::invalid_argument.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "patronus/common.h"

namespace patronus {
namespace cpu {

// Row-major C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
// A is [M,K] (or [K,M] when trans_a), B is [K,N] (or [N,K] when trans_b).
template <typename T>
using GemmFn = void (*)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                        const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                        int64_t ldc);

// Calls body(ctx, lo, hi) over disjoint chunks covering [begin, end), running
// at most `threads` at once; chunks hold at least `grain` items.  Bodies run
// concurrently; an exception from one reaches the caller after all finish.
using ParallelForFn = void (*)(int64_t begin, int64_t end, int64_t grain, int threads, void* ctx,
                               void (*body)(void* ctx, int64_t lo, int64_t hi));

struct Runtime {
  GemmFn<float> sgemm;
  GemmFn<double> dgemm;
  ParallelForFn parallel_for;
  int num_threads;  // how many bodies may run at once (also a work-splitting hint)
};

// Cache-blocked GEMM and std::thread parallel-for; no dependencies.  num_threads
// <= 0 means std::thread::hardware_concurrency().
Runtime portable_runtime(int num_threads = 0);

// token_topk: see patronus_ext.ops.  values are acc_t (float or double),
// rows may be null (token level, T = 1, W = V).  Returns in values/indices.
void token_topk(const Runtime& rt, DType dtype, const void* queries, const void* table,
                const int64_t* rows, int64_t n, int64_t t, int64_t d, int64_t v, int64_t w,
                int64_t k, bool negate, void* values, int64_t* indices);

// SupCon forward over C problems: features [C,N,d], labels [C,N] -> loss [C]
// and the per-row log-sum-exp lse [C,N] (both acc_t), saved for the backward.
void supcon_forward(const Runtime& rt, DType dtype, const void* features, const int64_t* labels,
                    int64_t c, int64_t n, int64_t d, double temperature, bool scale_by_temperature,
                    void* loss, void* lse);

// SupCon backward: grad_loss [C] and lse [C,N] (acc_t) -> grad_features [C,N,d] (dtype).
void supcon_backward(const Runtime& rt, DType dtype, const void* grad_loss, const void* features,
                     const int64_t* labels, const void* lse, int64_t c, int64_t n, int64_t d,
                     double temperature, bool scale_by_temperature, void* grad_features);

enum class BankMode : int { kCosine = 0, kSign = 1 };

// bank_similarity: x [M,d], bank [K,d] -> best [M] (acc_t), index [M].
void bank_similarity(const Runtime& rt, DType dtype, const void* x, const void* bank, int64_t m,
                     int64_t kbank, int64_t d, BankMode mode, void* best, int64_t* index);

// Lambda adapter for Runtime::parallel_for.
template <typename Fn>
void parallel_for(const Runtime& rt, int64_t begin, int64_t end, int64_t grain, Fn&& fn) {
  if (begin >= end) return;
  auto trampoline = [](void* ctx, int64_t lo, int64_t hi) { (*static_cast<Fn*>(ctx))(lo, hi); };
  rt.parallel_for(begin, end, grain, rt.num_threads, &fn, trampoline);
}

// Runs body(claim) on every thread, where claim() hands out the items of
// [0, count) one at a time (-1 when none are left).  A thread slowed down by
// other processes, or by heavier items, simply claims fewer, where a static
// split would wait for it.  Thread-local scratch lives in the body.
template <typename Body>
void parallel_claims(const Runtime& rt, int64_t count, Body&& body) {
  std::atomic<int64_t> next{0};
  auto claim = [&next, count]() -> int64_t {
    const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
    return item < count ? item : -1;
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(count, rt.num_threads));
  parallel_for(rt, 0, workers, 1, [&](int64_t, int64_t) { body(claim); });
}

template <typename T> inline GemmFn<T> gemm_of(const Runtime& rt);
template <> inline GemmFn<float> gemm_of<float>(const Runtime& rt) { return rt.sgemm; }
template <> inline GemmFn<double> gemm_of<double>(const Runtime& rt) { return rt.dgemm; }

}  // namespace cpu
}  // namespace patronus
