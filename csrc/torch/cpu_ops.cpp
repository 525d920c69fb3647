// Torch glue for the CPU kernels: checks, contiguity, ATen GEMM and threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../op_checks.h"
#include "patronus/cpu_kernels.h"

namespace patronus {
namespace glue {
namespace {

// Row-major GEMM through ATen (MKL/oneDNN where torch has them), on borrowed memory.
template <typename T>
void aten_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto* pa = const_cast<T*>(a);
  auto* pb = const_cast<T*>(b);
  at::Tensor ta_ = ta ? at::from_blob(pa, {k, m}, {lda, 1}, opts).t() : at::from_blob(pa, {m, k}, {lda, 1}, opts);
  at::Tensor tb_ = tb ? at::from_blob(pb, {n, k}, {ldb, 1}, opts).t() : at::from_blob(pb, {k, n}, {ldb, 1}, opts);
  at::Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  tc.addmm_(ta_, tb_, beta, alpha);  // beta == 0 ignores c's old contents (NaN too)
}

// ATen's pool already runs at most at::get_num_threads() bodies (= Runtime::num_threads).
void aten_parallel_for(int64_t begin, int64_t end, int64_t grain, int /*threads*/, void* ctx,
                       void (*body)(void*, int64_t, int64_t)) {
  at::parallel_for(begin, end, grain, [&](int64_t lo, int64_t hi) { body(ctx, lo, hi); });
}

cpu::Runtime aten_runtime() {
  return cpu::Runtime{&aten_gemm<float>, &aten_gemm<double>, &aten_parallel_for, at::get_num_threads()};
}

// Kernel preconditions surface as RuntimeError like the glue's own checks.
template <typename Fn>
void run_kernel(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, e.what());
  }
}

std::tuple<at::Tensor, at::Tensor> token_topk_cpu(const at::Tensor& queries, const at::Tensor& table, int64_t k,
                                                  const c10::optional<at::Tensor>& rows, bool negate,
                                                  c10::string_view precision) {
  const TopkShape s = check_token_topk(queries, table, k, rows, std::string(precision));
  TORCH_CHECK(queries.is_cpu(), "token_topk_cpu: queries must be on the CPU");
  const at::Tensor q = queries.contiguous(), tab = table.contiguous();
  const at::Tensor r = rows.has_value() ? rows->contiguous() : at::Tensor();
  at::Tensor values = at::empty({s.n, k}, queries.options().dtype(acc_type_of(queries)));
  at::Tensor indices = at::empty({s.n, k}, queries.options().dtype(at::kLong));
  run_kernel([&] {
    cpu::token_topk(aten_runtime(), dtype_of(q, "queries"), q.data_ptr(), tab.data_ptr(),
                    r.defined() ? r.data_ptr<int64_t>() : nullptr, s.n, s.t, s.d, s.v, s.w, k, negate,
                    values.data_ptr(), indices.data_ptr<int64_t>());
  });
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> supcon_loss_fwd_cpu(const at::Tensor& features, const at::Tensor& labels,
                                                       double temperature, bool scale_by_temperature) {
  check_supcon(features, labels, temperature);
  TORCH_CHECK(features.is_cpu(), "supcon_loss_fwd_cpu: features must be on the CPU");
  const at::Tensor f = features.contiguous(), y = labels.contiguous();
  const int64_t c = f.size(0), n = f.size(1), d = f.size(2);
  auto acc = features.options().dtype(acc_type_of(features));
  at::Tensor loss = at::empty({c}, acc), lse = at::empty({c, n}, acc);
  run_kernel([&] {
    cpu::supcon_forward(aten_runtime(), dtype_of(f, "features"), f.data_ptr(), y.data_ptr<int64_t>(), c, n, d,
                        temperature, scale_by_temperature, loss.data_ptr(), lse.data_ptr());
  });
  return {loss, lse};
}

at::Tensor supcon_loss_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& labels,
                               const at::Tensor& lse, double temperature, bool scale_by_temperature) {
  check_supcon_backward(grad_loss, features, labels, lse, temperature);
  TORCH_CHECK(features.is_cpu(), "supcon_loss_bwd_cpu: features must be on the CPU");
  const at::Tensor g = grad_loss.contiguous(), f = features.contiguous(), y = labels.contiguous(),
                   l = lse.contiguous();
  at::Tensor grad = at::empty_like(f);
  run_kernel([&] {
    cpu::supcon_backward(aten_runtime(), dtype_of(f, "features"), g.data_ptr(), f.data_ptr(),
                         y.data_ptr<int64_t>(), l.data_ptr(), f.size(0), f.size(1), f.size(2), temperature,
                         scale_by_temperature, grad.data_ptr());
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> bank_similarity_cpu(const at::Tensor& x, const at::Tensor& bank,
                                                       c10::string_view mode) {
  const std::string m(mode);
  check_bank(x, bank, m);
  TORCH_CHECK(x.is_cpu(), "bank_similarity_cpu: x must be on the CPU");
  const at::Tensor xc = x.contiguous(), bc = bank.contiguous();
  at::Tensor best = at::empty({x.size(0)}, x.options().dtype(acc_type_of(x)));
  at::Tensor index = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  run_kernel([&] {
    cpu::bank_similarity(aten_runtime(), dtype_of(xc, "x"), xc.data_ptr(), bc.data_ptr(), xc.size(0), bc.size(0),
                         xc.size(1), m == "sign" ? cpu::BankMode::kSign : cpu::BankMode::kCosine,
                         best.data_ptr(), index.data_ptr<int64_t>());
  });
  return {best, index};
}

}  // namespace
}  // namespace glue
}  // namespace patronus

TORCH_LIBRARY_IMPL(patronus, CPU, m) {
  m.impl("token_topk", &patronus::glue::token_topk_cpu);
  m.impl("supcon_loss_fwd", &patronus::glue::supcon_loss_fwd_cpu);
  m.impl("supcon_loss_bwd", &patronus::glue::supcon_loss_bwd_cpu);
  m.impl("bank_similarity", &patronus::glue::bank_similarity_cpu);
}
