// SupCon loss (SPEC.md §1) on the CPU, forward and backward, batched over C problems.
//
// Work items are (problem, block of rows).  Each item computes its block of the
// similarity matrix with one GEMM and fuses everything elementwise into one or
// two passes over that tile: the forward keeps only the per-row log-sum-exp,
// the backward recomputes the tile and forms dZ = (G + G^T) Z / tau directly
// from it (the matrix is symmetric, so row i's tile also gives G's column i).
// No [N, N] buffer beyond one tile per thread, so C=1, N=65536 fits in memory.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "patronus/cpu_kernels.h"

namespace patronus {
namespace cpu {
namespace {

constexpr int64_t kTileBytes = 4 << 20;  // similarity tile per work item
constexpr double kNormEps = 1e-12;       // as torch.nn.functional.normalize

int64_t rows_per_block(int64_t n, size_t elem) {
  const int64_t fit = kTileBytes / (n * static_cast<int64_t>(elem));
  return std::max<int64_t>(1, std::min(n, std::max<int64_t>(8, fit)));
}

// z = f / max(|f|, eps) for every row; returns |f| per row.
template <typename T, typename A>
void normalize_rows(const Runtime& rt, const T* f, int64_t rows, int64_t d, A* z, A* norms) {
  parallel_for(rt, 0, rows, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const T* src = f + r * d;
      A* dst = z + r * d;
      A ss = 0;
      for (int64_t e = 0; e < d; ++e) {
        dst[e] = load_as<A>(src[e]);
        ss += dst[e] * dst[e];
      }
      const A norm = std::sqrt(ss);
      norms[r] = norm;
      const A inv = A(1) / std::max(norm, A(kNormEps));
      for (int64_t e = 0; e < d; ++e) dst[e] *= inv;
    }
  });
}

// Number of other rows sharing each row's label (the positives), per problem.
void positive_counts(const Runtime& rt, const int64_t* labels, int64_t c, int64_t n, int64_t* counts) {
  parallel_for(rt, 0, c, 1, [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> sorted(static_cast<size_t>(n));
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t* y = labels + p * n;
      std::copy(y, y + n, sorted.begin());
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < n; ++i) {
        auto range = std::equal_range(sorted.begin(), sorted.end(), y[i]);
        counts[p * n + i] = static_cast<int64_t>(range.second - range.first) - 1;
      }
    }
  });
}

template <typename T, typename A = acc_t<T>>
void forward_typed(const Runtime& rt, const T* f, const int64_t* labels, int64_t c, int64_t n,
                   int64_t d, double temperature, bool scale, A* loss, A* lse) {
  std::vector<A> z(static_cast<size_t>(c * n * d)), norms(static_cast<size_t>(c * n));
  normalize_rows<T, A>(rt, f, c * n, d, z.data(), norms.data());
  std::vector<A> row_loss(static_cast<size_t>(c * n));
  std::vector<unsigned char> has_pos(static_cast<size_t>(c * n));
  const int64_t block = rows_per_block(n, sizeof(A));
  const int64_t blocks = (n + block - 1) / block;
  const A inv_tau = static_cast<A>(1.0 / temperature);
  const A neg_inf = -std::numeric_limits<A>::infinity();

  parallel_for(rt, 0, c * blocks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> tile(static_cast<size_t>(block * n));
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t p = item / blocks, i0 = (item % blocks) * block;
      const int64_t bi = std::min(block, n - i0);
      const A* zp = z.data() + p * n * d;
      const int64_t* y = labels + p * n;
      gemm_of<A>(rt)(false, true, bi, n, d, inv_tau, zp + i0 * d, d, zp, d, A(0), tile.data(), n);
      for (int64_t r = 0; r < bi; ++r) {
        const int64_t i = i0 + r;
        A* row = tile.data() + r * n;
        row[i] = neg_inf;  // the diagonal is excluded from both sums
        A m = neg_inf;
        for (int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
        A sum = 0, pos_sum = 0, pos_n = 0;
        const int64_t yi = y[i];
        for (int64_t j = 0; j < n; ++j) {
          sum += fast_exp(row[j] - m);
          const bool pos = (y[j] == yi) & (j != i);
          pos_sum += pos ? row[j] : A(0);
          pos_n += pos ? A(1) : A(0);
        }
        // A NaN anywhere in the row must reach the loss: max() skips NaN, the sum does not.
        const A row_lse = m == neg_inf ? neg_inf : m + std::log(sum);
        lse[p * n + i] = row_lse;
        has_pos[p * n + i] = pos_n > 0;
        row_loss[p * n + i] = pos_n > 0 ? row_lse - pos_sum / pos_n : A(0);
      }
    }
  });

  const A factor = scale ? static_cast<A>(temperature) : A(1);
  for (int64_t p = 0; p < c; ++p) {
    A total = 0;
    int64_t used = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (has_pos[p * n + i]) {
        total += row_loss[p * n + i];
        ++used;
      }
    }
    loss[p] = used > 0 ? factor * total / static_cast<A>(used) : A(0);
  }
}

template <typename T, typename A = acc_t<T>>
void backward_typed(const Runtime& rt, const A* grad_loss, const T* f, const int64_t* labels,
                    const A* lse, int64_t c, int64_t n, int64_t d, double temperature, bool scale,
                    T* grad_f) {
  std::vector<A> z(static_cast<size_t>(c * n * d)), norms(static_cast<size_t>(c * n));
  normalize_rows<T, A>(rt, f, c * n, d, z.data(), norms.data());
  std::vector<int64_t> counts(static_cast<size_t>(c * n));
  positive_counts(rt, labels, c, n, counts.data());

  // dL/dLambda_ij = coef_i * (p_ij - [y_i = y_j] * inv_pos_i), coef_i = 0 for rows without positives.
  std::vector<A> coef(static_cast<size_t>(c * n)), inv_pos(static_cast<size_t>(c * n));
  const A factor = scale ? static_cast<A>(temperature) : A(1);
  for (int64_t p = 0; p < c; ++p) {
    int64_t used = 0;
    for (int64_t i = 0; i < n; ++i) used += counts[p * n + i] > 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool on = counts[p * n + i] > 0;
      coef[p * n + i] = on ? grad_loss[p] * factor / static_cast<A>(used) : A(0);
      inv_pos[p * n + i] = on ? A(1) / static_cast<A>(counts[p * n + i]) : A(0);
    }
  }

  const int64_t block = rows_per_block(n, sizeof(A));
  const int64_t blocks = (n + block - 1) / block;
  const A inv_tau = static_cast<A>(1.0 / temperature);
  parallel_for(rt, 0, c * blocks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> tile(static_cast<size_t>(block * n)), dz(static_cast<size_t>(block * d));
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t p = item / blocks, i0 = (item % blocks) * block;
      const int64_t bi = std::min(block, n - i0);
      const int64_t base = p * n;
      const A* zp = z.data() + base * d;
      const int64_t* y = labels + base;
      const A* a = coef.data() + base;
      const A* ip = inv_pos.data() + base;
      const A* l = lse + base;
      gemm_of<A>(rt)(false, true, bi, n, d, inv_tau, zp + i0 * d, d, zp, d, A(0), tile.data(), n);
      for (int64_t r = 0; r < bi; ++r) {
        const int64_t i = i0 + r;
        A* row = tile.data() + r * n;
        const A ai = a[i], ipi = ip[i], li = l[i];
        const int64_t yi = y[i];
        for (int64_t j = 0; j < n; ++j) {
          const A same = y[j] == yi ? A(1) : A(0);
          const A x = row[j];
          row[j] = ai * (fast_exp(x - li) - same * ipi) + a[j] * (fast_exp(x - l[j]) - same * ip[j]);
        }
        row[i] = 0;
      }
      // dZ_block = H_block Z / tau, then back through z = f / |f|.
      gemm_of<A>(rt)(false, false, bi, d, n, inv_tau, tile.data(), n, zp, d, A(0), dz.data(), d);
      for (int64_t r = 0; r < bi; ++r) {
        const int64_t i = i0 + r;
        const A* zi = zp + i * d;
        const A* g = dz.data() + r * d;
        T* out = grad_f + (base + i) * d;
        const A norm = norms[base + i];
        if (norm > A(kNormEps)) {
          A dot = 0;
          for (int64_t e = 0; e < d; ++e) dot += zi[e] * g[e];
          const A inv = A(1) / norm;
          for (int64_t e = 0; e < d; ++e) out[e] = store_as<T>((g[e] - zi[e] * dot) * inv);
        } else {
          for (int64_t e = 0; e < d; ++e) out[e] = store_as<T>(g[e] / A(kNormEps));
        }
      }
    }
  });
}

}  // namespace

void supcon_forward(const Runtime& rt, DType dtype, const void* features, const int64_t* labels,
                    int64_t c, int64_t n, int64_t d, double temperature, bool scale_by_temperature,
                    void* loss, void* lse) {
  require(c >= 1 && n >= 1 && d >= 1, "supcon_loss: empty input");
  require(temperature > 0 && std::isfinite(temperature), "supcon_loss: temperature must be > 0");
  switch (dtype) {
    case DType::kFloat32:
      return forward_typed<float>(rt, static_cast<const float*>(features), labels, c, n, d, temperature,
                                  scale_by_temperature, static_cast<float*>(loss), static_cast<float*>(lse));
    case DType::kFloat64:
      return forward_typed<double>(rt, static_cast<const double*>(features), labels, c, n, d, temperature,
                                   scale_by_temperature, static_cast<double*>(loss), static_cast<double*>(lse));
    case DType::kBFloat16:
      return forward_typed<BFloat16>(rt, static_cast<const BFloat16*>(features), labels, c, n, d,
                                     temperature, scale_by_temperature, static_cast<float*>(loss),
                                     static_cast<float*>(lse));
  }
  require(false, "supcon_loss: unsupported dtype");
}

void supcon_backward(const Runtime& rt, DType dtype, const void* grad_loss, const void* features,
                     const int64_t* labels, const void* lse, int64_t c, int64_t n, int64_t d,
                     double temperature, bool scale_by_temperature, void* grad_features) {
  require(c >= 1 && n >= 1 && d >= 1, "supcon_loss backward: empty input");
  require(temperature > 0 && std::isfinite(temperature), "supcon_loss: temperature must be > 0");
  switch (dtype) {
    case DType::kFloat32:
      return backward_typed<float>(rt, static_cast<const float*>(grad_loss), static_cast<const float*>(features),
                                   labels, static_cast<const float*>(lse), c, n, d, temperature,
                                   scale_by_temperature, static_cast<float*>(grad_features));
    case DType::kFloat64:
      return backward_typed<double>(rt, static_cast<const double*>(grad_loss),
                                    static_cast<const double*>(features), labels,
                                    static_cast<const double*>(lse), c, n, d, temperature,
                                    scale_by_temperature, static_cast<double*>(grad_features));
    case DType::kBFloat16:
      return backward_typed<BFloat16>(rt, static_cast<const float*>(grad_loss),
                                      static_cast<const BFloat16*>(features), labels,
                                      static_cast<const float*>(lse), c, n, d, temperature,
                                      scale_by_temperature, static_cast<BFloat16*>(grad_features));
  }
  require(false, "supcon_loss backward: unsupported dtype");
}

}  // namespace cpu
}  // namespace patronus
