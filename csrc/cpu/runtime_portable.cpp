// Dependency-free Runtime: a cache-blocked GEMM and a std::thread parallel-for.
// Used by the standalone C++ library and its tests; the torch build uses ATen's.
#include <algorithm>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "patronus/cpu_kernels.h"

namespace patronus {
namespace cpu {
namespace {

template <typename T>
inline T elem(const T* x, int64_t ld, bool trans, int64_t row, int64_t col) {
  return trans ? x[col * ld + row] : x[row * ld + col];
}

// Packs op(B) into [N, K] (row j = column j of op(B)) so the inner loop is a
// contiguous dot product that the compiler vectorises.
template <typename T>
void gemm_portable(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  constexpr int64_t kBlockN = 64;
  std::vector<T> arow(static_cast<size_t>(k));
  std::vector<T> bpack(static_cast<size_t>(kBlockN * k));
  for (int64_t j0 = 0; j0 < n; j0 += kBlockN) {
    const int64_t jn = std::min(kBlockN, n - j0);
    for (int64_t j = 0; j < jn; ++j)
      for (int64_t p = 0; p < k; ++p) bpack[j * k + p] = elem(b, ldb, tb, p, j0 + j);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t p = 0; p < k; ++p) arow[p] = elem(a, lda, ta, i, p);
      for (int64_t j = 0; j < jn; ++j) {
        const T* bj = bpack.data() + j * k;
        T acc = 0;
        for (int64_t p = 0; p < k; ++p) acc += arow[p] * bj[p];
        T* out = c + i * ldc + j0 + j;
        *out = alpha * acc + (beta == T(0) ? T(0) : beta * *out);
      }
    }
  }
}

void parallel_for_threads(int64_t begin, int64_t end, int64_t grain, int threads, void* ctx,
                          void (*body)(void*, int64_t, int64_t)) {
  const int64_t total = end - begin;
  if (total <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = std::min<int64_t>(std::max(threads, 1), (total + grain - 1) / grain);
  if (chunks <= 1) {
    body(ctx, begin, end);
    return;
  }
  const int64_t step = (total + chunks - 1) / chunks;
  std::exception_ptr first_error;
  std::mutex error_lock;
  std::vector<std::thread> workers;
  for (int64_t lo = begin; lo < end; lo += step) {
    const int64_t hi = std::min(end, lo + step);
    workers.emplace_back([=, &first_error, &error_lock] {
      try {
        body(ctx, lo, hi);
      } catch (...) {
        std::lock_guard<std::mutex> guard(error_lock);
        if (!first_error) first_error = std::current_exception();
      }
    });
  }
  for (auto& worker : workers) worker.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace

Runtime portable_runtime(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return Runtime{&gemm_portable<float>, &gemm_portable<double>, &parallel_for_threads, num_threads};
}

}  // namespace cpu
}  // namespace patronus
