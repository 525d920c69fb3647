// Input checks shared by the CPU and CUDA torch glue: a direct torch.ops caller
// gets a RuntimeError naming the argument, never a crash.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "patronus/common.h"

namespace patronus {
namespace glue {

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float64 or bfloat16, got ", t.scalar_type());
  }
}

// float64 stays float64; everything else accumulates and returns in float32.
inline at::ScalarType acc_type_of(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.numel() > 0, name, " must not be empty, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on one device, got ", a.device(),
              " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
}

struct TopkShape {
  int64_t n, t, d, v, w;
};

inline TopkShape check_token_topk(const at::Tensor& queries, const at::Tensor& table, int64_t k,
                                  const c10::optional<at::Tensor>& rows, const std::string& precision) {
  check_tensor(queries, "queries", 2);
  check_tensor(table, "table", 2);
  dtype_of(queries, "queries");
  check_same_dtype(queries, "queries", table, "table");
  check_same_device(queries, "queries", table, "table");
  TORCH_CHECK(precision == "exact" || precision == "tf32" || precision == "bf16",
              "precision must be 'exact', 'tf32' or 'bf16', got '", precision, "'");
  TopkShape s{queries.size(0), 1, table.size(1), table.size(0), table.size(0)};
  if (rows.has_value()) {
    const at::Tensor& r = *rows;
    check_tensor(r, "rows", 2);
    TORCH_CHECK(r.scalar_type() == at::kLong, "rows must be int64, got ", r.scalar_type());
    check_same_device(queries, "queries", r, "rows");
    s.w = r.size(0);
    s.t = r.size(1);
    auto range = at::aminmax(r);
    const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < s.v, "rows entries must lie in [-1, ", s.v - 1, "] (-1 = padding), got [",
                lo, ", ", hi, "]");
  }
  TORCH_CHECK(queries.size(1) == s.t * s.d, "queries must have T*d = ", s.t * s.d, " columns, got ",
              queries.size(1));
  TORCH_CHECK(k >= 1 && k <= s.w, "k must lie in [1, ", s.w, "] (the number of candidates), got ", k);
  return s;
}

inline void check_supcon(const at::Tensor& features, const at::Tensor& labels, double temperature) {
  check_tensor(features, "features", 3);
  dtype_of(features, "features");
  check_tensor(labels, "labels", 2);
  TORCH_CHECK(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  check_same_device(features, "features", labels, "labels");
  TORCH_CHECK(labels.size(0) == features.size(0) && labels.size(1) == features.size(1),
              "labels must be [C, N] = [", features.size(0), ", ", features.size(1), "], got ", labels.sizes());
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "temperature must be a finite number > 0, got ",
              temperature);
}

inline void check_supcon_backward(const at::Tensor& grad_loss, const at::Tensor& features,
                                  const at::Tensor& labels, const at::Tensor& lse, double temperature) {
  check_supcon(features, labels, temperature);
  const auto acc = acc_type_of(features);
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == features.size(0) && grad_loss.scalar_type() == acc,
              "grad_loss must be [C] of ", acc, ", got ", grad_loss.sizes(), " ", grad_loss.scalar_type());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == features.size(0) && lse.size(1) == features.size(1) &&
                  lse.scalar_type() == acc,
              "lse must be [C, N] of ", acc, " (from supcon_loss_fwd), got ", lse.sizes(), " ", lse.scalar_type());
  check_same_device(features, "features", grad_loss, "grad_loss");
  check_same_device(features, "features", lse, "lse");
}

inline void check_bank(const at::Tensor& x, const at::Tensor& bank, const std::string& mode) {
  check_tensor(x, "x", 2);
  check_tensor(bank, "bank", 2);
  dtype_of(x, "x");
  check_same_dtype(x, "x", bank, "bank");
  check_same_device(x, "x", bank, "bank");
  TORCH_CHECK(x.size(1) == bank.size(1), "x and bank must have the same width d, got ", x.size(1), " and ",
              bank.size(1));
  TORCH_CHECK(mode == "cosine" || mode == "sign", "mode must be 'cosine' or 'sign', got '", mode, "'");
}

}  // namespace glue
}  // namespace patronus
