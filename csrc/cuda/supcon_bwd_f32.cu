// supcon_loss backward tile kernels, float32 features.
#include "supcon_kernels.cuh"

namespace patronus {
namespace cuda {
namespace supcon {

cudaError_t launch_bwd_f32(const float* f, const BwdVectors& v, int64_t c, int n, int d, float inv_tau, int vec,
                           float* grad, float* gbuf, cudaStream_t stream) {
  return launch_bwd<float>(f, v, c, n, d, inv_tau, vec, grad, gbuf, stream);
}

}  // namespace supcon
}  // namespace cuda
}  // namespace patronus
