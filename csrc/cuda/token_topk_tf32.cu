// token_topk, float32 inputs, precision "tf32": mma.sync m16n8k8 tf32 kernel.
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace topk {

cudaError_t launch_tf32(const Args<float, float>& p, int tile_m, int row_blocks, int splits,
                        cudaStream_t stream) {
  return launch_mma<kTF32, float>(p, tile_m, row_blocks, splits, stream);
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
