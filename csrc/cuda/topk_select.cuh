// Per-row running top-k of the fused token_topk kernels (CUDA headers only).
//
// A CTA owns BM query rows and one slice of the candidate axis.  For every row
// it keeps, in shared memory, an acceptance bound `lo` (a score is a candidate
// iff score >= lo; NaN never is), a small queue of candidates and the length of
// the row's sorted list, which lives in global memory (the CTA's partial output,
// k entries per row).  Score tiles are offered element by element straight from
// the accumulator registers: almost every score fails the bound after the first
// tiles, so the epilogue costs one shared load and one compare per score.  When
// a queue is full, the warp that owns the row sorts the queue (warp bitonic
// sort) and merges it into the row's list (merge path: binary searches in
// shared memory), truncating at k; once the list holds k entries `lo` becomes
// the next float above the k-th value.  Ties between equal scores may go either
// way (the semantics allow any order), NaN scores are dropped (a real -inf
// outranks them; a row with fewer than k non-NaN scores gets (-inf, -1) in the
// missing slots, as the CPU kernel and the reference report).
#pragma once

#include <cstdint>

#include "device_utils.cuh"
#include "patronus/topk_merge.h"

namespace patronus {
namespace cuda {
namespace topk {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kQueue = 32;   // queue entries per row (one per lane when merged)
constexpr int kMaxK = 256;   // list length bound (warp scratch size)

template <typename A, int BM>
struct Smem {
  A lo[BM];                     // acceptance bound per row
  A qkey[BM * kQueue];          // queued candidate scores
  A skey[kWarps * kMaxK];       // per-warp copy of the list being merged
  A sqk[kWarps * 32];           // per-warp sorted queue
  int cnt[BM];                  // queue fill (may exceed kQueue: overflowed offers)
  int len[BM];                  // list length in global memory (<= k)
  int qidx[BM * kQueue];
  int sidx[kWarps * kMaxK];
};

template <typename A, int BM>
__device__ __forceinline__ void init(Smem<A, BM>& sm) {
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    sm.lo[r] = dev::Num<A>::neg_inf();
    sm.cnt[r] = 0;
    sm.len[r] = 0;
  }
}

// x ranks before y: valid first, larger key first, smaller index first.
template <typename A>
__device__ __forceinline__ bool before(A kx, int ix, bool vx, A ky, int iy, bool vy) {
  return vx && (!vy || kx > ky || (kx == ky && ix < iy));
}

// Bitonic sort of one (key, index, valid) per lane, best first.
template <typename A>
__device__ __forceinline__ void warp_sort(A& key, int& idx, bool& valid, int lane) {
#pragma unroll
  for (int size = 2; size <= 32; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      const A ok = __shfl_xor_sync(0xffffffffu, key, stride);
      const int oi = __shfl_xor_sync(0xffffffffu, idx, stride);
      const bool ov = __shfl_xor_sync(0xffffffffu, static_cast<int>(valid), stride) != 0;
      const bool dir = (lane & size) == 0;
      const bool lower = (lane & stride) == 0;
      const bool take = (lower == dir) ? before(ok, oi, ov, key, idx, valid) : before(key, idx, valid, ok, oi, ov);
      if (take) {
        key = ok;
        idx = oi;
        valid = ov;
      }
    }
  }
}

// Entries of the non-increasing a[0, n) strictly greater than / at least key.
template <typename A>
__device__ __forceinline__ int count_gt(const A* a, int n, A key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] > key) lo = mid + 1; else hi = mid;
  }
  return lo;
}
template <typename A>
__device__ __forceinline__ int count_ge(const A* a, int n, A key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] >= key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Merge row r's queue into its list (gkey/gidx, k entries), by one whole warp.
template <typename A, int BM>
__device__ __noinline__ void warp_merge(Smem<A, BM>& sm, int r, A* gkey, int* gidx, int k, int warp, int lane) {
  const int q = min(sm.cnt[r], kQueue);
  const int len = sm.len[r];
  bool valid = lane < q;
  A key = valid ? sm.qkey[r * kQueue + lane] : dev::Num<A>::neg_inf();
  int idx = valid ? sm.qidx[r * kQueue + lane] : 0x7fffffff;
  warp_sort(key, idx, valid, lane);  // valid entries now on lanes [0, q)
  A* sk = sm.skey + warp * kMaxK;
  int* si = sm.sidx + warp * kMaxK;
  A* qk = sm.sqk + warp * 32;
  qk[lane] = key;
  for (int i = lane; i < len; i += 32) {
    sk[i] = gkey[i];
    si[i] = gidx[i];
  }
  __syncwarp();
  // Merge path, list entries first on ties: every entry's rank in the union.
  for (int i = lane; i < len; i += 32) {
    const A kk = sk[i];
    const int pos = i + count_gt(qk, q, kk);
    if (pos < k) {
      gkey[pos] = kk;
      gidx[pos] = si[i];
      if (pos == k - 1) sm.lo[r] = dev::Num<A>::next_up(kk);
    }
  }
  if (valid) {
    const int pos = lane + count_ge(sk, len, key);
    if (pos < k) {
      gkey[pos] = key;
      gidx[pos] = idx;
      if (pos == k - 1) sm.lo[r] = dev::Num<A>::next_up(key);
    }
  }
  __syncwarp();
  if (lane == 0) {
    sm.len[r] = min(k, len + q);
    sm.cnt[r] = 0;
  }
  __syncwarp();
}

// Offer a thread's NV accumulator values; pos(i, row, col) gives value i's
// tile-local coordinates.  Called by every thread of the CTA (it has barriers).
// list_key/list_idx point at the CTA's first row's list (row stride k).
template <typename A, int BM, int NV, typename PosFn>
__device__ __forceinline__ void offer(Smem<A, BM>& sm, const A* val, PosFn pos, int rows_valid, int cols_valid,
                                     int col_base, bool negate, A* list_key, int* list_idx, int k) {
  static_assert(NV <= 64, "pending mask is 64 bits");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t pend = 0;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    int r, c;
    pos(i, r, c);
    if (r < rows_valid && c < cols_valid) pend |= uint64_t(1) << i;
  }
  while (true) {
    int over = 0;
    if (pend != 0) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        if ((pend >> i) & 1u) {
          int r, c;
          pos(i, r, c);
          const A v = negate ? -val[i] : val[i];
          if (!(v >= sm.lo[r])) {
            pend &= ~(uint64_t(1) << i);
          } else {
            const int p = atomicAdd(&sm.cnt[r], 1);
            if (p < kQueue) {
              sm.qkey[r * kQueue + p] = v;
              sm.qidx[r * kQueue + p] = col_base + c;
              pend &= ~(uint64_t(1) << i);
            } else {
              over = 1;
            }
          }
        }
      }
    }
    if (!__syncthreads_or(over)) break;
    for (int r = warp; r < BM; r += kWarps) {
      if (sm.cnt[r] >= kQueue) warp_merge(sm, r, list_key + static_cast<size_t>(r) * k, list_idx + static_cast<size_t>(r) * k, k, warp, lane);
    }
    __syncthreads();
  }
}

// End of the slice: merge what is queued and pad every valid row's list to k.
template <typename A, int BM>
__device__ __forceinline__ void flush(Smem<A, BM>& sm, int rows_valid, A* list_key, int* list_idx, int k) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  for (int r = warp; r < rows_valid; r += kWarps) {
    A* gk = list_key + static_cast<size_t>(r) * k;
    int* gi = list_idx + static_cast<size_t>(r) * k;
    if (sm.cnt[r] > 0) warp_merge(sm, r, gk, gi, k, warp, lane);
    for (int i = sm.len[r] + lane; i < k; i += 32) {
      gk[i] = dev::Num<A>::neg_inf();
      gi[i] = -1;
    }
  }
}

// One round of the in-place tree merge of per-slice lists [s_total][n][k] (each
// ordered as patronus/topk_merge.h says: real entries by key, non-increasing,
// then padding): list i (i a multiple of 2*stride) becomes the top k of lists
// i and i + stride.  The last round (values set, stride*2 >= s_total) writes the
// final values/indices instead.  Grid (n, ceil(s_total / (2*stride))); dynamic
// shared memory 2*k*(sizeof(A) + 4): both lists are read before any write, and
// no other CTA touches them.
template <typename A>
__global__ void merge_round(A* __restrict__ key, int* __restrict__ idx, int s_total, int stride, int n, int k,
                            A* __restrict__ values, int64_t* __restrict__ indices) {
  extern __shared__ __align__(16) unsigned char merge_smem[];
  A* ak = reinterpret_cast<A*>(merge_smem);
  A* bk = ak + k;
  int* ai = reinterpret_cast<int*>(bk + k);
  int* bi = ai + k;
  const int row = blockIdx.x;
  const int la = blockIdx.y * 2 * stride, lb = la + stride;
  const bool has_b = lb < s_total;
  A* ka = key + (static_cast<size_t>(la) * n + row) * k;
  int* ia = idx + (static_cast<size_t>(la) * n + row) * k;
  const A* kb = key + (static_cast<size_t>(lb) * n + row) * k;
  const int* ib = idx + (static_cast<size_t>(lb) * n + row) * k;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    ak[j] = ka[j];
    ai[j] = ia[j];
    if (has_b) {
      bk[j] = kb[j];
      bi[j] = ib[j];
    }
  }
  __syncthreads();
  auto emit = [&](int pos, A kv, int iv) {
    if (values != nullptr) {
      const bool empty = iv < 0;
      values[static_cast<size_t>(row) * k + pos] = empty ? dev::Num<A>::neg_inf() : kv;
      indices[static_cast<size_t>(row) * k + pos] = empty ? int64_t(-1) : int64_t(iv);
    } else {
      ka[pos] = kv;
      ia[pos] = iv;
    }
  };
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    if (!has_b) {
      emit(j, ak[j], ai[j]);
      continue;
    }
    // Merge path, list a first on ties, padding (index < 0) after every real
    // entry, real -inf scores included: each entry's rank in the union.
    const int pa = topk_merge::merged_position(j, ak[j], ai[j], true, bk, bi, k);
    if (pa < k) emit(pa, ak[j], ai[j]);
    const int pb = topk_merge::merged_position(j, bk[j], bi[j], false, ak, ai, k);
    if (pb < k) emit(pb, bk[j], bi[j]);
  }
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
