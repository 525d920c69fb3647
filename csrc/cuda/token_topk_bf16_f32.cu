// token_topk, float32 inputs, precision "bf16": operands rounded to bf16 while
// loading tiles (register-staged), mma.sync m16n8k16 bf16 kernel.
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace topk {

cudaError_t launch_bf16_from_f32(const Args<float, float>& p, int tile_m, int row_blocks, int splits,
                                 cudaStream_t stream) {
  return launch_mma<kBF16, float>(p, tile_m, row_blocks, splits, stream);
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
