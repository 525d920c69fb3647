// Device helpers shared by the patronus CUDA kernels: PTX wrappers (cp.async,
// ldmatrix, mma.sync), numeric limits, conversions and warp reductions.
// CUDA headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace patronus {
namespace cuda {
namespace dev {

// ------------------------------------------------------------------ numbers
template <typename A> struct Num;
template <> struct Num<float> {
  __device__ __forceinline__ static float neg_inf() { return __int_as_float(0xff800000); }
  __device__ __forceinline__ static float pos_inf() { return __int_as_float(0x7f800000); }
  __device__ __forceinline__ static float nan() { return __int_as_float(0x7fffffff); }
  // The smallest value strictly above x (x itself for +inf and NaN).
  __device__ __forceinline__ static float next_up(float x) { return nextafterf(x, pos_inf()); }
  __device__ __forceinline__ static float exp(float x) { return __expf(x); }
  __device__ __forceinline__ static float log(float x) { return logf(x); }
};
template <> struct Num<double> {
  __device__ __forceinline__ static double neg_inf() { return __longlong_as_double(0xfff0000000000000ll); }
  __device__ __forceinline__ static double pos_inf() { return __longlong_as_double(0x7ff0000000000000ll); }
  __device__ __forceinline__ static double nan() { return __longlong_as_double(0x7fffffffffffffffll); }
  __device__ __forceinline__ static double next_up(double x) { return nextafter(x, pos_inf()); }
  __device__ __forceinline__ static double exp(double x) { return ::exp(x); }
  __device__ __forceinline__ static double log(double x) { return ::log(x); }
};

// Loads as the accumulation type.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

// Eight bf16 from one 16-byte read-only load (p 16-byte aligned), widened to
// float exactly: a bf16 is the high half of a float.
__device__ __forceinline__ void ldg_bf16x8(const __nv_bfloat16* p, float (&out)[8]) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    out[2 * e] = __uint_as_float(w[e] << 16);
    out[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
  }
}

// ------------------------------------------------------------------ warps
template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over groups of `width` consecutive lanes (width a power of two <= 32).
template <int W, typename V>
__device__ __forceinline__ V group_sum(V v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float vmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double vmax(double a, double b) { return fmax(a, b); }

// Max over groups of W lanes; NaN is skipped unless every value is NaN (as fmax).
template <int W, typename V>
__device__ __forceinline__ V group_max(V v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v = vmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ------------------------------------------------------------- PTX wrappers
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
#else
  // Not reached: the launchers never select cp.async below sm_80.
  (void)dst;
  (void)src;
  (void)src_bytes;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
#else
  r[0] = r[1] = r[2] = r[3] = 0;
  (void)p;
#endif
}

// fp32 -> tf32, round to nearest (ties away), kept in a 32-bit register.
__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
#else
  return x;
#endif
}

// The two mma.sync shapes take the same operands (four A and two B registers,
// four fp32 accumulators, updated in place); only the instruction differs.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define PATRONUS_MMA_M16N8_F32(INSTR, d, a, b)                                                        \
  asm volatile(INSTR " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"             \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                       \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
#else
// Not reached: the launchers never select mma.sync below sm_80.
#define PATRONUS_MMA_M16N8_F32(INSTR, d, a, b) ((void)(d), (void)(a), (void)(b))
#endif

// D = A * B + D, m16n8k8, tf32 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_tf32(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  PATRONUS_MMA_M16N8_F32("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", d, a, b);
}

// D = A * B + D, m16n8k16, bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  PATRONUS_MMA_M16N8_F32("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", d, a, b);
}

#undef PATRONUS_MMA_M16N8_F32

// Two floats -> packed bf16x2 (low half = first), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__host__ __device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace dev
}  // namespace cuda
}  // namespace patronus
