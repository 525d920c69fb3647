// SupCon loss kernels (docs/METHODS.md §1), batched over C problems (CUDA headers only).
//
// Never an N x N buffer: every kernel streams 32 x 32 tiles of the similarity
// matrix S = F F^T (raw features; the row norms are folded in afterwards,
// Lambda_ij = S_ij / (|f_i| |f_j| tau)) and keeps only per-row state.
//
// Tile core (float32 / bfloat16 inputs, fp32 FMA): a CTA of 8 warps owns 32
// rows; for each 32-column tile every warp computes the whole 32 x 32 tile
// over its own eighth of every 64-wide k-slice (split-K: a lane stages one row
// of A and one of B, 8 values each, through warp-private shared memory, then
// does 4 x 8 outer-product FMAs per k), and the 8 partial tiles are summed
// through shared memory.
//
// Forward: online log-sum-exp per row (max / rescaled sum, diagonal excluded),
// sum of positive logits and positive count; a second tiny kernel averages
// the rows per problem (deterministic order).
//
// Backward: with G_ij = coef_i (p_ij - P_ij / n_i), dL/dZ = (G + G^T) Z / tau.
// A CTA recomputes S for its 32 rows x each column tile, forms
// H'_ij = (G_ij + G_ji) / (|f_j| tau) in shared memory and accumulates
// dZ_I += H' F_J into registers: warp w owns 32U of the output columns, a lane
// U of them for all 32 rows (U <= 3, so 768 columns per pass; wider d is done
// in column chunks, recomputing S per chunk).  The gradient through
// z = f / max(|f|, eps) is applied in the same kernel when one chunk covers d,
// else by a finalize kernel on a [C, N, d] fp32 buffer.
//
// float64 takes simple one-row-per-block kernels (they exist for gradcheck).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device_utils.cuh"

namespace patronus {
namespace cuda {
namespace supcon {

constexpr int kThreads = 256;
constexpr int kWarps = 8;
constexpr int kTile = 32;       // rows per CTA and columns per tile
constexpr int kSliceK = 64;     // k per slice (8 per warp)
constexpr int kPitch = 36;      // padded row pitch (floats) of staging and reduction tiles
constexpr double kNormEps = 1e-12;

// ------------------------------------------------------------ prep kernels
// norm[r] = |f_r|, inv[r] = 1 / max(|f_r|, eps), one warp per row.
template <typename T, typename A>
__global__ void norms_kernel(const T* __restrict__ f, int64_t rows, int d, A* __restrict__ norm, A* __restrict__ inv) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const T* src = f + r * d;
  A ss = 0;
  for (int e = lane; e < d; e += 32) {
    const A v = static_cast<A>(dev::to_acc(src[e]));
    ss += v * v;
  }
  ss = dev::warp_sum(ss);
  if (lane == 0) {
    const A nr = sqrt(ss);
    if (norm != nullptr) norm[r] = nr;
    inv[r] = A(1) / (nr > A(kNormEps) ? nr : A(kNormEps));
  }
}

// counts[c, i] = #{j != i : y_j = y_i}.  Grid (ceil(n / 256), C).  (A template so that
// every .cu including this header may instantiate it.)
template <typename L>
__global__ void counts_kernel(const L* __restrict__ labels, int n, int* __restrict__ counts) {
  __shared__ L ys[kThreads];
  const int c = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const L* y = labels + static_cast<int64_t>(c) * n;
  const L yi = i < n ? y[i] : L(0);
  int cnt = 0;
  for (int j0 = 0; j0 < n; j0 += kThreads) {
    __syncthreads();
    if (j0 + static_cast<int>(threadIdx.x) < n) ys[threadIdx.x] = y[j0 + threadIdx.x];
    __syncthreads();
    const int m = min(kThreads, n - j0);
    for (int jj = 0; jj < m; ++jj) cnt += ys[jj] == yi;
  }
  if (i < n) counts[static_cast<int64_t>(c) * n + i] = cnt - 1;
}

// Block-wide sum (blockDim.x == kThreads).
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
  v = dev::warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

// coef[c, i] = grad[c] * factor / used_c for rows with positives (else 0); ipos = 1 / n_i.  Grid C.
template <typename A>
__global__ void coef_kernel(const int* __restrict__ counts, const A* __restrict__ grad_loss, int n, A factor,
                            A* __restrict__ coef, A* __restrict__ ipos) {
  __shared__ int scratch[kWarps];
  const int c = blockIdx.x;
  const int* cn = counts + static_cast<int64_t>(c) * n;
  int used = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) used += cn[i] > 0;
  used = block_sum(used, scratch);
  const A g = used > 0 ? grad_loss[c] * factor / static_cast<A>(used) : A(0);
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int k = cn[i];
    coef[static_cast<int64_t>(c) * n + i] = k > 0 ? g : A(0);
    ipos[static_cast<int64_t>(c) * n + i] = k > 0 ? A(1) / static_cast<A>(k) : A(0);
  }
}

// loss[c] = factor * mean of row_loss over rows with positives (0 when none).  Grid C.
template <typename A>
__global__ void loss_kernel(const A* __restrict__ row_loss, const int* __restrict__ counts, int n, A factor,
                            A* __restrict__ loss) {
  __shared__ A scratch_a[kWarps];
  __shared__ int scratch_i[kWarps];
  const int c = blockIdx.x;
  A total = 0;
  int used = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int64_t at = static_cast<int64_t>(c) * n + i;
    if (counts[at] > 0) {
      total += row_loss[at];
      ++used;
    }
  }
  total = block_sum(total, scratch_a);
  used = block_sum(used, scratch_i);
  if (threadIdx.x == 0) loss[c] = used > 0 ? factor * total / static_cast<A>(used) : A(0);
}

// ------------------------------------------------------------- tile core
// 8 consecutive elements [k0, k0 + 8) of row g (zeros outside the matrix).
template <typename T>
__device__ __forceinline__ void load8(const T* __restrict__ fp, int n, int d, bool vec, int g, int k0, float (&v)[8]);

template <>
__device__ __forceinline__ void load8<float>(const float* __restrict__ fp, int n, int d, bool vec, int g, int k0,
                                             float (&v)[8]) {
  if (g >= n || k0 >= d) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.f;
    return;
  }
  const float* src = fp + static_cast<int64_t>(g) * d + k0;
  if (vec) {  // d % 4 == 0, 16-byte aligned rows: each float4 is all in or all out
    const float4 a = __ldg(reinterpret_cast<const float4*>(src));
    const float4 b = k0 + 8 <= d ? __ldg(reinterpret_cast<const float4*>(src) + 1) : make_float4(0.f, 0.f, 0.f, 0.f);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = k0 + e < d ? __ldg(src + e) : 0.f;
  }
}

template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* __restrict__ fp, int n, int d, bool vec,
                                                     int g, int k0, float (&v)[8]) {
  if (g >= n || k0 >= d) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.f;
    return;
  }
  const __nv_bfloat16* src = fp + static_cast<int64_t>(g) * d + k0;
  if (vec) {  // d % 8 == 0, 16-byte aligned rows
    dev::ldg_bf16x8(src, v);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = k0 + e < d ? __bfloat162float(src[e]) : 0.f;
  }
}

// This warp's partial of the 32 x 32 tile S[i0 + r, j0 + c] over its k share.
// Lane layout of the result: rows (lane >> 2) * 4 + [0, 4), cols (lane & 3) * 8 + [0, 8), acc[r * 8 + c].
// `stage` is this warp's private 2 x 8 x kPitch floats.
template <typename T>
__device__ __forceinline__ void warp_partial(const T* __restrict__ fp, int n, int d, bool vec, int i0, int j0,
                                             float* stage, float (&acc)[32]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rg = lane >> 2, cg = lane & 3;
  float* aw = stage;
  float* bw = stage + 8 * kPitch;
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;
  float ra[8], rb[8];
  load8<T>(fp, n, d, vec, i0 + lane, warp * 8, ra);
  load8<T>(fp, n, d, vec, j0 + lane, warp * 8, rb);
#pragma unroll 1
  for (int kc = 0; kc < d; kc += kSliceK) {
    __syncwarp();
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      aw[e * kPitch + lane] = ra[e];
      bw[e * kPitch + lane] = rb[e];
    }
    __syncwarp();
    if (kc + kSliceK < d) {
      load8<T>(fp, n, d, vec, i0 + lane, kc + kSliceK + warp * 8, ra);
      load8<T>(fp, n, d, vec, j0 + lane, kc + kSliceK + warp * 8, rb);
    }
#pragma unroll 2
    for (int e = 0; e < 8; ++e) {
      const float4 a = *reinterpret_cast<const float4*>(aw + e * kPitch + rg * 4);
      const float4 b0 = *reinterpret_cast<const float4*>(bw + e * kPitch + cg * 8);
      const float4 b1 = *reinterpret_cast<const float4*>(bw + e * kPitch + cg * 8 + 4);
      const float av[4] = {a.x, a.y, a.z, a.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[r * 8 + c] = fmaf(av[r], bv[c], acc[r * 8 + c]);
    }
  }
}

// Shared-memory layout common to the forward and backward tile kernels.
struct TileSmem {
  float work[kWarps * kTile * kPitch];  // staging (2 x 8 x kPitch per warp) or the 8 partial tiles
};

// Sum the 8 warps' partial tiles: the caller's 4 values S[i0 + tid/8, j0 + (tid%8)*4 + e].
// Contains the barriers that separate staging, partials and the next tile.
__device__ __forceinline__ void reduce_partials(float* work, const float (&acc)[32], float (&out)[4]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int rg = lane >> 2, cg = lane & 3;
  __syncthreads();  // every warp is done with its staging area (aliased below)
  float* mine = work + warp * kTile * kPitch;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    float* dst = mine + (rg * 4 + r) * kPitch + cg * 8;
    *reinterpret_cast<float4*>(dst) = make_float4(acc[r * 8], acc[r * 8 + 1], acc[r * 8 + 2], acc[r * 8 + 3]);
    *reinterpret_cast<float4*>(dst + 4) =
        make_float4(acc[r * 8 + 4], acc[r * 8 + 5], acc[r * 8 + 6], acc[r * 8 + 7]);
  }
  __syncthreads();
  const int row = threadIdx.x >> 3, col = (threadIdx.x & 7) * 4;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const float4 p = *reinterpret_cast<const float4*>(work + w * kTile * kPitch + row * kPitch + col);
    s.x += p.x;
    s.y += p.y;
    s.z += p.z;
    s.w += p.w;
  }
  out[0] = s.x;
  out[1] = s.y;
  out[2] = s.z;
  out[3] = s.w;
  __syncthreads();  // partial tiles consumed; staging may reuse the area
}

// ------------------------------------------------------------- forward
// Grid (ceil(n / 32), C).  Writes lse [C, n], row_loss [C, n] (0 without positives), counts [C, n].
template <typename T>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const T* __restrict__ features, const int64_t* __restrict__ labels,
                                                       const float* __restrict__ inv_norm, int n, int d, float inv_tau,
                                                       int vec, float* __restrict__ lse, float* __restrict__ row_loss,
                                                       int* __restrict__ counts) {
  __shared__ __align__(16) TileSmem ts;
  __shared__ int64_t yj[kTile];
  __shared__ float invj[kTile];
  const int c = blockIdx.y;
  const int i0 = blockIdx.x * kTile;
  const int64_t base = static_cast<int64_t>(c) * n;
  const T* fp = features + base * d;
  const int64_t* y = labels + base;
  const float* inv = inv_norm + base;
  const int warp = threadIdx.x >> 5;
  const int i = i0 + (threadIdx.x >> 3);
  const int jc = (threadIdx.x & 7) * 4;
  const bool row_ok = i < n;
  const int64_t yi = row_ok ? y[i] : 0;
  const float invi = row_ok ? inv[i] : 0.f;
  const float neg_inf = dev::Num<float>::neg_inf();
  float m = neg_inf, s = 0.f, psum = 0.f;
  int pcnt = 0;
  bool saw_nan = false;

#pragma unroll 1
  for (int j0 = 0; j0 < n; j0 += kTile) {
    __syncthreads();  // the previous tile's epilogue is done with yj / invj
    if (threadIdx.x < kTile) {
      const int j = j0 + threadIdx.x;
      yj[threadIdx.x] = j < n ? y[j] : 0;
      invj[threadIdx.x] = j < n ? inv[j] : 0.f;
    }
    float acc[32];
    warp_partial<T>(fp, n, d, vec != 0, i0, j0, ts.work + warp * 2 * 8 * kPitch, acc);
    float sv[4];
    reduce_partials(ts.work, acc, sv);  // its barriers also publish yj / invj
    float x[4];
    float tmax = neg_inf;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = j0 + jc + e;
      const bool ok = row_ok && j < n && j != i;
      x[e] = ok ? sv[e] * invi * invj[jc + e] * inv_tau : neg_inf;
      saw_nan |= x[e] != x[e];
      tmax = fmaxf(tmax, x[e]);
      if (ok && yj[jc + e] == yi) {
        psum += x[e];
        ++pcnt;
      }
    }
    tmax = dev::group_max<8>(tmax);
    const float mnew = fmaxf(m, tmax);
    // (Shuffles stay outside the per-row branch: every lane of the warp must take part.)
    float part = 0.f;
    if (mnew != neg_inf) {
#pragma unroll
      for (int e = 0; e < 4; ++e) part += dev::Num<float>::exp(x[e] - mnew);
    }
    part = dev::group_sum<8>(part);
    if (mnew != neg_inf) {
      s = s * dev::Num<float>::exp(m - mnew) + part;
      m = mnew;
    }
  }
  psum = dev::group_sum<8>(psum);
  pcnt = dev::group_sum<8>(pcnt);
  saw_nan = dev::group_sum<8>(static_cast<int>(saw_nan)) != 0;
  if (row_ok && (threadIdx.x & 7) == 0) {
    float l = m == neg_inf ? neg_inf : m + logf(s);
    if (saw_nan) l = dev::Num<float>::nan();
    lse[base + i] = l;
    row_loss[base + i] = pcnt > 0 ? l - psum / static_cast<float>(pcnt) : 0.f;
    counts[base + i] = pcnt;
  }
}

// ------------------------------------------------------------- backward
struct BwdVectors {
  const int64_t* labels;   // [C, n]
  const float* lse;        // [C, n]
  const float* inv_norm;   // [C, n]
  const float* norm;       // [C, n]
  const float* coef;       // [C, n]
  const float* ipos;       // [C, n]
};

// Grid (ceil(n / 32), chunks, C).  Columns [chunk * 256U, +256U) of dZ for 32 rows.
// fused: one chunk covers d -> write grad_f (T); else write the fp32 dZ to gbuf [C, n, d].
template <typename T, int U>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const T* __restrict__ features, BwdVectors vecs, int n, int d,
                                                       float inv_tau, int vec, int fused, T* __restrict__ grad,
                                                       float* __restrict__ gbuf) {
  __shared__ __align__(16) TileSmem ts;
  __shared__ __align__(16) float ht[kTile * kTile];  // H'[i][j] stored as ht[j * 32 + i]
  __shared__ int64_t yj[kTile];
  __shared__ float lsej[kTile], invj[kTile], coefj[kTile], iposj[kTile];
  __shared__ float dotp[kWarps * kTile];
  constexpr int kCols = 32 * kWarps * U;  // output columns per chunk
  const int c = blockIdx.z;
  const int i0 = blockIdx.x * kTile;
  const int col0 = blockIdx.y * kCols;
  const int64_t base = static_cast<int64_t>(c) * n;
  const T* fp = features + base * d;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int i = i0 + (threadIdx.x >> 3);
  const int jc = (threadIdx.x & 7) * 4;
  const bool row_ok = i < n;
  const int64_t yi = row_ok ? vecs.labels[base + i] : 0;
  const float invi = row_ok ? vecs.inv_norm[base + i] : 0.f;
  const float lsei = row_ok ? vecs.lse[base + i] : 0.f;
  const float coefi = row_ok ? vecs.coef[base + i] : 0.f;
  const float iposi = row_ok ? vecs.ipos[base + i] : 0.f;

  float g[kTile][U];
#pragma unroll
  for (int r = 0; r < kTile; ++r)
#pragma unroll
    for (int u = 0; u < U; ++u) g[r][u] = 0.f;
  const int mycol = col0 + warp * 32 * U + lane;  // + 32 u

#pragma unroll 1
  for (int j0 = 0; j0 < n; j0 += kTile) {
    if (threadIdx.x < kTile) {
      const int j = j0 + threadIdx.x;
      const bool ok = j < n;
      yj[threadIdx.x] = ok ? vecs.labels[base + j] : 0;
      lsej[threadIdx.x] = ok ? vecs.lse[base + j] : 0.f;
      invj[threadIdx.x] = ok ? vecs.inv_norm[base + j] : 0.f;
      coefj[threadIdx.x] = ok ? vecs.coef[base + j] : 0.f;
      iposj[threadIdx.x] = ok ? vecs.ipos[base + j] : 0.f;
    }
    float acc[32];
    warp_partial<T>(fp, n, d, vec != 0, i0, j0, ts.work + warp * 2 * 8 * kPitch, acc);
    float sv[4];
    reduce_partials(ts.work, acc, sv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int jl = jc + e, j = j0 + jl;
      float h = 0.f;
      if (row_ok && j < n && j != i) {
        const float x = sv[e] * invi * invj[jl] * inv_tau;
        const float same = yj[jl] == yi ? 1.f : 0.f;
        const float gij = coefi * (dev::Num<float>::exp(x - lsei) - same * iposi);
        const float gji = coefj[jl] * (dev::Num<float>::exp(x - lsej[jl]) - same * iposj[jl]);
        h = (gij + gji) * invj[jl] * inv_tau;
      }
      ht[jl * kTile + (threadIdx.x >> 3)] = h;
    }
    __syncthreads();
    const int jn = min(kTile, n - j0);
    // dZ_I[:, cols] += H'[:, jj] f_{j0 + jj}[cols]; the next row of F is loaded one step ahead.
    float fv[U], fn[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int col = mycol + 32 * u;
      fv[u] = col < d ? dev::to_acc(fp[static_cast<int64_t>(j0) * d + col]) : 0.f;
    }
#pragma unroll 1
    for (int jj = 0; jj < jn; ++jj) {
      if (jj + 1 < jn) {
        const T* frow = fp + static_cast<int64_t>(j0 + jj + 1) * d;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int col = mycol + 32 * u;
          fn[u] = col < d ? dev::to_acc(frow[col]) : 0.f;
        }
      }
      const float* hrow = ht + jj * kTile;
#pragma unroll
      for (int r4 = 0; r4 < kTile / 4; ++r4) {
        const float4 h4 = *reinterpret_cast<const float4*>(hrow + r4 * 4);
        const float hv[4] = {h4.x, h4.y, h4.z, h4.w};
#pragma unroll
        for (int q = 0; q < 4; ++q)
#pragma unroll
          for (int u = 0; u < U; ++u) g[r4 * 4 + q][u] = fmaf(hv[q], fv[u], g[r4 * 4 + q][u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) fv[u] = fn[u];
    }
    // The next tile's first barrier (in reduce_partials) orders these reads of ht before its rewrite.
  }

  if (!fused) {
#pragma unroll
    for (int r = 0; r < kTile; ++r) {
      const int row = i0 + r;
      if (row >= n) break;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int col = mycol + 32 * u;
        if (col < d) gbuf[(base + row) * d + col] = g[r][u];
      }
    }
    return;
  }
  // Through z = f / max(|f|, eps): grad_f = (g - z (z . g)) / |f| (g / eps for a near-zero row).
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    const int row = i0 + r;
    const float inv_r = row < n ? vecs.inv_norm[base + row] : 0.f;
    float part = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int col = mycol + 32 * u;
      const float z = (row < n && col < d) ? dev::to_acc(fp[static_cast<int64_t>(row) * d + col]) * inv_r : 0.f;
      part += z * g[r][u];
    }
    part = dev::warp_sum(part);
    if (lane == 0) dotp[warp * kTile + r] = part;
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    const int row = i0 + r;
    if (row >= n) break;
    float dot = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) dot += dotp[w * kTile + r];
    const float inv_r = vecs.inv_norm[base + row];
    const bool big = vecs.norm[base + row] > static_cast<float>(kNormEps);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int col = mycol + 32 * u;
      if (col < d) {
        const float z = dev::to_acc(fp[static_cast<int64_t>(row) * d + col]) * inv_r;
        const float gv = big ? (g[r][u] - z * dot) * inv_r : g[r][u] * inv_r;
        grad[(base + row) * d + col] = dev::from_acc<T>(gv);
      }
    }
  }
}

// gbuf [rows, d] fp32 dZ -> grad_f (T); one warp per row.
template <typename T, typename A>
__global__ void finalize_kernel(const T* __restrict__ features, const A* __restrict__ gbuf, const A* __restrict__ norm,
                                const A* __restrict__ inv_norm, int64_t rows, int d, T* __restrict__ grad) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const T* f = features + r * d;
  const A* g = gbuf + r * d;
  const A inv = inv_norm[r];
  A dot = 0;
  for (int e = lane; e < d; e += 32) dot += static_cast<A>(dev::to_acc(f[e])) * inv * g[e];
  dot = dev::warp_sum(dot);
  const bool big = norm[r] > A(kNormEps);
  for (int e = lane; e < d; e += 32) {
    const A z = static_cast<A>(dev::to_acc(f[e])) * inv;
    const A gv = big ? (g[e] - z * dot) * inv : g[e] * inv;
    grad[r * d + e] = dev::from_acc<T>(gv);
  }
}

// ------------------------------------------------------ float64 (simple)
// One block (kThreads) per (row i, problem c): lse, row_loss, counts.
template <typename T, typename A>
__global__ void fwd_simple_kernel(const T* __restrict__ features, const int64_t* __restrict__ labels,
                                  const A* __restrict__ inv_norm, int n, int d, A inv_tau, A* __restrict__ lse,
                                  A* __restrict__ row_loss, int* __restrict__ counts) {
  __shared__ A sm_m[kThreads], sm_s[kThreads], sm_p[kThreads];
  __shared__ int sm_c[kThreads], sm_nan[kThreads];
  const int i = blockIdx.x, c = blockIdx.y;
  const int64_t base = static_cast<int64_t>(c) * n;
  const T* fi = features + (base + i) * d;
  const A neg_inf = dev::Num<A>::neg_inf();
  const int64_t yi = labels[base + i];
  const A invi = inv_norm[base + i];
  A m = neg_inf, s = 0, p = 0;
  int cnt = 0, nan = 0;
  for (int j = threadIdx.x; j < n; j += kThreads) {
    if (j == i) continue;
    const T* fj = features + (base + j) * d;
    A dot = 0;
    for (int e = 0; e < d; ++e) dot += static_cast<A>(dev::to_acc(fi[e])) * static_cast<A>(dev::to_acc(fj[e]));
    const A x = dot * invi * inv_norm[base + j] * inv_tau;
    if (labels[base + j] == yi) {
      p += x;
      ++cnt;
    }
    if (x != x) {
      nan = 1;
    } else if (x > m) {
      s = (m == neg_inf ? A(0) : s * dev::Num<A>::exp(m - x)) + A(1);
      m = x;
    } else if (x != neg_inf) {
      s += dev::Num<A>::exp(x - m);
    }
  }
  sm_m[threadIdx.x] = m;
  sm_s[threadIdx.x] = s;
  sm_p[threadIdx.x] = p;
  sm_c[threadIdx.x] = cnt;
  sm_nan[threadIdx.x] = nan;
  __syncthreads();
  if (threadIdx.x == 0) {
    A mm = neg_inf;
    for (int t = 0; t < kThreads; ++t) mm = sm_m[t] > mm ? sm_m[t] : mm;
    A ss = 0, pp = 0;
    int cc = 0, any_nan = 0;
    for (int t = 0; t < kThreads; ++t) {
      if (sm_m[t] != neg_inf) ss += sm_s[t] * dev::Num<A>::exp(sm_m[t] - mm);
      pp += sm_p[t];
      cc += sm_c[t];
      any_nan |= sm_nan[t];
    }
    A l = mm == neg_inf ? neg_inf : mm + dev::Num<A>::log(ss);
    if (any_nan) l = dev::Num<A>::nan();
    lse[base + i] = l;
    row_loss[base + i] = cc > 0 ? l - pp / static_cast<A>(cc) : A(0);
    counts[base + i] = cc;
  }
}

// One block per (row i, problem c): dZ_i into gbuf [C, n, d] (A), then finalize_kernel.
template <typename T, typename A>
__global__ void bwd_simple_kernel(const T* __restrict__ features, const int64_t* __restrict__ labels, const A* __restrict__ lse,
                                  const A* __restrict__ inv_norm, const A* __restrict__ coef, const A* __restrict__ ipos,
                                  int n, int d, A inv_tau, A* __restrict__ gbuf) {
  __shared__ A h[kThreads];
  const int i = blockIdx.x, c = blockIdx.y;
  const int64_t base = static_cast<int64_t>(c) * n;
  const T* fi = features + (base + i) * d;
  A* gi = gbuf + (base + i) * d;
  const int64_t yi = labels[base + i];
  const A invi = inv_norm[base + i], lsei = lse[base + i], coefi = coef[base + i], iposi = ipos[base + i];
  for (int e = threadIdx.x; e < d; e += kThreads) gi[e] = 0;
  for (int j0 = 0; j0 < n; j0 += kThreads) {
    const int j = j0 + threadIdx.x;
    A hv = 0;
    if (j < n && j != i) {
      const T* fj = features + (base + j) * d;
      A dot = 0;
      for (int e = 0; e < d; ++e) dot += static_cast<A>(dev::to_acc(fi[e])) * static_cast<A>(dev::to_acc(fj[e]));
      const A x = dot * invi * inv_norm[base + j] * inv_tau;
      const A same = labels[base + j] == yi ? A(1) : A(0);
      const A gij = coefi * (dev::Num<A>::exp(x - lsei) - same * iposi);
      const A gji = coef[base + j] * (dev::Num<A>::exp(x - lse[base + j]) - same * ipos[base + j]);
      hv = (gij + gji) * inv_norm[base + j] * inv_tau;
    }
    __syncthreads();
    h[threadIdx.x] = hv;
    __syncthreads();
    const int jn = min(kThreads, n - j0);
    for (int e = threadIdx.x; e < d; e += kThreads) {
      A acc = gi[e];
      for (int jj = 0; jj < jn; ++jj) acc += h[jj] * static_cast<A>(dev::to_acc(features[(base + j0 + jj) * d + e]));
      gi[e] = acc;
    }
  }
}

// ------------------------------------------------------------ launchers
// Output columns per lane for a feature width d (a pass covers 256 U columns).
inline int cols_per_lane(int d) { return d <= 256 ? 1 : (d <= 512 ? 2 : 3); }
inline int column_chunks(int d) { return (d + 256 * cols_per_lane(d) - 1) / (256 * cols_per_lane(d)); }

template <typename T, int U>
cudaError_t launch_bwd_u(const T* f, const BwdVectors& v, int64_t c, int n, int d, float inv_tau, int vec, T* grad,
                         float* gbuf, cudaStream_t stream) {
  const int chunks = (d + 256 * U - 1) / (256 * U);
  bwd_kernel<T, U><<<dim3((n + kTile - 1) / kTile, chunks, static_cast<unsigned>(c)), kThreads, 0, stream>>>(
      f, v, n, d, inv_tau, vec, chunks == 1 ? 1 : 0, grad, gbuf);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const T* f, const BwdVectors& v, int64_t c, int n, int d, float inv_tau, int vec, T* grad,
                       float* gbuf, cudaStream_t stream) {
  switch (cols_per_lane(d)) {
    case 1: return launch_bwd_u<T, 1>(f, v, c, n, d, inv_tau, vec, grad, gbuf, stream);
    case 2: return launch_bwd_u<T, 2>(f, v, c, n, d, inv_tau, vec, grad, gbuf, stream);
    default: return launch_bwd_u<T, 3>(f, v, c, n, d, inv_tau, vec, grad, gbuf, stream);
  }
}

// Defined in supcon_bwd_f32.cu / supcon_bwd_bf16.cu (build parallelism).
cudaError_t launch_bwd_f32(const float* f, const BwdVectors& v, int64_t c, int n, int d, float inv_tau, int vec,
                           float* grad, float* gbuf, cudaStream_t stream);
cudaError_t launch_bwd_bf16(const __nv_bfloat16* f, const BwdVectors& v, int64_t c, int n, int d, float inv_tau,
                            int vec, __nv_bfloat16* grad, float* gbuf, cudaStream_t stream);

}  // namespace supcon
}  // namespace cuda
}  // namespace patronus
