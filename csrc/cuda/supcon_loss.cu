// supcon_loss launchers: a fixed number of launches over all C problems.
//   forward:  row norms -> tile kernel (online LSE per row) -> per-problem mean.
//   backward: row norms -> positive counts -> coefficients -> tile kernel
//             (dZ, and the gradient through the normalisation when one column
//             pass covers d) [-> finalize when it does not].
// Scratch: O(C N) per-row vectors, plus a [C, N, d] buffer only for float64 or
// d > 768.  Never O(N^2).
#include <cstdint>

#include "patronus/cuda_kernels.h"
#include "supcon_kernels.cuh"

namespace patronus {
namespace cuda {
namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Bump allocation inside the caller's workspace (or size counting when base is null).
struct Carver {
  unsigned char* base;
  size_t used = 0;
  template <typename V>
  V* take(size_t count) {
    V* p = base ? reinterpret_cast<V*>(base + used) : nullptr;
    used += align_up(count * sizeof(V));
    return p;
  }
};

int blocks_for_warps(int64_t warps) { return static_cast<int>((warps * 32 + supcon::kThreads - 1) / supcon::kThreads); }

bool needs_gbuf(DType dtype, int64_t d) {
  return dtype == DType::kFloat64 || supcon::column_chunks(static_cast<int>(d)) > 1;
}

template <typename A>
struct FwdScratch {
  A* inv;
  A* row_loss;
  int* counts;
};

template <typename A>
FwdScratch<A> carve_fwd(Carver& cv, int64_t rows) {
  FwdScratch<A> s;
  s.inv = cv.take<A>(rows);
  s.row_loss = cv.take<A>(rows);
  s.counts = cv.take<int>(rows);
  return s;
}

template <typename A>
struct BwdScratch {
  A* norm;
  A* inv;
  A* coef;
  A* ipos;
  int* counts;
  A* gbuf;
};

template <typename A>
BwdScratch<A> carve_bwd(Carver& cv, int64_t rows, int64_t d, bool gbuf) {
  BwdScratch<A> s;
  s.norm = cv.take<A>(rows);
  s.inv = cv.take<A>(rows);
  s.coef = cv.take<A>(rows);
  s.ipos = cv.take<A>(rows);
  s.counts = cv.take<int>(rows);
  s.gbuf = gbuf ? cv.take<A>(rows * d) : nullptr;
  return s;
}

bool vec_ok(DType dtype, const void* f, int64_t d) {
  if (!dev::aligned16(f)) return false;
  return dtype == DType::kBFloat16 ? d % 8 == 0 : d % 4 == 0;
}

template <typename T>
cudaError_t forward_fast(const T* f, const int64_t* labels, int64_t c, int64_t n, int64_t d, double temperature,
                         bool scale, float* loss, float* lse, unsigned char* ws, int vec, cudaStream_t stream) {
  Carver cv{ws};
  const int64_t rows = c * n;
  FwdScratch<float> s = carve_fwd<float>(cv, rows);
  supcon::norms_kernel<T, float><<<blocks_for_warps(rows), supcon::kThreads, 0, stream>>>(f, rows, static_cast<int>(d),
                                                                                           nullptr, s.inv);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int ni = static_cast<int>(n), di = static_cast<int>(d);
  supcon::fwd_kernel<T><<<dim3((ni + supcon::kTile - 1) / supcon::kTile, static_cast<unsigned>(c)), supcon::kThreads, 0,
                          stream>>>(f, labels, s.inv, ni, di, static_cast<float>(1.0 / temperature), vec, lse,
                                    s.row_loss, s.counts);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  supcon::loss_kernel<float><<<static_cast<unsigned>(c), supcon::kThreads, 0, stream>>>(
      s.row_loss, s.counts, ni, static_cast<float>(scale ? temperature : 1.0), loss);
  return cudaGetLastError();
}

cudaError_t forward_f64(const double* f, const int64_t* labels, int64_t c, int64_t n, int64_t d, double temperature,
                        bool scale, double* loss, double* lse, unsigned char* ws, cudaStream_t stream) {
  Carver cv{ws};
  const int64_t rows = c * n;
  FwdScratch<double> s = carve_fwd<double>(cv, rows);
  supcon::norms_kernel<double, double><<<blocks_for_warps(rows), supcon::kThreads, 0, stream>>>(
      f, rows, static_cast<int>(d), nullptr, s.inv);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int ni = static_cast<int>(n), di = static_cast<int>(d);
  supcon::fwd_simple_kernel<double, double><<<dim3(ni, static_cast<unsigned>(c)), supcon::kThreads, 0, stream>>>(
      f, labels, s.inv, ni, di, 1.0 / temperature, lse, s.row_loss, s.counts);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  supcon::loss_kernel<double><<<static_cast<unsigned>(c), supcon::kThreads, 0, stream>>>(
      s.row_loss, s.counts, ni, scale ? temperature : 1.0, loss);
  return cudaGetLastError();
}

// Norms, positive counts and per-row coefficients of the backward.
template <typename T, typename A>
cudaError_t backward_prep(const T* f, const int64_t* labels, const A* grad_loss, int64_t c, int64_t n, int64_t d,
                          double temperature, bool scale, const BwdScratch<A>& s, cudaStream_t stream) {
  const int64_t rows = c * n;
  const int ni = static_cast<int>(n);
  supcon::norms_kernel<T, A><<<blocks_for_warps(rows), supcon::kThreads, 0, stream>>>(f, rows, static_cast<int>(d),
                                                                                       s.norm, s.inv);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  supcon::counts_kernel<int64_t><<<dim3((ni + supcon::kThreads - 1) / supcon::kThreads, static_cast<unsigned>(c)),
                          supcon::kThreads, 0, stream>>>(labels, ni, s.counts);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  supcon::coef_kernel<A><<<static_cast<unsigned>(c), supcon::kThreads, 0, stream>>>(
      s.counts, grad_loss, ni, static_cast<A>(scale ? temperature : 1.0), s.coef, s.ipos);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_fast(const float* grad_loss, const T* f, const int64_t* labels, const float* lse, int64_t c,
                          int64_t n, int64_t d, double temperature, bool scale, T* grad, unsigned char* ws, int vec,
                          DType dtype, cudaStream_t stream) {
  Carver cv{ws};
  const int64_t rows = c * n;
  BwdScratch<float> s = carve_bwd<float>(cv, rows, d, needs_gbuf(dtype, d));
  cudaError_t err = backward_prep<T, float>(f, labels, grad_loss, c, n, d, temperature, scale, s, stream);
  if (err != cudaSuccess) return err;
  supcon::BwdVectors v{labels, lse, s.inv, s.norm, s.coef, s.ipos};
  const int ni = static_cast<int>(n), di = static_cast<int>(d);
  const float inv_tau = static_cast<float>(1.0 / temperature);
  if (dtype == DType::kBFloat16) {
    err = supcon::launch_bwd_bf16(reinterpret_cast<const __nv_bfloat16*>(f), v, c, ni, di, inv_tau, vec,
                                  reinterpret_cast<__nv_bfloat16*>(grad), s.gbuf, stream);
  } else {
    err = supcon::launch_bwd_f32(reinterpret_cast<const float*>(f), v, c, ni, di, inv_tau, vec,
                                 reinterpret_cast<float*>(grad), s.gbuf, stream);
  }
  if (err != cudaSuccess || s.gbuf == nullptr) return err;
  supcon::finalize_kernel<T, float><<<blocks_for_warps(rows), supcon::kThreads, 0, stream>>>(f, s.gbuf, s.norm, s.inv,
                                                                                              rows, di, grad);
  return cudaGetLastError();
}

cudaError_t backward_f64(const double* grad_loss, const double* f, const int64_t* labels, const double* lse, int64_t c,
                         int64_t n, int64_t d, double temperature, bool scale, double* grad, unsigned char* ws,
                         cudaStream_t stream) {
  Carver cv{ws};
  const int64_t rows = c * n;
  BwdScratch<double> s = carve_bwd<double>(cv, rows, d, true);
  cudaError_t err = backward_prep<double, double>(f, labels, grad_loss, c, n, d, temperature, scale, s, stream);
  if (err != cudaSuccess) return err;
  const int ni = static_cast<int>(n), di = static_cast<int>(d);
  supcon::bwd_simple_kernel<double, double><<<dim3(ni, static_cast<unsigned>(c)), supcon::kThreads, 0, stream>>>(
      f, labels, lse, s.inv, s.coef, s.ipos, ni, di, 1.0 / temperature, s.gbuf);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  supcon::finalize_kernel<double, double><<<blocks_for_warps(rows), supcon::kThreads, 0, stream>>>(
      f, s.gbuf, s.norm, s.inv, rows, di, grad);
  return cudaGetLastError();
}

bool shape_ok(int64_t c, int64_t n, int64_t d, double temperature) {
  return c >= 1 && n >= 1 && d >= 1 && c <= 65535 && n <= INT32_MAX && d <= INT32_MAX && temperature > 0 &&
         temperature < 1e300;
}

}  // namespace

size_t supcon_forward_workspace_size(DType dtype, int64_t c, int64_t n, int64_t d) {
  (void)d;
  Carver cv{nullptr};
  if (dtype == DType::kFloat64) carve_fwd<double>(cv, c * n);
  else carve_fwd<float>(cv, c * n);
  return cv.used;
}

cudaError_t supcon_forward(DType dtype, const void* features, const int64_t* labels, int64_t c, int64_t n, int64_t d,
                           double temperature, bool scale_by_temperature, void* loss, void* lse, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  if (!shape_ok(c, n, d, temperature)) return cudaErrorInvalidValue;
  if (workspace == nullptr || workspace_bytes < supcon_forward_workspace_size(dtype, c, n, d))
    return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const int vec = vec_ok(dtype, features, d) ? 1 : 0;
  switch (dtype) {
    case DType::kFloat32:
      return forward_fast<float>(static_cast<const float*>(features), labels, c, n, d, temperature,
                                 scale_by_temperature, static_cast<float*>(loss), static_cast<float*>(lse), ws, vec,
                                 stream);
    case DType::kBFloat16:
      return forward_fast<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(features), labels, c, n, d, temperature,
                                         scale_by_temperature, static_cast<float*>(loss), static_cast<float*>(lse), ws,
                                         vec, stream);
    case DType::kFloat64:
      return forward_f64(static_cast<const double*>(features), labels, c, n, d, temperature, scale_by_temperature,
                         static_cast<double*>(loss), static_cast<double*>(lse), ws, stream);
  }
  return cudaErrorInvalidValue;
}

size_t supcon_backward_workspace_size(DType dtype, int64_t c, int64_t n, int64_t d) {
  Carver cv{nullptr};
  if (dtype == DType::kFloat64) carve_bwd<double>(cv, c * n, d, true);
  else carve_bwd<float>(cv, c * n, d, needs_gbuf(dtype, d));
  return cv.used;
}

cudaError_t supcon_backward(DType dtype, const void* grad_loss, const void* features, const int64_t* labels,
                            const void* lse, int64_t c, int64_t n, int64_t d, double temperature,
                            bool scale_by_temperature, void* grad_features, void* workspace, size_t workspace_bytes,
                            cudaStream_t stream) {
  if (!shape_ok(c, n, d, temperature)) return cudaErrorInvalidValue;
  if (workspace == nullptr || workspace_bytes < supcon_backward_workspace_size(dtype, c, n, d))
    return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const int vec = vec_ok(dtype, features, d) ? 1 : 0;
  switch (dtype) {
    case DType::kFloat32:
      return backward_fast<float>(static_cast<const float*>(grad_loss), static_cast<const float*>(features), labels,
                                  static_cast<const float*>(lse), c, n, d, temperature, scale_by_temperature,
                                  static_cast<float*>(grad_features), ws, vec, dtype, stream);
    case DType::kBFloat16:
      return backward_fast<__nv_bfloat16>(static_cast<const float*>(grad_loss),
                                          static_cast<const __nv_bfloat16*>(features), labels,
                                          static_cast<const float*>(lse), c, n, d, temperature, scale_by_temperature,
                                          static_cast<__nv_bfloat16*>(grad_features), ws, vec, dtype, stream);
    case DType::kFloat64:
      return backward_f64(static_cast<const double*>(grad_loss), static_cast<const double*>(features), labels,
                          static_cast<const double*>(lse), c, n, d, temperature, scale_by_temperature,
                          static_cast<double*>(grad_features), ws, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace patronus
