// token_topk, bfloat16 inputs (any precision): mma.sync m16n8k16 bf16 kernel, cp.async loads.
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace topk {

cudaError_t launch_bf16(const Args<__nv_bfloat16, float>& p, int tile_m, int row_blocks, int splits,
                        cudaStream_t stream) {
  return launch_mma<kBF16, __nv_bfloat16>(p, tile_m, row_blocks, splits, stream);
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
