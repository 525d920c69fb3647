// bank_similarity: best cosine / sign agreement of each row of x [m, d] against
// a bank [kbank, d] (the monitoring hot path).
//
// One launch, no scratch, no host synchronisation (CUDA-graph capturable).  A
// CTA owns RB rows of x; warp w takes bank vectors w, w + warps, ... and, per
// vector, streams it once (16-byte loads when d and the pointers allow) while
// accumulating RB dot products / sign agreements against the CTA's x rows
// (L1-resident), then reduces across lanes.  Each warp keeps a running best
// per row over increasing bank indices (so ties keep the lowest index), and
// the warps' bests are combined in shared memory with the same rule.  NaN
// similarities never win; a row whose similarities are all NaN gets (NaN, -1).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "device_utils.cuh"
#include "patronus/cuda_kernels.h"

namespace patronus {
namespace cuda {
namespace {

constexpr double kCosineEps = 1e-8;

template <typename T, int V> struct VecLoad;
template <typename T> struct VecLoad<T, 1> {
  template <typename A>
  __device__ __forceinline__ static void run(const T* p, A (&out)[1]) { out[0] = static_cast<A>(dev::to_acc(p[0])); }
};
template <> struct VecLoad<float, 4> {
  template <typename A>
  __device__ __forceinline__ static void run(const float* p, A (&out)[4]) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  }
};
template <> struct VecLoad<double, 2> {
  template <typename A>
  __device__ __forceinline__ static void run(const double* p, A (&out)[2]) {
    const double2 v = __ldg(reinterpret_cast<const double2*>(p));
    out[0] = v.x; out[1] = v.y;
  }
};
template <> struct VecLoad<__nv_bfloat16, 8> {
  template <typename A>
  __device__ __forceinline__ static void run(const __nv_bfloat16* p, A (&out)[8]) { dev::ldg_bf16x8(p, out); }
};

template <typename T> struct WideVec { static constexpr int value = 16 / sizeof(T); };

template <typename A>
__device__ __forceinline__ int sign_of(A v) { return (v > A(0)) - (v < A(0)); }

template <typename A>
__device__ __forceinline__ bool better(A s, int k, A bs, int bk) {
  // s (index k) beats the running best (bs, bk): NaN never; an empty best always; ties -> lower index.
  if (s != s) return false;
  if (bk < 0) return true;
  return s > bs || (s == bs && k < bk);
}

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T, int RB, int V, int THREADS>
__global__ void __launch_bounds__(THREADS, 1) bank_kernel(const T* __restrict__ x, const T* __restrict__ bank, int m,
                                                       int kbank, int d, int sign_mode,
                                                       typename Acc<T>::type* __restrict__ best,
                                                       int64_t* __restrict__ index) {
  using A = typename Acc<T>::type;
  constexpr int kWarps = THREADS / 32;
  __shared__ A xnorm[RB];
  __shared__ int xnan[RB];
  __shared__ A wbest[kWarps][RB];
  __shared__ int widx[kWarps][RB];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r0 = blockIdx.x * RB;
  const int rows = min(RB, m - r0);
  const T* xb = x + static_cast<int64_t>(r0) * d;

  // Row norms and NaN flags of this CTA's rows.
  for (int r = warp; r < RB; r += kWarps) {
    A ss = 0;
    int nan = 0;
    if (r < rows) {
      for (int e = lane; e < d; e += 32) {
        const A v = static_cast<A>(dev::to_acc(xb[static_cast<int64_t>(r) * d + e]));
        ss += v * v;
        nan |= v != v;
      }
    }
    ss = dev::warp_sum(ss);
    nan = __any_sync(0xffffffffu, nan);
    if (lane == 0) {
      const A nr = sqrt(ss);
      xnorm[r] = nr > A(kCosineEps) ? nr : A(kCosineEps);
      xnan[r] = nan;
    }
  }
  __syncthreads();

  A bs[RB];
  int bi[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    bs[r] = dev::Num<A>::nan();
    bi[r] = -1;
  }

#pragma unroll 1
  for (int kb = warp; kb < kbank; kb += kWarps) {
    const T* bv = bank + static_cast<int64_t>(kb) * d;
    A dot[RB];
    int agree[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      dot[r] = 0;
      agree[r] = 0;
    }
    A bb = 0;
    int bnan = 0;
#pragma unroll 4
    for (int e = lane * V; e < d; e += 32 * V) {
      A b[V];
      VecLoad<T, V>::run(bv + e, b);
#pragma unroll
      for (int q = 0; q < V; ++q) {
        bb += b[q] * b[q];
        bnan |= b[q] != b[q];
      }
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        if (r < rows) {
          A xv[V];
          VecLoad<T, V>::run(xb + static_cast<int64_t>(r) * d + e, xv);
          if (sign_mode) {
#pragma unroll
            for (int q = 0; q < V; ++q) agree[r] += sign_of(xv[q]) == sign_of(b[q]);
          } else {
#pragma unroll
            for (int q = 0; q < V; ++q) dot[r] += xv[q] * b[q];
          }
        }
      }
    }
    bnan = __any_sync(0xffffffffu, bnan);
    A bnorm = 0;
    if (!sign_mode) {
      bb = dev::warp_sum(bb);
      const A nr = sqrt(bb);
      bnorm = nr > A(kCosineEps) ? nr : A(kCosineEps);
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      A sim;
      if (sign_mode) {
        const int a = dev::warp_sum(agree[r]);
        sim = (bnan || (r < rows && xnan[r])) ? dev::Num<A>::nan() : static_cast<A>(a) / static_cast<A>(d);
      } else {
        sim = dev::warp_sum(dot[r]) / (xnorm[r] * bnorm);
      }
      if (better(sim, kb, bs[r], bi[r])) {
        bs[r] = sim;
        bi[r] = kb;
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      wbest[warp][r] = bs[r];
      widx[warp][r] = bi[r];
    }
  }
  __syncthreads();
  for (int r = threadIdx.x; r < rows; r += THREADS) {
    A b = dev::Num<A>::nan();
    int at = -1;
    for (int w = 0; w < kWarps; ++w) {
      if (widx[w][r] >= 0 && better(wbest[w][r], widx[w][r], b, at)) {
        b = wbest[w][r];
        at = widx[w][r];
      }
    }
    best[r0 + r] = b;
    index[r0 + r] = at;
  }
}

template <typename T, int RB, int THREADS>
cudaError_t launch_rb(const T* x, const T* bank, int m, int kbank, int d, bool sign_mode, typename Acc<T>::type* best,
                      int64_t* index, cudaStream_t stream) {
  constexpr int V = WideVec<T>::value;
  const bool vec = d % V == 0 && dev::aligned16(x) && dev::aligned16(bank);
  const dim3 grid((m + RB - 1) / RB);
  if (vec) {
    bank_kernel<T, RB, V, THREADS><<<grid, THREADS, 0, stream>>>(x, bank, m, kbank, d, sign_mode ? 1 : 0, best, index);
  } else {
    bank_kernel<T, RB, 1, THREADS><<<grid, THREADS, 0, stream>>>(x, bank, m, kbank, d, sign_mode ? 1 : 0, best, index);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(const void* x, const void* bank, int64_t m, int64_t kbank, int64_t d, BankMode mode, void* best,
                   int64_t* index, cudaStream_t stream) {
  const T* xp = static_cast<const T*>(x);
  const T* bp = static_cast<const T*>(bank);
  auto* out = static_cast<typename Acc<T>::type*>(best);
  const bool sign_mode = mode == BankMode::kSign;
  const int mi = static_cast<int>(m), ki = static_cast<int>(kbank), di = static_cast<int>(d);
  if (m == 1) return launch_rb<T, 1, 1024>(xp, bp, mi, ki, di, sign_mode, out, index, stream);
  if (m <= 64) return launch_rb<T, 4, 256>(xp, bp, mi, ki, di, sign_mode, out, index, stream);
  return launch_rb<T, 16, 256>(xp, bp, mi, ki, di, sign_mode, out, index, stream);
}

}  // namespace

cudaError_t bank_similarity(DType dtype, const void* x, const void* bank, int64_t m, int64_t kbank, int64_t d,
                            BankMode mode, void* best, int64_t* index, cudaStream_t stream) {
  if (m < 1 || kbank < 1 || d < 1 || m > INT32_MAX || kbank > INT32_MAX || d > INT32_MAX)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return launch<float>(x, bank, m, kbank, d, mode, best, index, stream);
    case DType::kFloat64: return launch<double>(x, bank, m, kbank, d, mode, best, index, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(x, bank, m, kbank, d, mode, best, index, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace patronus
