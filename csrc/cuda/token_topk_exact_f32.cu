// token_topk, float32 inputs, precision "exact": fp32 FMA kernel.
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace topk {

cudaError_t launch_exact_f32(const Args<float, float>& p, int row_blocks, int splits, cudaStream_t stream) {
  return launch_simt<SimtF32>(p, row_blocks, splits, stream);
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
