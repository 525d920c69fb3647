// SupCon loss (docs/METHODS.md §1) on the CPU, forward and backward, batched over C problems.
//
// Work items are (problem, block of rows).  Each item computes its block of the
// similarity matrix with one GEMM and fuses everything elementwise into
// vectorised passes over that tile: the forward keeps only the per-row
// log-sum-exp, the backward recomputes the tile and forms dZ = (G + G^T) Z / tau
// directly from it (the matrix is symmetric, so row i's tile also gives G's
// column i).  A problem that fits one tile (the usual case: C candidate sets of
// N ~ 100s) is one item, which normalises and counts its own rows in
// thread-local memory, so a call is a single parallel region; larger problems
// share one prepared copy.  No [N, N] buffer beyond one tile per thread, so
// C=1, N=65536 fits in memory.
#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "lanes.h"
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

// z = f / max(|f|, eps) for `rows` rows; norms = |f|.
template <typename T, typename A>
void normalize_rows(const T* f, int64_t rows, int64_t d, A* z, A* norms) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = f + r * d;
    A* dst = z + r * d;
    for (int64_t e = 0; e < d; ++e) dst[e] = load_as<A>(src[e]);
    const A norm = std::sqrt(dot(dst, dst, d));
    norms[r] = norm;
    const A inv = A(1) / std::max(norm, A(kNormEps));
    for (int64_t e = 0; e < d; ++e) dst[e] *= inv;
  }
}

// counts[i] = how many other rows share row i's label (its positives).
void positive_counts(const int64_t* y, int64_t n, int64_t* counts, std::vector<int64_t>& sorted) {
  sorted.assign(y, y + n);
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < n; ++i) {
    const auto range = std::equal_range(sorted.begin(), sorted.end(), y[i]);
    counts[i] = static_cast<int64_t>(range.second - range.first) - 1;
  }
}

// What an item needs about its problem: normalised rows, their norms, positive counts.
template <typename A>
struct ProblemView {
  const A* z;
  const A* norms;
  const int64_t* positives;
};

template <typename A>
struct Scratch {
  std::vector<A> z, norms;
  std::vector<int64_t> positives, sorted;
};

// The C problems, prepared once for all when a problem spans several items,
// otherwise by the item that owns it (into its thread's scratch).
template <typename T, typename A>
class Problems {
 public:
  Problems(const Runtime& rt, const T* f, const int64_t* labels, int64_t c, int64_t n, int64_t d)
      : f_(f), labels_(labels), n_(n), d_(d), block_(rows_per_block(n, sizeof(A))),
        blocks_((n + block_ - 1) / block_) {
    if (blocks_ == 1) return;
    z_.reset(new A[static_cast<size_t>(c * n * d)]);
    norms_.reset(new A[static_cast<size_t>(c * n)]);
    positives_.reset(new int64_t[static_cast<size_t>(c * n)]);
    parallel_for(rt, 0, c, 1, [&](int64_t lo, int64_t hi) {
      std::vector<int64_t> sorted;
      for (int64_t p = lo; p < hi; ++p) {
        normalize_rows<T, A>(f + p * n * d, n, d, z_.get() + p * n * d, norms_.get() + p * n);
        positive_counts(labels + p * n, n, positives_.get() + p * n, sorted);
      }
    });
  }

  int64_t block() const { return block_; }
  int64_t blocks() const { return blocks_; }

  ProblemView<A> view(int64_t p, Scratch<A>& s) const {
    const int64_t n = n_, d = d_;
    if (blocks_ > 1) return {z_.get() + p * n * d, norms_.get() + p * n, positives_.get() + p * n};
    s.z.resize(static_cast<size_t>(n * d));
    s.norms.resize(static_cast<size_t>(n));
    s.positives.resize(static_cast<size_t>(n));
    normalize_rows<T, A>(f_ + p * n * d, n, d, s.z.data(), s.norms.data());
    positive_counts(labels_ + p * n, n, s.positives.data(), s.sorted);
    return {s.z.data(), s.norms.data(), s.positives.data()};
  }

 private:
  const T* f_;
  const int64_t* labels_;
  int64_t n_, d_, block_, blocks_;
  std::unique_ptr<A[]> z_, norms_;
  std::unique_ptr<int64_t[]> positives_;
};

// Sum of row[j] over y[j] == yi (the diagonal included: the caller removes it).
// Separate passes per reduction: fused ones defeat the vectoriser.  The label
// test multiplies instead of selecting: GCC 12 at -O3 miscompiles the
// if-converted `acc += c ? row[j] : 0` form here (wrong float64 sums, caught by
// the tests).  Rows hold finite similarities, so the product is exact.
template <typename A>
A same_label_sum(const A* row, int64_t n, const int64_t* y, int64_t yi) {
  A acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += row[j + l] * static_cast<A>(y[j + l] == yi);
  for (; j < n; ++j) acc[0] += row[j] * static_cast<A>(y[j] == yi);
  return lane_total(acc);
}

template <typename A>
A exp_sum(const A* row, int64_t n, A shift) {
  A acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += fast_exp(row[j + l] - shift);
  for (; j < n; ++j) acc[0] += fast_exp(row[j] - shift);
  return lane_total(acc);
}

// log sum_j exp(row[j]) shifted by the row's own max (NaN skipped by the max,
// kept by the sum); -inf for a row of -inf only.
template <typename A>
A exact_lse(const A* row, int64_t n) {
  const A neg_inf = -std::numeric_limits<A>::infinity();
  A m = neg_inf;
  for (int64_t j = 0; j < n; ++j) {
    const A x = row[j];
    m = x > m ? x : m;
  }
  if (m == neg_inf) return neg_inf;
  return m + std::log(exp_sum(row, n, m));
}

template <typename T, typename A = acc_t<T>>
void forward_typed(const Runtime& rt, const T* f, const int64_t* labels, int64_t c, int64_t n,
                   int64_t d, double temperature, bool scale, A* loss, A* lse) {
  const Problems<T, A> problems(rt, f, labels, c, n, d);
  const int64_t block = problems.block(), blocks = problems.blocks();
  // Row losses are summed per problem at the end; rows without positives add 0 and are not counted.
  std::vector<A> row_loss(static_cast<size_t>(c * n));
  std::vector<unsigned char> counted(static_cast<size_t>(c * n));
  const A inv_tau = static_cast<A>(1.0 / temperature);
  const A neg_inf = -std::numeric_limits<A>::infinity();
  // Sums below this may have lost terms to underflow: redo the row with its exact max.
  const A safe_sum = std::numeric_limits<A>::min() * A(1e8);

  parallel_claims(rt, c * blocks, [&](auto&& claim) {
    std::vector<A> tile(static_cast<size_t>(block * n));
    Scratch<A> scratch;
    for (int64_t item = claim(); item >= 0; item = claim()) {
      const int64_t p = item / blocks, i0 = (item % blocks) * block;
      const int64_t bi = std::min(block, n - i0);
      const ProblemView<A> view = problems.view(p, scratch);
      const int64_t* y = labels + p * n;
      gemm_of<A>(rt)(false, true, bi, n, d, inv_tau, view.z + i0 * d, d, view.z, d, A(0), tile.data(), n);
      for (int64_t r = 0; r < bi; ++r) {
        const int64_t i = i0 + r;
        A* row = tile.data() + r * n;
        const int64_t positives = view.positives[i];
        const A pos_sum = positives > 0 ? same_label_sum(row, n, y, y[i]) - row[i] : A(0);
        row[i] = neg_inf;  // the diagonal is excluded from the softmax
        // |z_i . z_j| <= 1 bounds the row by 1/tau: a stabilising shift without a max pass.
        const A sum = exp_sum(row, n, inv_tau);
        const A row_lse = sum < safe_sum ? exact_lse(row, n) : inv_tau + std::log(sum);
        lse[p * n + i] = row_lse;
        row_loss[p * n + i] = positives > 0 ? row_lse - pos_sum / static_cast<A>(positives) : A(0);
        counted[p * n + i] = positives > 0;
      }
    }
  });

  const A factor = scale ? static_cast<A>(temperature) : A(1);
  for (int64_t p = 0; p < c; ++p) {
    A total = 0;
    int64_t used = 0;
    for (int64_t i = 0; i < n; ++i) {
      total += row_loss[p * n + i];
      used += counted[p * n + i];
    }
    loss[p] = used > 0 ? factor * total / static_cast<A>(used) : A(0);
  }
}

template <typename T, typename A = acc_t<T>>
void backward_typed(const Runtime& rt, const A* grad_loss, const T* f, const int64_t* labels,
                    const A* lse, int64_t c, int64_t n, int64_t d, double temperature, bool scale,
                    T* grad_f) {
  const Problems<T, A> problems(rt, f, labels, c, n, d);
  const int64_t block = problems.block(), blocks = problems.blocks();
  const A inv_tau = static_cast<A>(1.0 / temperature);
  const A factor = scale ? static_cast<A>(temperature) : A(1);

  parallel_claims(rt, c * blocks, [&](auto&& claim) {
    std::vector<A> tile(static_cast<size_t>(block * n)), dz(static_cast<size_t>(block * d));
    std::vector<A> coef(static_cast<size_t>(n)), inv_pos(static_cast<size_t>(n));
    Scratch<A> scratch;
    for (int64_t item = claim(); item >= 0; item = claim()) {
      const int64_t p = item / blocks, i0 = (item % blocks) * block;
      const int64_t bi = std::min(block, n - i0);
      const int64_t base = p * n;
      const ProblemView<A> view = problems.view(p, scratch);
      // dL/dLambda_ij = coef_i * (p_ij - [y_i = y_j] * inv_pos_i); coef_i = 0 for rows without positives.
      int64_t used = 0;
      for (int64_t i = 0; i < n; ++i) used += view.positives[i] > 0;
      for (int64_t i = 0; i < n; ++i) {
        const bool on = view.positives[i] > 0;
        coef[i] = on ? grad_loss[p] * factor / static_cast<A>(used) : A(0);
        inv_pos[i] = on ? A(1) / static_cast<A>(view.positives[i]) : A(0);
      }
      const A* zp = view.z;
      const int64_t* y = labels + base;
      const A* a = coef.data();
      const A* ip = inv_pos.data();
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
        const A norm = view.norms[i];
        if (norm > A(kNormEps)) {
          const A along = dot(zi, g, d);
          const A inv = A(1) / norm;
          for (int64_t e = 0; e < d; ++e) out[e] = store_as<T>((g[e] - zi[e] * along) * inv);
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
