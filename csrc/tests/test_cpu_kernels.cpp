// Standalone test of the framework-free CPU kernels (no torch): each kernel on
// random inputs against a direct double-precision computation, with the
// portable runtime on one and on two threads.
//
//   test_cpu_kernels        exit 0: all passed, 1: a failure
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "patronus/common.h"
#include "patronus/cpu_kernels.h"
#include "patronus/topk_merge.h"
#include "patronus/topk_plan.h"
#include "topk_reference.h"

namespace {

using patronus::BFloat16;
using patronus::DType;
namespace cpu = patronus::cpu;

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

int g_checks = 0;
int g_failures = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 40) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

std::string fmt(const char* pattern, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, pattern, a, b, c);
  return buf;
}

// Random standard-normal values, stored in the kernel's input dtype; `exact`
// holds the rounded values in double so the oracle sees what the kernel sees.
struct Input {
  DType dtype;
  std::vector<float> f32;
  std::vector<double> f64;
  std::vector<BFloat16> bf16;
  std::vector<double> exact;

  Input(DType t, size_t count, std::mt19937_64& rng) : dtype(t), exact(count) {
    std::normal_distribution<double> normal;
    for (auto& v : exact) v = normal(rng);
    store();
  }
  void set(size_t i, double v) {
    exact[i] = v;
    store();
  }
  void store() {
    f32.assign(exact.size(), 0.0f);
    f64.assign(exact.size(), 0.0);
    bf16.assign(exact.size(), BFloat16{0});
    for (size_t i = 0; i < exact.size(); ++i) {
      if (dtype == DType::kFloat32) {
        f32[i] = static_cast<float>(exact[i]);
        exact[i] = f32[i];
      } else if (dtype == DType::kFloat64) {
        f64[i] = exact[i];
      } else {
        bf16[i] = patronus::from_float(static_cast<float>(exact[i]));
        exact[i] = patronus::to_float(bf16[i]);
      }
    }
  }
  const void* data() const {
    switch (dtype) {
      case DType::kFloat32: return f32.data();
      case DType::kFloat64: return f64.data();
      case DType::kBFloat16: return bf16.data();
    }
    return nullptr;
  }
};

// Outputs are float for float32/bfloat16 inputs and double for float64.
struct AccBuffer {
  bool is_double;
  std::vector<float> f;
  std::vector<double> d;
  AccBuffer(DType t, size_t count) : is_double(t == DType::kFloat64), f(count), d(count) {}
  void* data() { return is_double ? static_cast<void*>(d.data()) : static_cast<void*>(f.data()); }
  double operator[](size_t i) const { return is_double ? d[i] : f[i]; }
};

double unit_roundoff(DType t) { return t == DType::kFloat64 ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24); }

// ------------------------------------------------------------------------------------ token_topk

struct TopkCase {
  const char* name;
  int64_t n, t, d, v, w, k;
  bool word_level, negate;
  int nan_table_rows;   // table rows set to NaN
  bool nan_query;       // query row 0 gets a NaN
  int duplicate_rows;   // table rows copied from row 0 (exact ties)
};

void check_topk_case(const cpu::Runtime& rt, DType dtype, const TopkCase& c, std::mt19937_64& rng) {
  const int64_t td = c.t * c.d;
  Input queries(dtype, c.n * td, rng), table(dtype, c.v * c.d, rng);
  std::vector<int64_t> rows;
  if (c.word_level) {
    std::uniform_int_distribution<int64_t> token(0, c.v - 1);
    std::uniform_int_distribution<int64_t> length(1, c.t);
    rows.resize(c.w * c.t);
    for (int64_t w = 0; w < c.w; ++w) {
      const int64_t len = (w % 3 == 0) ? length(rng) : c.t;  // a third of the words are padded
      for (int64_t s = 0; s < c.t; ++s) rows[w * c.t + s] = s < len ? token(rng) : -1;
    }
  }
  for (int r = 1; r <= c.duplicate_rows && r < c.v; ++r)
    for (int64_t e = 0; e < c.d; ++e) table.exact[r * c.d + e] = table.exact[e];
  std::uniform_int_distribution<int64_t> any_row(0, c.v - 1);
  for (int i = 0; i < c.nan_table_rows; ++i) table.exact[any_row(rng) * c.d + (i % c.d)] = kNaN;
  if (c.nan_query) queries.exact[td / 2] = kNaN;
  table.store();
  queries.store();

  // Direct scores and per-row error bounds in double.
  std::vector<double> scores(c.n * c.w), bound(c.n, 0.0);
  for (int64_t n = 0; n < c.n; ++n) {
    for (int64_t w = 0; w < c.w; ++w) {
      const patronus::test::TopkScore r = patronus::test::topk_score(
          queries.exact.data() + n * td, table.exact.data(), c.word_level ? rows.data() : nullptr, c.t, c.d, w);
      scores[n * c.w + w] = c.negate ? -r.score : r.score;
      if (!std::isnan(r.abs_terms)) bound[n] = std::max(bound[n], r.abs_terms);
    }
    bound[n] = 4.0 * td * unit_roundoff(dtype) * bound[n] + 1e-12;
  }

  AccBuffer values(dtype, c.n * c.k);
  std::vector<int64_t> indices(c.n * c.k, 12345);
  cpu::token_topk(rt, dtype, queries.data(), table.data(), c.word_level ? rows.data() : nullptr, c.n, c.t, c.d,
                  c.v, c.w, c.k, c.negate, values.data(), indices.data());

  const std::string where = std::string(c.name) + " [" + patronus::dtype_name(dtype) + "]";
  for (int64_t n = 0; n < c.n; ++n) {
    std::vector<double> valid;
    for (int64_t w = 0; w < c.w; ++w)
      if (!std::isnan(scores[n * c.w + w])) valid.push_back(scores[n * c.w + w]);
    std::sort(valid.begin(), valid.end(), std::greater<double>());
    const int64_t filled = std::min<int64_t>(c.k, static_cast<int64_t>(valid.size()));
    const double tol = bound[n];
    std::vector<int64_t> seen;
    for (int64_t s = 0; s < c.k; ++s) {
      const double got = values[n * c.k + s];
      const int64_t index = indices[n * c.k + s];
      const std::string at = where + fmt(" row %g slot %g", n, s);
      if (s >= filled) {
        expect(index == -1 && got == -kInf, at + ": expected an empty slot (-inf, -1)");
        continue;
      }
      expect(index >= 0 && index < c.w, at + fmt(": index %g out of range", index));
      if (index < 0 || index >= c.w) continue;
      const double truth = scores[n * c.w + index];
      expect(!std::isnan(truth), at + ": a NaN score was reported");
      expect(std::fabs(got - valid[s]) <= tol, at + fmt(": value %g, expected %g (tol %g)", got, valid[s], tol));
      expect(std::fabs(got - truth) <= tol, at + fmt(": value %g but its index scores %g", got, truth));
      expect(truth >= valid[filled - 1] - 2 * tol, at + ": index outside the top-k");
      expect(std::find(seen.begin(), seen.end(), index) == seen.end(), at + ": duplicate index");
      seen.push_back(index);
      if (s > 0) expect(got <= values[n * c.k + s - 1], at + ": values not descending");
    }
  }
}

void test_token_topk(const cpu::Runtime& rt, std::mt19937_64& rng) {
  const TopkCase cases[] = {
      {"tiny k=W", 1, 1, 3, 1, 1, 1, false, true, 0, false, 0},
      {"k=W", 3, 1, 7, 50, 50, 50, false, true, 0, false, 0},
      {"k=1, vocabulary split", 130, 1, 20, 1500, 1500, 1, false, true, 0, false, 0},
      {"few rows split the vocabulary", 5, 1, 24, 3001, 3001, 10, false, false, 0, false, 0},
      {"one row block, odd sizes", 257, 1, 33, 777, 777, 17, false, true, 0, false, 0},
      {"two row blocks", 401, 1, 9, 300, 300, 5, false, true, 0, false, 0},
      {"four row blocks, k=W", 1001, 1, 5, 150, 150, 150, false, true, 0, false, 0},
      {"ties", 6, 1, 12, 400, 400, 15, false, true, 0, false, 12},
      {"NaN table rows, k > finite count", 4, 1, 8, 9, 9, 9, false, true, 4, false, 0},
      {"NaN query row", 3, 1, 8, 600, 600, 5, false, true, 0, true, 0},
      {"NaN rows in a large vocabulary", 3, 1, 16, 2500, 2500, 40, false, true, 300, false, 0},
      {"word level", 4, 3, 8, 40, 60, 60, true, true, 0, false, 0},
      {"word level, many words", 8, 4, 16, 300, 1100, 5, true, false, 0, false, 0},
      {"word level, vocabulary split", 131, 2, 12, 500, 700, 3, true, true, 0, false, 0},
      {"word level, row blocks", 390, 3, 6, 50, 90, 7, true, true, 0, false, 0},
      {"word level with NaN", 5, 3, 6, 30, 200, 20, true, true, 2, false, 0},
  };
  for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kBFloat16})
    for (const TopkCase& c : cases) check_topk_case(rt, dtype, c, rng);
}

// ------------------------------------------------------------------------------------ supcon

// docs/METHODS.md §1, directly: per problem, per row, every pair.
std::vector<double> direct_supcon(const std::vector<double>& f, const std::vector<int64_t>& labels, int64_t c,
                                  int64_t n, int64_t d, double tau, bool scale) {
  std::vector<double> out(c);
  for (int64_t p = 0; p < c; ++p) {
    std::vector<double> z(n * d);
    for (int64_t i = 0; i < n; ++i) {
      double ss = 0;
      for (int64_t e = 0; e < d; ++e) ss += f[(p * n + i) * d + e] * f[(p * n + i) * d + e];
      const double norm = std::max(std::sqrt(ss), 1e-12);
      for (int64_t e = 0; e < d; ++e) z[i * d + e] = f[(p * n + i) * d + e] / norm;
    }
    double total = 0;
    int64_t used = 0;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> logit(n);
      double m = -kInf;
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t e = 0; e < d; ++e) s += z[i * d + e] * z[j * d + e];
        logit[j] = s / tau;
        if (j != i) m = std::max(m, logit[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < n; ++j)
        if (j != i) sum += std::exp(logit[j] - m);
      const double lse = m + std::log(sum);
      double pos = 0;
      int64_t count = 0;
      for (int64_t j = 0; j < n; ++j)
        if (j != i && labels[p * n + j] == labels[p * n + i]) pos += logit[j] - lse, ++count;
      if (count > 0) total += -pos / count, ++used;
    }
    out[p] = used > 0 ? (scale ? tau : 1.0) * total / used : 0.0;
  }
  return out;
}

void test_supcon(const cpu::Runtime& rt, std::mt19937_64& rng) {
  struct Case {
    int64_t c, n, d, classes;
    double tau;
    bool scale;
  };
  // n = 1100 spans several row blocks of the kernel; 17 is one past its vector lanes.
  const Case cases[] = {{1, 2, 3, 1, 0.5, true},   {3, 17, 8, 3, 0.5, true},   {4, 40, 33, 4, 0.1, false},
                        {2, 150, 20, 6, 1.5, true}, {1, 1100, 4, 5, 0.3, true}, {2, 6, 2, 3, 0.004, true}};
  for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kBFloat16}) {
    for (const Case& k : cases) {
      Input feats(dtype, k.c * k.n * k.d, rng);
      std::vector<int64_t> labels(k.c * k.n);
      std::uniform_int_distribution<int64_t> label(0, k.classes - 1);
      for (auto& y : labels) y = label(rng);
      const std::vector<double> expected = direct_supcon(feats.exact, labels, k.c, k.n, k.d, k.tau, k.scale);
      AccBuffer loss(dtype, k.c), lse(dtype, k.c * k.n);
      cpu::supcon_forward(rt, dtype, feats.data(), labels.data(), k.c, k.n, k.d, k.tau, k.scale, loss.data(),
                          lse.data());
      const double tol = dtype == DType::kFloat64 ? 1e-10 : 2e-5 * std::sqrt(static_cast<double>(k.n));
      for (int64_t p = 0; p < k.c; ++p)
        expect(std::fabs(loss[p] - expected[p]) <= tol * std::max(1.0, std::fabs(expected[p])),
               std::string("supcon forward [") + patronus::dtype_name(dtype) +
                   fmt("] n=%g problem %g: %g", k.n, p, loss[p]) + fmt(" expected %g", expected[p]));
    }
  }

  // Backward vs central finite differences of the float64 kernel's own forward.
  const int64_t c = 2, n = 9, d = 5;
  Input feats(DType::kFloat64, c * n * d, rng);
  const std::vector<int64_t> labels = {0, 0, 1, 1, 2, 2, 2, 3, 0, 1, 0, 1, 0, 1, 5, 6, 1, 0};
  const double grad_loss[c] = {1.0, -0.7};
  const double tau = 0.4;
  std::vector<double> lse(c * n), loss(c), grad(c * n * d);
  cpu::supcon_forward(rt, DType::kFloat64, feats.f64.data(), labels.data(), c, n, d, tau, true, loss.data(),
                      lse.data());
  cpu::supcon_backward(rt, DType::kFloat64, grad_loss, feats.f64.data(), labels.data(), lse.data(), c, n, d, tau,
                       true, grad.data());
  auto objective = [&](const std::vector<double>& f) {
    std::vector<double> l(c), s(c * n);
    cpu::supcon_forward(rt, DType::kFloat64, f.data(), labels.data(), c, n, d, tau, true, l.data(), s.data());
    return grad_loss[0] * l[0] + grad_loss[1] * l[1];
  };
  const double h = 1e-6;
  for (int64_t i = 0; i < c * n * d; ++i) {
    std::vector<double> plus = feats.f64, minus = feats.f64;
    plus[i] += h;
    minus[i] -= h;
    const double numeric = (objective(plus) - objective(minus)) / (2 * h);
    expect(std::fabs(numeric - grad[i]) <= 1e-6 * std::max(1.0, std::fabs(numeric)),
           fmt("supcon backward element %g: analytic %g, numeric %g", i, grad[i], numeric));
  }

  // float32 backward against the float64 one.
  Input feats32(DType::kFloat32, c * n * d, rng);
  std::vector<double> f64(feats32.exact), lse64(c * n), loss64(c), grad64(c * n * d);
  cpu::supcon_forward(rt, DType::kFloat64, f64.data(), labels.data(), c, n, d, tau, true, loss64.data(), lse64.data());
  cpu::supcon_backward(rt, DType::kFloat64, grad_loss, f64.data(), labels.data(), lse64.data(), c, n, d, tau, true,
                       grad64.data());
  std::vector<float> lse32(c * n), loss32(c), grad32(c * n * d);
  const float grad_loss32[c] = {1.0f, -0.7f};
  cpu::supcon_forward(rt, DType::kFloat32, feats32.f32.data(), labels.data(), c, n, d, tau, true, loss32.data(),
                      lse32.data());
  cpu::supcon_backward(rt, DType::kFloat32, grad_loss32, feats32.f32.data(), labels.data(), lse32.data(), c, n, d,
                       tau, true, grad32.data());
  for (int64_t i = 0; i < c * n * d; ++i)
    expect(std::fabs(grad32[i] - grad64[i]) <= 1e-5 * std::max(1.0, std::fabs(grad64[i])),
           fmt("supcon float32 backward element %g: %g vs %g", i, grad32[i], grad64[i]));

  // No positive pair: loss 0 and zero gradient.  A NaN feature: NaN for its problem only.
  {
    Input f(DType::kFloat64, 2 * 4 * 3, rng);
    f.set(4 * 3 + 5, kNaN);  // problem 1
    const std::vector<int64_t> y = {0, 1, 2, 3, 0, 0, 1, 1};
    std::vector<double> l(2), s(8), g(24);
    cpu::supcon_forward(rt, DType::kFloat64, f.f64.data(), y.data(), 2, 4, 3, 0.5, true, l.data(), s.data());
    expect(l[0] == 0.0, fmt("supcon without positives: loss %g, expected 0", l[0]));
    expect(std::isnan(l[1]), "supcon with a NaN feature: loss must be NaN");
    const double ones[2] = {1.0, 0.0};
    cpu::supcon_backward(rt, DType::kFloat64, ones, f.f64.data(), y.data(), s.data(), 2, 4, 3, 0.5, true, g.data());
    bool zero = true;
    for (int e = 0; e < 12; ++e) zero &= g[e] == 0.0;
    expect(zero, "supcon without positives: gradient must be 0");
  }
}

// ------------------------------------------------------------------------------------ bank

void test_bank(const cpu::Runtime& rt, std::mt19937_64& rng) {
  struct Case {
    int64_t m, k, d;
  };
  const Case cases[] = {{1, 1, 1}, {7, 3, 17}, {130, 9, 64}, {65, 40, 100}, {9, 4, 63}};
  for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kBFloat16}) {
    for (const Case& c : cases) {
      for (cpu::BankMode mode : {cpu::BankMode::kCosine, cpu::BankMode::kSign}) {
        Input x(dtype, c.m * c.d, rng), bank(dtype, c.k * c.d, rng);
        if (c.k > 2) {  // an exact duplicate: ties go to the lowest index
          for (int64_t e = 0; e < c.d; ++e) bank.exact[2 * c.d + e] = bank.exact[1 * c.d + e];
          for (int64_t e = 0; e < c.d; ++e) x.exact[e] = 2.0 * bank.exact[2 * c.d + e];
        }
        if (c.m > 3) x.exact[3 * c.d] = kNaN;   // NaN input row: NaN, -1
        if (c.k > 3) bank.exact[3 * c.d] = kNaN;  // NaN bank row: never chosen
        x.store();
        bank.store();
        AccBuffer best(dtype, c.m);
        std::vector<int64_t> index(c.m, 12345);
        cpu::bank_similarity(rt, dtype, x.data(), bank.data(), c.m, c.k, c.d, mode, best.data(), index.data());
        const bool sign = mode == cpu::BankMode::kSign;
        const std::string where = std::string(sign ? "bank sign [" : "bank cosine [") + patronus::dtype_name(dtype) +
                                  fmt("] m=%g k=%g d=%g", c.m, c.k, c.d);
        for (int64_t r = 0; r < c.m; ++r) {
          std::vector<double> sims(c.k);
          for (int64_t j = 0; j < c.k; ++j) {
            const double* a = &x.exact[r * c.d];
            const double* b = &bank.exact[j * c.d];
            double dot = 0, na = 0, nb = 0, agree = 0;
            bool nan = false;
            for (int64_t e = 0; e < c.d; ++e) {
              dot += a[e] * b[e], na += a[e] * a[e], nb += b[e] * b[e];
              agree += ((a[e] > 0) - (a[e] < 0)) == ((b[e] > 0) - (b[e] < 0));
              nan |= std::isnan(a[e]) || std::isnan(b[e]);
            }
            sims[j] = nan ? kNaN
                          : sign ? agree / c.d : dot / (std::max(std::sqrt(na), 1e-8) * std::max(std::sqrt(nb), 1e-8));
          }
          double top = -kInf;
          int64_t first = -1;
          for (int64_t j = 0; j < c.k; ++j)
            if (!std::isnan(sims[j]) && (first < 0 || sims[j] > top)) top = sims[j], first = j;
          const std::string at = where + fmt(" row %g", r);
          if (first < 0) {
            expect(std::isnan(best[r]) && index[r] == -1, at + ": all-NaN row must give NaN, -1");
            continue;
          }
          const double tol = sign ? 1e-7 : 16 * c.d * unit_roundoff(dtype);
          expect(std::fabs(best[r] - top) <= tol, at + fmt(": best %g, expected %g", best[r], top));
          expect(index[r] >= 0 && index[r] < c.k && std::fabs(sims[index[r]] - best[r]) <= tol,
                 at + fmt(": index %g does not score its best", index[r]));
          if (sign) expect(index[r] == first, at + fmt(": tie must go to index %g, got %g", first, index[r]));
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------ preconditions

void test_preconditions(const cpu::Runtime& rt) {
  const float q[4] = {1, 2, 3, 4}, table[4] = {1, 0, 0, 1};
  float values[4];
  int64_t indices[4];
  auto throws = [](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  expect(throws([&] { cpu::token_topk(rt, DType::kFloat32, q, table, nullptr, 2, 1, 2, 2, 2, 0, true, values, indices); }),
         "token_topk k = 0 must throw");
  expect(throws([&] { cpu::token_topk(rt, DType::kFloat32, q, table, nullptr, 2, 1, 2, 2, 2, 3, true, values, indices); }),
         "token_topk k > W must throw");
  expect(throws([&] { cpu::token_topk(rt, DType::kFloat32, q, table, nullptr, 2, 2, 1, 2, 2, 1, true, values, indices); }),
         "token_topk without rows and T != 1 must throw");
  expect(throws([&] { cpu::token_topk(rt, DType::kFloat32, q, table, nullptr, 0, 1, 2, 2, 2, 1, true, values, indices); }),
         "token_topk with N = 0 must throw");
  const int64_t labels[2] = {0, 0};
  expect(throws([&] { cpu::supcon_forward(rt, DType::kFloat32, q, labels, 1, 2, 2, 0.0, true, values, values + 2); }),
         "supcon temperature 0 must throw");
  expect(throws([&] { cpu::supcon_forward(rt, DType::kFloat32, q, labels, 1, 2, 2, kNaN, true, values, values + 2); }),
         "supcon temperature NaN must throw");
  expect(throws([&] { cpu::bank_similarity(rt, DType::kFloat32, q, table, 0, 2, 2, cpu::BankMode::kSign, values, indices); }),
         "bank_similarity with M = 0 must throw");
}

// ------------------------------------------------------------- CUDA token_topk host logic
// The CUDA token_topk's planner and merge order are host-compilable headers, so
// their choices are checked here, without a GPU.

namespace plan = patronus::topk_plan;
constexpr int kMmaTiles[] = {128, 64, 32};  // as csrc/cuda/token_topk.cu
constexpr int kExactF32Tiles[] = {128, 32};

void test_topk_plan() {
  const int64_t sms = 132;  // H100 SXM / H200
  // The case: N = 4096, V = 30522, k = 256.  The scratch budget holds one
  // list, so one slice; 128-row tiles gave 32 CTAs.  d (384 or 768) does not enter.
  const plan::Plan old256 = plan::plan_split(4096, 30522, 256, 4, 128, 128, sms);
  expect(old256.splits == 1 && old256.ctas() == 32, fmt("old plan k=256: %g CTAs x %g splits", old256.ctas(), old256.splits));
  for (int64_t v : {30522, 128256}) {
    for (int64_t k : {10, 256}) {
      for (const int* tiles : {kMmaTiles, kExactF32Tiles}) {
        const int count = tiles == kMmaTiles ? 3 : 2;
        const plan::Plan p = plan::plan(4096, v, k, 4, tiles, count, 128, sms);
        expect(p.ctas() * 10 >= sms * 9 && p.ctas() <= sms,
               fmt("plan N=4096 V=%g k=%g fills one wave: %g CTAs", v, k, p.ctas()));
        expect(static_cast<int64_t>(p.bytes) <= std::max<int64_t>(plan::scratch_budget(4096, v, k, 4),
                                                                   int64_t(4096) * k * 8 + 512),
               fmt("plan N=4096 V=%g k=%g scratch %g bytes within budget", v, k, p.bytes));
      }
    }
  }
  const plan::Plan p256 = plan::plan(4096, 30522, 256, 4, kMmaTiles, 3, 128, sms);
  expect(p256.tile_m == 32 && p256.splits == 1 && p256.ctas() == 128,
         fmt("plan k=256: tile_m %g, splits %g, CTAs %g (want 32, 1, 128)", p256.tile_m, p256.splits, p256.ctas()));
  const plan::Plan p10 = plan::plan(4096, 30522, 10, 4, kMmaTiles, 3, 128, sms);
  expect(p10.tile_m == 128 && p10.ctas() == 128, fmt("plan k=10: tile_m %g, CTAs %g (want 128, 128)", p10.tile_m, p10.ctas()));
  const plan::Plan p8k = plan::plan(8192, 30522, 256, 4, kMmaTiles, 3, 128, sms);
  expect(p8k.tile_m == 64 && p8k.ctas() == 128, fmt("plan N=8192 k=256: tile_m %g, CTAs %g (want 64, 128)", p8k.tile_m, p8k.ctas()));
  const plan::Plan small = plan::plan(9, 5000, 256, 4, kMmaTiles, 3, 128, sms);
  expect(small.tile_m == 32 && small.row_blocks == 1, fmt("plan n=9: tile_m %g (want 32)", small.tile_m));

  // Invariants over a grid of shapes.
  for (int64_t s : {1, 108, 132}) {
    for (int64_t n : {1, 5, 37, 130, 512, 4096, 8192}) {
      for (int64_t w : {7, 200, 5000, 30522, 128256}) {
        for (int64_t k : {1, 10, 100, 256}) {
          if (k > w) continue;
          for (size_t acc : {size_t(4), size_t(8)}) {
            const plan::Plan base = plan::plan_split(n, w, k, acc, 128, 128, s);
            const plan::Plan p = plan::plan(n, w, k, acc, kMmaTiles, 3, 128, s);
            const std::string what = "plan n=" + std::to_string(n) + " w=" + std::to_string(w) + " k=" +
                                     std::to_string(k) + " acc=" + std::to_string(acc) + " sms=" + std::to_string(s);
            bool ok = p.tile_m == 128 || p.tile_m == 64 || p.tile_m == 32;
            ok &= static_cast<int64_t>(p.row_blocks) * p.tile_m >= n && static_cast<int64_t>(p.row_blocks - 1) * p.tile_m < n;
            ok &= p.splits >= 1 && p.splits <= 65535 && p.tiles_per_split >= 1;
            ok &= static_cast<int64_t>(p.splits) * p.tiles_per_split >= p.num_tiles;
            ok &= static_cast<int64_t>(p.splits - 1) * p.tiles_per_split < p.num_tiles;  // no empty slice
            ok &= static_cast<int64_t>(p.num_tiles) * 128 >= w;
            const int64_t one_list = plan::align_up(n * k * acc) + plan::align_up(n * k * 4);
            ok &= p.splits == 1 || static_cast<int64_t>(p.bytes) <= std::max(plan::scratch_budget(n, w, k, acc), one_list);
            ok &= p.ctas() >= base.ctas() || p.ctas() >= s;  // never a less full grid than 128-row tiles gave
            expect(ok, what);
          }
        }
      }
    }
  }
}

// The merge of two partial lists exactly as csrc/cuda/topk_select.cuh's
// merge_round does it (positions from topk_merge::merged_position).
struct Entry {
  float key;
  int idx;
};

std::vector<Entry> merge_like_kernel(const std::vector<Entry>& a, const std::vector<Entry>& b, int k) {
  std::vector<float> ak(k), bk(k);
  std::vector<int> ai(k), bi(k);
  for (int j = 0; j < k; ++j) {
    ak[j] = a[j].key;
    ai[j] = a[j].idx;
    bk[j] = b[j].key;
    bi[j] = b[j].idx;
  }
  std::vector<Entry> out(k, Entry{kNaN, -7});
  std::vector<int> writes(k, 0);
  for (int j = 0; j < k; ++j) {
    const int pa = patronus::topk_merge::merged_position(j, ak[j], ai[j], true, bk.data(), bi.data(), k);
    if (pa < k) out[pa] = a[j], ++writes[pa];
    const int pb = patronus::topk_merge::merged_position(j, bk[j], bi[j], false, ak.data(), ai.data(), k);
    if (pb < k) out[pb] = b[j], ++writes[pb];
  }
  for (int j = 0; j < k; ++j)
    if (writes[j] != 1) out[j] = Entry{kNaN, -9};  // a slot written twice or never
  return out;
}

// A partial list: `real` entries (keys non-increasing, some -inf), then padding.
std::vector<Entry> partial_list(std::mt19937_64& rng, int k, int real, int base_idx) {
  std::uniform_int_distribution<int> key(-3, 3);
  std::vector<Entry> l;
  for (int i = 0; i < real; ++i) {
    const int v = key(rng);
    l.push_back(Entry{v == -3 ? -std::numeric_limits<float>::infinity() : static_cast<float>(v), base_idx + i});
  }
  std::sort(l.begin(), l.end(), [](const Entry& x, const Entry& y) { return x.key > y.key; });
  while (static_cast<int>(l.size()) < k) l.push_back(Entry{-std::numeric_limits<float>::infinity(), -1});
  return l;
}

bool merged_ok(const std::vector<Entry>& a, const std::vector<Entry>& b, const std::vector<Entry>& out, int k) {
  std::vector<float> want;
  for (const auto* l : {&a, &b})
    for (const Entry& e : *l)
      if (e.idx >= 0) want.push_back(e.key);
  std::sort(want.begin(), want.end(), std::greater<float>());
  std::vector<int> seen;
  for (int j = 0; j < k; ++j) {
    if (std::isnan(out[j].key)) return false;
    if (j < static_cast<int>(want.size())) {
      if (out[j].idx < 0 || out[j].key != want[j]) return false;  // a real entry, in order
      if (std::find(seen.begin(), seen.end(), out[j].idx) != seen.end()) return false;
      seen.push_back(out[j].idx);
    } else if (out[j].idx >= 0) {
      return false;
    }
  }
  return true;
}

void test_topk_merge_order(std::mt19937_64& rng) {
  const float ninf = -std::numeric_limits<float>::infinity();
  // The review's case: list a = 1 real entry + padding, list b = real -inf scores.
  {
    const int k = 4;
    const std::vector<Entry> a = {{2.0f, 10}, {ninf, -1}, {ninf, -1}, {ninf, -1}};
    const std::vector<Entry> b = {{ninf, 20}, {ninf, 21}, {ninf, -1}, {ninf, -1}};
    const std::vector<Entry> out = merge_like_kernel(a, b, k);
    expect(out[0].idx == 10 && out[1].idx >= 20 && out[2].idx >= 20 && out[1].idx != out[2].idx && out[3].idx == -1,
           "merge: real -inf scores rank before padding");
    const std::vector<Entry> out2 = merge_like_kernel(b, a, k);  // and with the lists swapped
    expect(out2[0].idx == 10 && out2[1].idx >= 20 && out2[2].idx >= 20 && out2[3].idx == -1,
           "merge: real -inf scores rank before padding (lists swapped)");
  }
  // Random lists, and a tree of merges as merge_lists() runs them.
  for (int trial = 0; trial < 400; ++trial) {
    const int k = 1 + static_cast<int>(rng() % 40);
    std::uniform_int_distribution<int> real(0, k);
    const std::vector<Entry> a = partial_list(rng, k, real(rng), 0), b = partial_list(rng, k, real(rng), 1000);
    if (!merged_ok(a, b, merge_like_kernel(a, b, k), k)) {
      expect(false, "merge: random lists, k = " + std::to_string(k));
      return;
    }
  }
  for (int trial = 0; trial < 50; ++trial) {
    const int k = 1 + static_cast<int>(rng() % 16), splits = 2 + static_cast<int>(rng() % 9);
    std::uniform_int_distribution<int> real(0, k);
    std::vector<std::vector<Entry>> lists;
    std::vector<Entry> all;
    for (int s = 0; s < splits; ++s) {
      lists.push_back(partial_list(rng, k, real(rng), 1000 * s));
      for (const Entry& e : lists.back())
        if (e.idx >= 0) all.push_back(e);
    }
    for (int stride = 1; stride < splits; stride *= 2)
      for (int la = 0; la + stride < splits; la += 2 * stride) lists[la] = merge_like_kernel(lists[la], lists[la + stride], k);
    std::vector<Entry> top = all;
    std::sort(top.begin(), top.end(), [](const Entry& x, const Entry& y) { return x.key > y.key; });
    bool ok = true;
    for (int j = 0; j < k; ++j) {
      if (j < static_cast<int>(top.size())) ok &= lists[0][j].idx >= 0 && lists[0][j].key == top[j].key;
      else ok &= lists[0][j].idx == -1;
    }
    if (!ok) {
      expect(false, "merge tree: splits = " + std::to_string(splits) + ", k = " + std::to_string(k));
      return;
    }
  }
  expect(true, "merge order");
}

}  // namespace

int main() {
  std::mt19937_64 rng(20240607);
  test_topk_plan();
  test_topk_merge_order(rng);
  for (int threads : {1, 2}) {
    const cpu::Runtime rt = cpu::portable_runtime(threads);
    test_token_topk(rt, rng);
    test_supcon(rt, rng);
    test_bank(rt, rng);
    test_preconditions(rt);
  }
  std::printf("test_cpu_kernels: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
