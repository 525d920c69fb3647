// Framework-free CUDA launchers of the three ops, on raw row-major device pointers.
//
// No torch headers: only the CUDA runtime API.  Every launcher enqueues its
// kernels on `stream`, never synchronises the host, and returns the first CUDA
// error (cudaErrorInvalidValue for arguments it cannot serve).  Inputs are
// assumed validated by the caller (shapes, k range, row ids in [-1, V)).
//
// Scratch memory is supplied by the caller: ask *_workspace_size() with the
// same arguments and the same current device, allocate that many bytes (the
// torch glue uses the caching allocator) and pass the pointer; a size of 0
// means no scratch is needed (a null pointer is then fine).
//
// Output dtypes follow the CPU kernels: values/loss/lse/best are float for
// float32 and bfloat16 inputs and double for float64 inputs; grad_features has
// the input dtype; indices are int64.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "patronus/common.h"

namespace patronus {
namespace cuda {

// Matrix-unit path of token_topk for float32 inputs.  bfloat16 inputs always
// take the bf16 tensor-core path (bf16 products are exact in fp32); float64
// inputs always take the exact fp64 path.
enum class TopkPrecision : int {
  kExact = 0,  // fp32 FMA, fp32 accumulate (no tensor cores)
  kTF32 = 1,   // mma.sync m16n8k8 tf32 (operands rounded to tf32), fp32 accumulate
  kBF16 = 2,   // mma.sync m16n8k16 bf16 (float32 operands rounded to bf16 while loading), fp32 accumulate
};

enum class BankMode : int { kCosine = 0, kSign = 1 };

// Largest k the fused token_topk kernels serve (the glue falls back above it).
constexpr int64_t kTopkMaxK = 256;

// ---------------------------------------------------------------- token_topk
// queries [n, t*d], table [v, d], rows [w, t] int64 (-1 = padding) or null
// (then t == 1 and w == v).  values [n, k] (float, double for float64),
// indices [n, k] int64; descending; a NaN / missing slot is (-inf, -1).
size_t token_topk_workspace_size(DType dtype, TopkPrecision precision, int64_t n, int64_t t, int64_t d,
                                 int64_t v, int64_t w, int64_t k);

cudaError_t token_topk(DType dtype, TopkPrecision precision, const void* queries, const void* table,
                       const int64_t* rows, int64_t n, int64_t t, int64_t d, int64_t v, int64_t w, int64_t k,
                       bool negate, void* values, int64_t* indices, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream);

// --------------------------------------------------------------- supcon_loss
// features [c, n, d], labels [c, n] int64 -> loss [c], lse [c, n] (float, double for float64).
size_t supcon_forward_workspace_size(DType dtype, int64_t c, int64_t n, int64_t d);

cudaError_t supcon_forward(DType dtype, const void* features, const int64_t* labels, int64_t c, int64_t n,
                           int64_t d, double temperature, bool scale_by_temperature, void* loss, void* lse,
                           void* workspace, size_t workspace_bytes, cudaStream_t stream);

// grad_loss [c] and lse [c, n] (float, double for float64) -> grad_features [c, n, d] (input dtype).
size_t supcon_backward_workspace_size(DType dtype, int64_t c, int64_t n, int64_t d);

cudaError_t supcon_backward(DType dtype, const void* grad_loss, const void* features, const int64_t* labels,
                            const void* lse, int64_t c, int64_t n, int64_t d, double temperature,
                            bool scale_by_temperature, void* grad_features, void* workspace,
                            size_t workspace_bytes, cudaStream_t stream);

// ----------------------------------------------------------- bank_similarity
// x [m, d], bank [kbank, d] -> best [m] (float, double for float64), index [m] int64.
// One launch, no scratch, no host synchronisation: safe to capture in a CUDA graph.
cudaError_t bank_similarity(DType dtype, const void* x, const void* bank, int64_t m, int64_t kbank, int64_t d,
                            BankMode mode, void* best, int64_t* index, cudaStream_t stream);

// CUDA runtime version the kernels were built against (e.g. 13000).
int runtime_version();

}  // namespace cuda
}  // namespace patronus
