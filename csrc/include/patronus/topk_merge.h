// Merge order of token_topk's partial lists, shared by the CUDA merge kernel
// (csrc/cuda/topk_select.cuh) and the CPU test that checks it
// (csrc/tests/test_cpu_kernels.cpp).  No CUDA headers needed.
//
// A partial list holds the real entries of one slice of the candidate axis
// (index >= 0; key = score, never NaN, possibly -inf), by key, non-increasing,
// then padding entries (index < 0, key -inf) up to k.  The order of the merge:
// every real entry before every padding entry (a real -inf score outranks the
// padding that only looks like one), then larger key first; equal entries keep
// list a's before list b's, so positions are unique.
#pragma once

#if defined(__CUDACC__)
#define PATRONUS_TOPK_HD __host__ __device__ __forceinline__
#else
#define PATRONUS_TOPK_HD inline
#endif

namespace patronus {
namespace topk_merge {

// Whether list entry (ky, iy) ranks before x = (kx, x_real); ties count iff or_equal.
template <typename A>
PATRONUS_TOPK_HD bool ranks_before(A ky, int iy, A kx, bool x_real, bool or_equal) {
  const bool y_real = iy >= 0;
  if (y_real != x_real) return y_real;
  return ky > kx || (or_equal && ky == kx);
}

// Entries of the ordered list (key, idx)[0, n) that rank before x (binary search).
template <typename A>
PATRONUS_TOPK_HD int count_before(const A* key, const int* idx, int n, A kx, int ix, bool or_equal) {
  const bool x_real = ix >= 0;
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ranks_before(key[mid], idx[mid], kx, x_real, or_equal)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Merge path: the position in the merged list of entry j of list a (from_a) or
// of list b, given the other list (ok, oi)[0, n).  Positions of all entries of
// both lists are a permutation of [0, 2n); those below k are the merged top k.
template <typename A>
PATRONUS_TOPK_HD int merged_position(int j, A key, int idx, bool from_a, const A* ok, const int* oi, int n) {
  return j + count_before(ok, oi, n, key, idx, /*or_equal=*/!from_a);
}

}  // namespace topk_merge
}  // namespace patronus
