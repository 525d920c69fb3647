// token_topk, float32 inputs, precision "exact", few queries (n <= 64): fp32 FMA
// kernel with 32-row tiles, so little work is spent on rows that do not exist.
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace topk {

cudaError_t launch_exact_f32_small(const Args<float, float>& p, int row_blocks, int splits, cudaStream_t stream) {
  return launch_simt<SimtF32Small>(p, row_blocks, splits, stream);
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
