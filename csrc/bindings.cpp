// The one compiled module: op schemas (torch.ops.patronus.*) and build info (pybind11).
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "patronus/common.h"

#ifdef PATRONUS_HAVE_BUILD_CONFIG
#include "build_config.h"
#endif

#ifndef PATRONUS_VERSION
#define PATRONUS_VERSION "0.0.0"
#endif
#ifndef PATRONUS_CUDA_ARCH_LIST
#define PATRONUS_CUDA_ARCH_LIST ""
#endif
#ifndef PATRONUS_CXX_FLAGS
#define PATRONUS_CXX_FLAGS ""
#endif

#ifdef PATRONUS_WITH_CUDA
namespace patronus {
namespace glue {
// Defined by the CUDA glue: op name -> dtype names with a CUDA kernel; the CUDA runtime version.
std::vector<std::pair<std::string, std::vector<std::string>>> cuda_kernel_dtypes();
int cuda_runtime_version();
}  // namespace glue
}  // namespace patronus
#endif

TORCH_LIBRARY(patronus, m) {
  // Fused score + top-k; rows = [W, T] sub-token ids (-1 padding) for word-level candidates.
  m.def("token_topk(Tensor queries, Tensor table, int k, Tensor? rows=None, bool negate=True, "
        "str precision=\"exact\") -> (Tensor values, Tensor indices)");
  // SupCon over C problems; lse = per-row log-sum-exp kept for the backward.
  m.def("supcon_loss_fwd(Tensor features, Tensor labels, float temperature, bool scale_by_temperature=True) "
        "-> (Tensor loss, Tensor lse)");
  m.def("supcon_loss_bwd(Tensor grad_loss, Tensor features, Tensor labels, Tensor lse, float temperature, "
        "bool scale_by_temperature=True) -> Tensor");
  // Best cosine / sign agreement of each input against a bank of vectors.
  m.def("bank_similarity(Tensor x, Tensor bank, str mode=\"cosine\") -> (Tensor best, Tensor index)");
}

namespace {

pybind11::dict build_info() {
  namespace py = pybind11;
  py::dict info;
  info["abi"] = patronus::kAbiVersion;
  info["version"] = PATRONUS_VERSION;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
  info["cxx_flags"] = PATRONUS_CXX_FLAGS;
  const std::vector<std::string> cpu_dtypes{"float32", "float64", "bfloat16"};
  py::dict cpu;
  for (const char* op : {"token_topk", "supcon_loss", "bank_similarity"}) cpu[op] = cpu_dtypes;
  py::dict kernels;
  kernels["cpu"] = cpu;
#ifdef PATRONUS_WITH_CUDA
  py::dict cuda;
  for (const auto& entry : patronus::glue::cuda_kernel_dtypes()) cuda[entry.first.c_str()] = entry.second;
  kernels["cuda"] = cuda;
  info["cuda"] = true;
  info["cuda_runtime_version"] = patronus::glue::cuda_runtime_version();
  info["cuda_arch_list"] = PATRONUS_CUDA_ARCH_LIST;
#else
  info["cuda"] = false;
#endif
  info["kernels"] = kernels;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "patronus_ext compiled kernels (ops are registered as torch.ops.patronus.*)";
  m.def("build_info", &build_info, "ABI, versions, build flags and the kernels compiled into this module");
}
