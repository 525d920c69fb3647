// Torch glue for the CUDA kernels: checks, device guard, current stream,
// outputs and scratch from the caching allocator, dispatch to the
// framework-free launchers of patronus/cuda_kernels.h.
//
// Only light CUDA headers of c10 are used (stream, guard), not
// ATen/cuda/CUDAContext.h, so the glue needs no cuBLAS/cuSPARSE headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../op_checks.h"
#include "patronus/cuda_kernels.h"

namespace patronus {
namespace glue {

std::vector<std::pair<std::string, std::vector<std::string>>> cuda_kernel_dtypes() {
  const std::vector<std::string> all{"float32", "float64", "bfloat16"};
  return {{"token_topk", all}, {"supcon_loss", all}, {"bank_similarity", all}};
}

int cuda_runtime_version() { return cuda::runtime_version(); }

namespace {

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, "_cuda: ", name, " must be a CUDA tensor, got ", t.device());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "patronus ", op, " CUDA kernel failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

at::Tensor scratch(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

cuda::TopkPrecision precision_of(const std::string& p) {
  if (p == "tf32") return cuda::TopkPrecision::kTF32;
  if (p == "bf16") return cuda::TopkPrecision::kBF16;
  return cuda::TopkPrecision::kExact;
}

// k above the fused kernels' bound: vocabulary tiles through ATen (matmul +
// topk), merged with a running top-k, in the accumulation dtype (fp32 math for
// every precision).  Extra memory: one [n, tile] score tile.
std::tuple<at::Tensor, at::Tensor> token_topk_large_k(const at::Tensor& q, const at::Tensor& table, int64_t k,
                                                      const at::Tensor& rows, bool negate, const TopkShape& s) {
  const auto acc = acc_type_of(q);
  const at::Tensor qa = q.to(acc);
  const int64_t tile = std::max<int64_t>(4096, k);
  at::Tensor best_v = at::empty({s.n, 0}, qa.options());
  at::Tensor best_i = at::empty({s.n, 0}, qa.options().dtype(at::kLong));
  at::Tensor best_nan = at::empty({s.n, 0}, qa.options().dtype(at::kBool));
  for (int64_t start = 0; start < s.w; start += tile) {
    const int64_t stop = std::min(s.w, start + tile);
    at::Tensor keys;
    if (rows.defined()) {
      const at::Tensor r = rows.slice(0, start, stop);
      const at::Tensor pad = r.lt(0).unsqueeze(-1);
      keys = table.index_select(0, r.clamp_min(0).reshape({-1})).reshape({stop - start, s.t, s.d});
      keys = keys.masked_fill(pad, 0).reshape({stop - start, s.t * s.d}).to(acc);
    } else {
      keys = table.slice(0, start, stop).to(acc);
    }
    at::Tensor scores = at::matmul(qa, keys.t());
    if (negate) scores.neg_();
    const at::Tensor nan = scores.isnan();
    const at::Tensor keyed = scores.masked_fill(nan, -std::numeric_limits<double>::infinity());
    const int64_t kk = std::min<int64_t>(k, stop - start);
    auto top = at::topk(keyed, kk, 1);
    const at::Tensor v = std::get<0>(top), local = std::get<1>(top);
    const at::Tensor cat_v = at::cat({best_v, v}, 1);
    const at::Tensor cat_i = at::cat({best_i, local + start}, 1);
    const at::Tensor cat_nan = at::cat({best_nan, nan.gather(1, local)}, 1);
    auto keep = at::topk(cat_v, std::min<int64_t>(k, cat_v.size(1)), 1);
    best_v = std::get<0>(keep);
    best_i = cat_i.gather(1, std::get<1>(keep));
    best_nan = cat_nan.gather(1, std::get<1>(keep));
  }
  best_i = best_i.masked_fill(best_nan, -1);
  best_v = best_v.masked_fill(best_nan, -std::numeric_limits<double>::infinity());
  return {best_v.contiguous(), best_i.contiguous()};
}

std::tuple<at::Tensor, at::Tensor> token_topk_cuda(const at::Tensor& queries, const at::Tensor& table, int64_t k,
                                                   const c10::optional<at::Tensor>& rows, bool negate,
                                                   c10::string_view precision) {
  const std::string prec(precision);
  check_cuda(queries, "token_topk", "queries");
  const c10::cuda::CUDAGuard guard(queries.device());
  const TopkShape s = check_token_topk(queries, table, k, rows, prec);  // reads the rows range (a device sync)
  const at::Tensor q = queries.contiguous(), tab = table.contiguous();
  const at::Tensor r = rows.has_value() ? rows->contiguous() : at::Tensor();
  if (k > cuda::kTopkMaxK) return token_topk_large_k(q, tab, k, r, negate, s);
  at::Tensor values = at::empty({s.n, k}, q.options().dtype(acc_type_of(q)));
  at::Tensor indices = at::empty({s.n, k}, q.options().dtype(at::kLong));
  const DType dt = dtype_of(q, "queries");
  const auto p = precision_of(prec);
  const size_t bytes = cuda::token_topk_workspace_size(dt, p, s.n, s.t, s.d, s.v, s.w, k);
  at::Tensor ws = scratch(q, bytes);
  check_launch(cuda::token_topk(dt, p, q.data_ptr(), tab.data_ptr(), r.defined() ? r.data_ptr<int64_t>() : nullptr,
                                s.n, s.t, s.d, s.v, s.w, k, negate, values.data_ptr(), indices.data_ptr<int64_t>(),
                                ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                c10::cuda::getCurrentCUDAStream(q.get_device()).stream()),
               "token_topk");
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> supcon_loss_fwd_cuda(const at::Tensor& features, const at::Tensor& labels,
                                                        double temperature, bool scale_by_temperature) {
  check_supcon(features, labels, temperature);
  check_cuda(features, "supcon_loss_fwd", "features");
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor f = features.contiguous(), y = labels.contiguous();
  const int64_t c = f.size(0), n = f.size(1), d = f.size(2);
  const auto acc = f.options().dtype(acc_type_of(f));
  at::Tensor loss = at::empty({c}, acc), lse = at::empty({c, n}, acc);
  const DType dt = dtype_of(f, "features");
  at::Tensor ws = scratch(f, cuda::supcon_forward_workspace_size(dt, c, n, d));
  check_launch(cuda::supcon_forward(dt, f.data_ptr(), y.data_ptr<int64_t>(), c, n, d, temperature,
                                    scale_by_temperature, loss.data_ptr(), lse.data_ptr(), ws.data_ptr(),
                                    static_cast<size_t>(ws.numel()),
                                    c10::cuda::getCurrentCUDAStream(f.get_device()).stream()),
               "supcon_loss_fwd");
  return {loss, lse};
}

at::Tensor supcon_loss_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& labels,
                                const at::Tensor& lse, double temperature, bool scale_by_temperature) {
  check_supcon_backward(grad_loss, features, labels, lse, temperature);
  check_cuda(features, "supcon_loss_bwd", "features");
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor g = grad_loss.contiguous(), f = features.contiguous(), y = labels.contiguous(),
                   l = lse.contiguous();
  const int64_t c = f.size(0), n = f.size(1), d = f.size(2);
  at::Tensor grad = at::empty_like(f);
  const DType dt = dtype_of(f, "features");
  at::Tensor ws = scratch(f, cuda::supcon_backward_workspace_size(dt, c, n, d));
  check_launch(cuda::supcon_backward(dt, g.data_ptr(), f.data_ptr(), y.data_ptr<int64_t>(), l.data_ptr(), c, n, d,
                                     temperature, scale_by_temperature, grad.data_ptr(), ws.data_ptr(),
                                     static_cast<size_t>(ws.numel()),
                                     c10::cuda::getCurrentCUDAStream(f.get_device()).stream()),
               "supcon_loss_bwd");
  return grad;
}

std::tuple<at::Tensor, at::Tensor> bank_similarity_cuda(const at::Tensor& x, const at::Tensor& bank,
                                                        c10::string_view mode) {
  const std::string m(mode);
  check_bank(x, bank, m);
  check_cuda(x, "bank_similarity", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), bc = bank.contiguous();
  at::Tensor best = at::empty({xc.size(0)}, xc.options().dtype(acc_type_of(xc)));
  at::Tensor index = at::empty({xc.size(0)}, xc.options().dtype(at::kLong));
  check_launch(cuda::bank_similarity(dtype_of(xc, "x"), xc.data_ptr(), bc.data_ptr(), xc.size(0), bc.size(0),
                                     xc.size(1), m == "sign" ? cuda::BankMode::kSign : cuda::BankMode::kCosine,
                                     best.data_ptr(), index.data_ptr<int64_t>(),
                                     c10::cuda::getCurrentCUDAStream(xc.get_device()).stream()),
               "bank_similarity");
  return {best, index};
}

}  // namespace
}  // namespace glue
}  // namespace patronus

TORCH_LIBRARY_IMPL(patronus, CUDA, m) {
  m.impl("token_topk", &patronus::glue::token_topk_cuda);
  m.impl("supcon_loss_fwd", &patronus::glue::supcon_loss_fwd_cuda);
  m.impl("supcon_loss_bwd", &patronus::glue::supcon_loss_bwd_cuda);
  m.impl("bank_similarity", &patronus::glue::bank_similarity_cuda);
}
