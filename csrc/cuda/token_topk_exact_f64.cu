// token_topk, float64 inputs (any precision): fp64 FMA kernel.
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace topk {

cudaError_t launch_exact_f64(const Args<double, double>& p, int row_blocks, int splits, cudaStream_t stream) {
  return launch_simt<SimtF64>(p, row_blocks, splits, stream);
}

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
