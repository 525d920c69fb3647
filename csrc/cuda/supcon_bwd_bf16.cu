// supcon_loss backward tile kernels, bfloat16 features (fp32 accumulation, bf16 gradient).
#include "supcon_kernels.cuh"

namespace patronus {
namespace cuda {
namespace supcon {

cudaError_t launch_bwd_bf16(const __nv_bfloat16* f, const BwdVectors& v, int64_t c, int n, int d, float inv_tau,
                            int vec, __nv_bfloat16* grad, float* gbuf, cudaStream_t stream) {
  return launch_bwd<__nv_bfloat16>(f, v, c, n, d, inv_tau, vec, grad, gbuf, stream);
}

}  // namespace supcon
}  // namespace cuda
}  // namespace patronus
