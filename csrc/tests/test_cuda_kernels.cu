// Standalone test of the CUDA launchers (no torch): each op on small random
// inputs against a double-precision CPU computation.
//
//   test_cuda_kernels [--quick | --tiny]   exit 0: all passed, 1: a failure, 77: no CUDA device
//
// --quick runs a reduced set (for compute-sanitizer memcheck), --tiny one small
// case per kernel (for the slower racecheck / synccheck).
// Build: nvcc -std=c++17 -O2 -Icsrc/include -Icsrc -gencode=... csrc/tests/test_cuda_kernels.cu csrc/cuda/*.cu
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "patronus/common.h"
#include "patronus/cuda_kernels.h"
#include "topk_reference.h"

namespace pc = patronus::cuda;
using patronus::BFloat16;
using patronus::DType;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CUDA_OK(expr)                                                                                   \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) {                                                                            \
      std::fprintf(stderr, "%s:%d: %s -> %s (%s)\n", __FILE__, __LINE__, #expr, cudaGetErrorName(e_), \
                   cudaGetErrorString(e_));                                                             \
      std::exit(1);                                                                                     \
    }                                                                                                   \
  } while (0)

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    if (g_failures <= 40) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// The one stream everything runs on: the kernels, and the poisoning, uploads
// and downloads below.  It is non-blocking (it does not wait for the legacy
// default stream), so a cudaMemset / pageable cudaMemcpy on the legacy stream
// would not be ordered before the launches: the poison could land after a
// kernel wrote its outputs, or an input upload finish after the kernel read it.
cudaStream_t g_stream = nullptr;

// Device buffer of raw bytes; poisoned (0xCD) on creation, on g_stream, to catch unwritten outputs.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    CUDA_OK(cudaMalloc(&p, n > 0 ? n : 1));
    CUDA_OK(cudaMemsetAsync(p, 0xCD, n > 0 ? n : 1, g_stream));
  }
  ~DevBuf() {
    cudaStreamSynchronize(g_stream);  // nothing queued may still use it
    cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

// Copies on g_stream, after the poisoning and before the launches; the host
// waits for the stream, so `h` may go away (and is read) only once it is done.
template <typename V>
void upload(DevBuf& b, const std::vector<V>& h) {
  CUDA_OK(cudaMemcpyAsync(b.p, h.data(), h.size() * sizeof(V), cudaMemcpyHostToDevice, g_stream));
  CUDA_OK(cudaStreamSynchronize(g_stream));
}
template <typename V>
std::vector<V> download(const DevBuf& b, size_t count) {
  std::vector<V> h(count);
  CUDA_OK(cudaMemcpyAsync(h.data(), b.p, count * sizeof(V), cudaMemcpyDeviceToHost, g_stream));
  CUDA_OK(cudaStreamSynchronize(g_stream));
  return h;
}

// Values as stored for a dtype (rounded to bf16 / float) and the bytes to upload.
struct Typed {
  std::vector<double> values;       // exactly what the device sees, in double
  std::vector<unsigned char> bytes;
};

Typed make_typed(const std::vector<double>& src, DType dt) {
  Typed t;
  t.values.resize(src.size());
  if (dt == DType::kFloat64) {
    t.bytes.resize(src.size() * 8);
    std::memcpy(t.bytes.data(), src.data(), t.bytes.size());
    t.values = src;
  } else if (dt == DType::kFloat32) {
    std::vector<float> f(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      f[i] = static_cast<float>(src[i]);
      t.values[i] = f[i];
    }
    t.bytes.resize(f.size() * 4);
    std::memcpy(t.bytes.data(), f.data(), t.bytes.size());
  } else {
    std::vector<BFloat16> b(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      b[i] = patronus::from_float(static_cast<float>(src[i]));
      t.values[i] = patronus::to_float(b[i]);
    }
    t.bytes.resize(b.size() * 2);
    std::memcpy(t.bytes.data(), b.data(), t.bytes.size());
  }
  return t;
}

bool acc_double(DType dt) { return dt == DType::kFloat64; }

std::vector<double> download_acc(const DevBuf& b, size_t count, DType dt) {
  std::vector<double> out(count);
  if (acc_double(dt)) {
    out = download<double>(b, count);
  } else {
    std::vector<float> f = download<float>(b, count);
    for (size_t i = 0; i < count; ++i) out[i] = f[i];
  }
  return out;
}

std::vector<double> download_typed(const DevBuf& b, size_t count, DType dt) {
  if (dt != DType::kBFloat16) return download_acc(b, count, dt);
  std::vector<BFloat16> h = download<BFloat16>(b, count);
  std::vector<double> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = patronus::to_float(h[i]);
  return out;
}

std::vector<double> randn(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

const char* dtype_str(DType dt) { return patronus::dtype_name(dt); }

// ================================================================ token_topk
struct TopkCase {
  DType dtype;
  pc::TopkPrecision precision;
  int64_t n, t, d, v, w, k;
  bool word, negate, nan_row, ties;
};

std::string describe(const TopkCase& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "token_topk[%s/%d n=%lld t=%lld d=%lld v=%lld w=%lld k=%lld word=%d neg=%d nan=%d ties=%d]",
                dtype_str(c.dtype), static_cast<int>(c.precision), (long long)c.n, (long long)c.t, (long long)c.d,
                (long long)c.v, (long long)c.w, (long long)c.k, c.word, c.negate, c.nan_row, c.ties);
  return buf;
}

void run_topk(const TopkCase& c, std::mt19937_64& rng, cudaStream_t stream) {
  const std::string name = describe(c);
  const int64_t td = c.t * c.d;
  std::vector<double> q = randn(rng, c.n * td), tab = randn(rng, c.v * c.d);
  if (c.ties) {  // duplicate rows: equal scores
    for (int64_t r = 1; r < c.v; r += 3) std::copy(tab.begin() + (r - 1) * c.d, tab.begin() + r * c.d, tab.begin() + r * c.d);
  }
  if (c.nan_row && c.n > 1) q[(c.n / 2) * td + td / 3] = kNaN;
  std::vector<int64_t> rows;
  if (c.word) {
    std::uniform_int_distribution<int64_t> pick(0, c.v - 1);
    std::uniform_real_distribution<double> u(0, 1);
    rows.resize(c.w * c.t);
    for (int64_t i = 0; i < c.w; ++i)
      for (int64_t s = 0; s < c.t; ++s) rows[i * c.t + s] = (s > 0 && u(rng) < 0.3) ? -1 : pick(rng);
    for (int64_t s = 0; s < c.t; ++s) rows[(c.w - 1) * c.t + s] = -1;  // one all-padding word: score 0
  }
  const Typed tq = make_typed(q, c.dtype), tt = make_typed(tab, c.dtype);
  DevBuf dq(tq.bytes.size()), dt(tt.bytes.size()), drows(rows.size() * 8);
  upload(dq, tq.bytes);
  upload(dt, tt.bytes);
  if (c.word) upload(drows, rows);
  const size_t accs = acc_double(c.dtype) ? 8 : 4;
  DevBuf dv(c.n * c.k * accs), di(c.n * c.k * 8);
  const size_t ws_bytes = pc::token_topk_workspace_size(c.dtype, c.precision, c.n, c.t, c.d, c.v, c.w, c.k);
  DevBuf ws(ws_bytes);
  CUDA_OK(pc::token_topk(c.dtype, c.precision, dq.p, dt.p, c.word ? static_cast<const int64_t*>(drows.p) : nullptr,
                         c.n, c.t, c.d, c.v, c.w, c.k, c.negate, dv.p, static_cast<int64_t*>(di.p), ws.p, ws_bytes,
                         stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<double> vals = download_acc(dv, c.n * c.k, c.dtype);
  const std::vector<int64_t> idx = download<int64_t>(di, c.n * c.k);

  // Reference scores in double on the values the device saw.
  const bool tf32 = c.dtype == DType::kFloat32 && c.precision == pc::TopkPrecision::kTF32;
  const bool bf16_from_f32 = c.dtype == DType::kFloat32 && c.precision == pc::TopkPrecision::kBF16;
  std::vector<double> qv = tq.values, tv = tt.values;
  if (bf16_from_f32) {  // the kernel rounds float32 operands to bf16 while loading
    qv = make_typed(qv, DType::kBFloat16).values;
    tv = make_typed(tv, DType::kBFloat16).values;
  }
  const double rtol = c.dtype == DType::kFloat64 ? 1e-12 : (tf32 ? 3e-3 : 2e-5);
  int bad = 0;
  for (int64_t r = 0; r < c.n; ++r) {
    std::vector<double> score(c.w);
    double qn = 0, kmax = 0;
    for (int64_t e = 0; e < td; ++e) qn += qv[r * td + e] * qv[r * td + e];
    for (int64_t w = 0; w < c.w; ++w) {
      const patronus::test::TopkScore s =
          patronus::test::topk_score(qv.data() + r * td, tv.data(), c.word ? rows.data() : nullptr, c.t, c.d, w);
      score[w] = c.negate ? -s.score : s.score;
      kmax = std::max(kmax, s.key_sq);
    }
    const double tol = rtol * std::sqrt(qn * kmax) + 1e-30;
    std::vector<double> sorted;
    for (double s : score)
      if (!std::isnan(s)) sorted.push_back(s);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    std::vector<int64_t> seen;
    for (int64_t j = 0; j < c.k; ++j) {
      const double v = vals[r * c.k + j];
      const int64_t i = idx[r * c.k + j];
      bool ok = true;
      if (j < static_cast<int64_t>(sorted.size())) {
        ok &= i >= 0 && i < c.w && std::fabs(v - sorted[j]) <= tol;
        if (i >= 0 && i < c.w) ok &= std::fabs(v - score[i]) <= tol;
        ok &= std::find(seen.begin(), seen.end(), i) == seen.end();
        seen.push_back(i);
      } else {
        ok &= i == -1 && v == -kInf;
      }
      if (j > 0) ok &= !(v > vals[r * c.k + j - 1]);
      if (!ok && bad++ < 3) {
        std::fprintf(stderr, "  %s row %lld slot %lld: got (%.9g, %lld) want %.9g (score[idx] %.9g) tol %.3g\n",
                     name.c_str(), (long long)r, (long long)j, v, (long long)i,
                     j < static_cast<int64_t>(sorted.size()) ? sorted[j] : -kInf,
                     (i >= 0 && i < c.w) ? score[i] : kNaN, tol);
      }
    }
  }
  expect(bad == 0, name);
}

void test_topk(std::mt19937_64& rng, int level, cudaStream_t stream) {
  const DType f32 = DType::kFloat32, f64 = DType::kFloat64, bf16 = DType::kBFloat16;
  const pc::TopkPrecision ex = pc::TopkPrecision::kExact, tf = pc::TopkPrecision::kTF32,
                          bf = pc::TopkPrecision::kBF16;
  std::vector<TopkCase> cases = {
      // dtype precision n t d v w k word negate nan ties
      {f32, ex, 5, 1, 64, 300, 300, 1, false, true, false, false},
      {f32, ex, 130, 1, 96, 1000, 1000, 10, false, true, true, false},
      {f32, tf, 130, 1, 96, 1000, 1000, 10, false, false, true, false},
      {f32, bf, 37, 1, 72, 777, 777, 5, false, true, false, false},
      {bf16, ex, 37, 1, 72, 777, 777, 5, false, true, true, false},
      {f64, ex, 70, 1, 40, 500, 500, 7, false, true, true, false},
      {f32, ex, 3, 1, 33, 200, 200, 200, false, true, false, false},    // k = W, odd d (generic loads)
      {f32, tf, 3, 1, 33, 200, 200, 200, false, true, false, false},
      {bf16, bf, 3, 1, 36, 200, 200, 200, false, true, false, false},  // d % 8 != 0
      {f32, ex, 9, 1, 48, 5000, 5000, 256, false, true, false, false},  // k = 256, several slices
      {f32, tf, 9, 1, 48, 5000, 5000, 256, false, true, false, true},
      {bf16, bf, 9, 1, 64, 5000, 5000, 256, false, false, false, true},
      {f64, ex, 9, 1, 24, 3000, 3000, 256, false, true, false, false},
      {f32, ex, 6, 3, 32, 400, 350, 12, true, true, false, false},      // word level with padding
      {f32, tf, 6, 3, 32, 400, 350, 12, true, true, false, false},
      {bf16, bf, 6, 3, 32, 400, 350, 12, true, true, false, false},
      {f32, bf, 6, 2, 24, 400, 350, 12, true, true, false, false},
      {f64, ex, 6, 2, 20, 400, 350, 12, true, true, false, false},
      {f32, ex, 6, 3, 30, 400, 350, 12, true, true, false, false},      // word level, generic loads
      {f32, ex, 300, 1, 128, 2000, 2000, 100, false, true, false, false},
      {f32, tf, 300, 1, 128, 2000, 2000, 100, false, true, false, false},
  };
  if (level == 1) cases = {cases[1], cases[2], cases[4], cases[5], cases[9], cases[13], cases[18]};
  if (level == 2) {
    cases = {cases[1], cases[2], cases[4], cases[5], cases[13], cases[18]};
    for (auto& c : cases) c.n = std::min<int64_t>(c.n, 40);
  }
  for (const auto& c : cases) run_topk(c, rng, stream);
}

// Real -inf scores against the merge's padding.  Scores are exact in every
// precision: queries all ones, table entries small integers, and column 0 of a
// candidate's row decides its class: finite (an integer), -inf (a real score
// that must be reported with its index) or NaN (never selected).  A slice of
// the candidate axis with fewer than k non-NaN scores pads its partial list
// with (-inf, -1); the merge must rank that padding after every real -inf of
// the other slices, so with at least k non-NaN scores no slot may be (-inf, -1).
// Pattern 0: every score -inf (k = W at w = 200, several slices at w = 5000);
// pattern 1: a few finite, some -inf, the rest NaN.
void run_topk_inf(DType dt, pc::TopkPrecision prec, int64_t n, int64_t d, int64_t w, int64_t k, int pattern,
                  cudaStream_t stream) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "token_topk_inf[%s/%d n=%lld d=%lld w=%lld k=%lld pattern=%d]", dtype_str(dt),
                static_cast<int>(prec), (long long)n, (long long)d, (long long)w, (long long)k, pattern);
  const std::string name = buf;
  std::vector<double> q(n * d, 1.0), tab(w * d);
  std::vector<double> score(w);
  for (int64_t i = 0; i < w; ++i) {
    double s = 0;
    for (int64_t e = 0; e < d; ++e) {
      tab[i * d + e] = static_cast<double>(static_cast<int>((i * 7 + e * 3) % 9) - 4);
      s += tab[i * d + e];
    }
    int cls = 1;  // 0 finite, 1 -inf, 2 NaN
    if (pattern == 1) cls = i % 97 == 5 ? 0 : (i % 16 == 3 ? 1 : 2);
    if (cls == 1) tab[i * d] = -kInf;
    if (cls == 2) tab[i * d] = kNaN;
    score[i] = cls == 0 ? s : (cls == 1 ? -kInf : kNaN);
  }
  const Typed tq = make_typed(q, dt), tt = make_typed(tab, dt);
  DevBuf dq(tq.bytes.size()), dtab(tt.bytes.size());
  upload(dq, tq.bytes);
  upload(dtab, tt.bytes);
  const size_t accs = acc_double(dt) ? 8 : 4;
  DevBuf dv(n * k * accs), di(n * k * 8);
  const size_t ws_bytes = pc::token_topk_workspace_size(dt, prec, n, 1, d, w, w, k);
  DevBuf ws(ws_bytes);
  CUDA_OK(pc::token_topk(dt, prec, dq.p, dtab.p, nullptr, n, 1, d, w, w, k, false, dv.p, static_cast<int64_t*>(di.p),
                         ws.p, ws_bytes, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<double> vals = download_acc(dv, n * k, dt);
  const std::vector<int64_t> idx = download<int64_t>(di, n * k);
  std::vector<double> sorted;
  for (double s : score)
    if (!std::isnan(s)) sorted.push_back(s);
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  int bad = 0;
  for (int64_t r = 0; r < n; ++r) {
    std::vector<char> seen(w, 0);
    for (int64_t j = 0; j < k; ++j) {
      const double v = vals[r * k + j];
      const int64_t i = idx[r * k + j];
      bool ok;
      if (j < static_cast<int64_t>(sorted.size())) {
        ok = i >= 0 && i < w && !seen[i] && v == sorted[j] && score[i] == v;
        if (i >= 0 && i < w) seen[i] = 1;
      } else {
        ok = i == -1 && v == -kInf;
      }
      if (!ok && bad++ < 3)
        std::fprintf(stderr, "  %s row %lld slot %lld: got (%g, %lld) want %g\n", name.c_str(), (long long)r,
                     (long long)j, v, (long long)i, j < static_cast<int64_t>(sorted.size()) ? sorted[j] : -kInf);
    }
  }
  expect(bad == 0, name);
}

void test_topk_inf(int level, cudaStream_t stream) {
  const DType f32 = DType::kFloat32, f64 = DType::kFloat64, bf16 = DType::kBFloat16;
  const pc::TopkPrecision ex = pc::TopkPrecision::kExact, tf = pc::TopkPrecision::kTF32,
                          bf = pc::TopkPrecision::kBF16;
  struct P {
    DType dt;
    pc::TopkPrecision prec;
  };
  const P paths[] = {{f32, ex}, {f32, tf}, {f32, bf}, {bf16, bf}, {f64, ex}};
  for (const P& p : paths) {
    run_topk_inf(p.dt, p.prec, 3, 16, 200, 200, 0, stream);   // all -inf, k = W
    run_topk_inf(p.dt, p.prec, 5, 16, 5000, 256, 1, stream);  // -inf and NaN over several slices
    if (level > 0) continue;
    run_topk_inf(p.dt, p.prec, 5, 16, 5000, 256, 0, stream);  // all -inf over several slices
    run_topk_inf(p.dt, p.prec, 70, 24, 3000, 100, 1, stream);
  }
}

// ================================================================ supcon
struct SupconRef {
  std::vector<double> loss, lse, grad;
};

SupconRef supcon_ref(const std::vector<double>& f, const std::vector<int64_t>& y, int64_t C, int64_t N, int64_t D,
                     double tau, bool scale, const std::vector<double>& gl) {
  SupconRef out;
  out.loss.assign(C, 0);
  out.lse.assign(C * N, 0);
  out.grad.assign(C * N * D, 0);
  for (int64_t c = 0; c < C; ++c) {
    std::vector<double> z(N * D), norm(N);
    for (int64_t i = 0; i < N; ++i) {
      double ss = 0;
      for (int64_t e = 0; e < D; ++e) ss += f[(c * N + i) * D + e] * f[(c * N + i) * D + e];
      norm[i] = std::sqrt(ss);
      for (int64_t e = 0; e < D; ++e) z[i * D + e] = f[(c * N + i) * D + e] / std::max(norm[i], 1e-12);
    }
    std::vector<double> lam(N * N);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t e = 0; e < D; ++e) s += z[i * D + e] * z[j * D + e];
        lam[i * N + j] = s / tau;
      }
    std::vector<double> lse(N), cnt(N);
    int used = 0;
    double total = 0;
    for (int64_t i = 0; i < N; ++i) {
      double m = -kInf;
      for (int64_t j = 0; j < N; ++j)
        if (j != i) m = std::max(m, lam[i * N + j]);
      double s = 0, ps = 0;
      int pc = 0;
      for (int64_t j = 0; j < N; ++j) {
        if (j == i) continue;
        s += std::exp(lam[i * N + j] - m);
        if (y[c * N + j] == y[c * N + i]) {
          ps += lam[i * N + j];
          ++pc;
        }
      }
      lse[i] = m == -kInf ? -kInf : m + std::log(s);
      out.lse[c * N + i] = lse[i];
      cnt[i] = pc;
      if (pc > 0) {
        total += lse[i] - ps / pc;
        ++used;
      }
    }
    const double factor = scale ? tau : 1.0;
    out.loss[c] = used > 0 ? factor * total / used : 0.0;
    // Backward.
    std::vector<double> G(N * N, 0.0);
    for (int64_t i = 0; i < N; ++i) {
      if (cnt[i] == 0) continue;
      const double coef = gl[c] * factor / used;
      for (int64_t j = 0; j < N; ++j) {
        if (j == i) continue;
        const double pos = y[c * N + j] == y[c * N + i] ? 1.0 / cnt[i] : 0.0;
        G[i * N + j] = coef * (std::exp(lam[i * N + j] - lse[i]) - pos);
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> dz(D, 0.0);
      for (int64_t j = 0; j < N; ++j) {
        const double h = (G[i * N + j] + G[j * N + i]) / tau;
        for (int64_t e = 0; e < D; ++e) dz[e] += h * z[j * D + e];
      }
      double dot = 0;
      for (int64_t e = 0; e < D; ++e) dot += z[i * D + e] * dz[e];
      for (int64_t e = 0; e < D; ++e) {
        out.grad[(c * N + i) * D + e] =
            norm[i] > 1e-12 ? (dz[e] - z[i * D + e] * dot) / norm[i] : dz[e] / 1e-12;
      }
    }
  }
  return out;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

void run_supcon(DType dt, int64_t C, int64_t N, int64_t D, int classes, double tau, bool scale, bool nan_problem,
                std::mt19937_64& rng, cudaStream_t stream) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "supcon[%s C=%lld N=%lld d=%lld classes=%d tau=%g scale=%d nan=%d]", dtype_str(dt),
                (long long)C, (long long)N, (long long)D, classes, tau, scale, nan_problem);
  const std::string name = buf;
  std::vector<double> f = randn(rng, C * N * D);
  std::uniform_int_distribution<int> lab(0, classes - 1);
  std::vector<int64_t> y(C * N);
  for (auto& v : y) v = lab(rng) * 7 - 3;  // arbitrary label values
  if (C > 1) {  // a problem without positives: loss 0
    for (int64_t i = 0; i < N; ++i) y[(C - 1) * N + i] = 1000 + i;
  }
  if (nan_problem) f[0 * N * D + 3] = kNaN;  // problem 0 is NaN
  std::vector<double> gl = randn(rng, C);
  const Typed tf = make_typed(f, dt);
  Typed tg = make_typed(gl, acc_double(dt) ? DType::kFloat64 : DType::kFloat32);
  SupconRef ref = supcon_ref(tf.values, y, C, N, D, tau, scale, tg.values);

  const size_t accs = acc_double(dt) ? 8 : 4;
  DevBuf df(tf.bytes.size()), dy(y.size() * 8), dloss(C * accs), dlse(C * N * accs), dgl(C * accs),
      dgrad(tf.bytes.size());
  upload(df, tf.bytes);
  upload(dy, y);
  upload(dgl, tg.bytes);
  const size_t wf = pc::supcon_forward_workspace_size(dt, C, N, D);
  const size_t wb = pc::supcon_backward_workspace_size(dt, C, N, D);
  DevBuf wsf(wf), wsb(wb);
  CUDA_OK(pc::supcon_forward(dt, df.p, static_cast<const int64_t*>(dy.p), C, N, D, tau, scale, dloss.p, dlse.p, wsf.p,
                             wf, stream));
  CUDA_OK(pc::supcon_backward(dt, dgl.p, df.p, static_cast<const int64_t*>(dy.p), dlse.p, C, N, D, tau, scale, dgrad.p,
                              wsb.p, wb, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<double> loss = download_acc(dloss, C, dt), lse = download_acc(dlse, C * N, dt);
  const std::vector<double> grad = download_typed(dgrad, C * N * D, dt);

  const double rl = dt == DType::kFloat64 ? 1e-10 : 2e-5;
  const double rg = dt == DType::kFloat64 ? 1e-9 : (dt == DType::kBFloat16 ? 2e-2 : 2e-4);
  bool ok = true;
  for (int64_t c = 0; c < C; ++c) {
    if (nan_problem && c == 0) {
      ok &= std::isnan(loss[c]);
      continue;
    }
    ok &= std::fabs(loss[c] - ref.loss[c]) <= rl * std::max(1.0, std::fabs(ref.loss[c]));
    for (int64_t i = 0; i < N; ++i) {
      const double a = lse[c * N + i], b = ref.lse[c * N + i];
      ok &= a == b || std::fabs(a - b) <= rl * std::max(1.0, std::fabs(b));
    }
    std::vector<double> gref(ref.grad.begin() + c * N * D, ref.grad.begin() + (c + 1) * N * D);
    const double gs = std::max(max_abs(gref), 1e-30);
    for (int64_t e = 0; e < N * D; ++e) {
      const double g = grad[c * N * D + e];
      if (!(std::fabs(g - gref[e]) <= rg * gs)) {
        if (ok) std::fprintf(stderr, "  %s grad[%lld,%lld]: got %.9g want %.9g (scale %.3g)\n", name.c_str(),
                             (long long)c, (long long)e, g, gref[e], gs);
        ok = false;
        break;
      }
    }
    if (!ok) {
      std::fprintf(stderr, "  %s problem %lld: loss %.9g want %.9g\n", name.c_str(), (long long)c, loss[c],
                   ref.loss[c]);
      break;
    }
  }
  expect(ok, name);
}

void test_supcon(std::mt19937_64& rng, int level, cudaStream_t stream) {
  const DType f32 = DType::kFloat32, f64 = DType::kFloat64, bf16 = DType::kBFloat16;
  run_supcon(f32, 3, 37, 40, 3, 0.5, true, false, rng, stream);
  if (level < 2) run_supcon(f32, 3, 70, 300, 4, 0.1, false, true, rng, stream);  // U = 2, 3 row blocks, NaN problem
  run_supcon(bf16, 3, 37, 64, 3, 0.5, true, false, rng, stream);
  run_supcon(f64, 3, 21, 10, 3, 0.5, true, true, rng, stream);
  if (level == 2) run_supcon(f32, 2, 33, 800, 3, 0.5, true, false, rng, stream);  // column chunks + finalize
  if (level > 0) return;
  run_supcon(f32, 2, 33, 800, 3, 0.5, true, false, rng, stream);     // d > 768: column chunks + finalize
  run_supcon(f32, 4, 144, 384, 6, 0.5, true, false, rng, stream);
  run_supcon(bf16, 2, 50, 37, 5, 0.2, true, false, rng, stream);     // odd d: generic loads
  run_supcon(f32, 1, 1, 8, 1, 0.5, true, false, rng, stream);        // single row: no positives
  run_supcon(bf16, 2, 40, 520, 4, 0.5, true, false, rng, stream);    // U = 3
  run_supcon(f64, 2, 40, 33, 4, 0.3, false, false, rng, stream);
}

// ================================================================ bank_similarity
void run_bank(DType dt, int64_t M, int64_t K, int64_t D, pc::BankMode mode, std::mt19937_64& rng, cudaStream_t stream) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "bank_similarity[%s M=%lld K=%lld d=%lld %s]", dtype_str(dt), (long long)M,
                (long long)K, (long long)D, mode == pc::BankMode::kSign ? "sign" : "cosine");
  const std::string name = buf;
  std::vector<double> x = randn(rng, M * D), bank = randn(rng, K * D);
  if (K > 3) std::copy(bank.begin(), bank.begin() + D, bank.begin() + 3 * D);       // tie: rows 0 and 3
  if (M > 2) std::copy(bank.begin(), bank.begin() + D, x.begin() + 1 * D);          // x[1] == bank[0] == bank[3]
  if (M > 2) x[2 * D + 1] = kNaN;                                                    // all-NaN row
  if (K > 4) bank[4 * D] = kNaN;                                                     // a NaN bank vector
  for (int64_t e = 0; e < D; e += 5) x[e] = 0.0;                                     // zeros (sign 0)
  const Typed tx = make_typed(x, dt), tb = make_typed(bank, dt);
  DevBuf dx(tx.bytes.size()), db(tb.bytes.size()), dbest(M * (acc_double(dt) ? 8 : 4)), didx(M * 8);
  upload(dx, tx.bytes);
  upload(db, tb.bytes);
  CUDA_OK(pc::bank_similarity(dt, dx.p, db.p, M, K, D, mode, dbest.p, static_cast<int64_t*>(didx.p), stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<double> best = download_acc(dbest, M, dt);
  const std::vector<int64_t> idx = download<int64_t>(didx, M);
  const double tol = dt == DType::kFloat64 ? 1e-12 : 2e-6;
  bool ok = true;
  for (int64_t r = 0; r < M && ok; ++r) {
    std::vector<double> sim(K);
    for (int64_t k = 0; k < K; ++k) {
      if (mode == pc::BankMode::kCosine) {
        double dot = 0, xx = 0, bb = 0;
        for (int64_t e = 0; e < D; ++e) {
          const double a = tx.values[r * D + e], b = tb.values[k * D + e];
          dot += a * b;
          xx += a * a;
          bb += b * b;
        }
        sim[k] = dot / (std::max(std::sqrt(xx), 1e-8) * std::max(std::sqrt(bb), 1e-8));
      } else {
        int agree = 0;
        bool nan = false;
        for (int64_t e = 0; e < D; ++e) {
          const double a = tx.values[r * D + e], b = tb.values[k * D + e];
          nan |= std::isnan(a) || std::isnan(b);
          agree += ((a > 0) - (a < 0)) == ((b > 0) - (b < 0));
        }
        sim[k] = nan ? kNaN : static_cast<double>(agree) / D;
      }
    }
    double b = kNaN;
    int64_t at = -1;
    for (int64_t k = 0; k < K; ++k) {
      if (std::isnan(sim[k])) continue;
      if (at < 0 || sim[k] > b) {
        b = sim[k];
        at = k;
      }
    }
    if (at < 0) {
      ok &= std::isnan(best[r]) && idx[r] == -1;
    } else {
      // Exact ties go to the lowest index; near-ties (rounding) may pick either.
      ok &= idx[r] >= 0 && idx[r] < K && std::fabs(best[r] - b) <= tol && std::fabs(sim[idx[r]] - b) <= tol;
      if (r == 1 && K > 3) ok &= idx[r] != 3;  // exact tie of rows 0 and 3
    }
    if (!ok)
      std::fprintf(stderr, "  %s row %lld: got (%.9g, %lld) want (%.9g, %lld)\n", name.c_str(), (long long)r, best[r],
                   (long long)idx[r], b, (long long)at);
  }
  expect(ok, name);
}

void test_bank(std::mt19937_64& rng, int level, cudaStream_t stream) {
  for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kFloat64})
    for (pc::BankMode mode : {pc::BankMode::kCosine, pc::BankMode::kSign}) {
      run_bank(dt, 1, 64, 768, mode, rng, stream);
      run_bank(dt, 7, 6, 768, mode, rng, stream);
      if (level == 2 && dt == DType::kFloat32) run_bank(dt, 70, 9, 100, mode, rng, stream);
      if (level > 0) continue;
      run_bank(dt, 70, 64, 768, mode, rng, stream);
      run_bank(dt, 5, 9, 33, mode, rng, stream);   // odd d: scalar loads
    }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string arg = argc > 1 ? argv[1] : "";
  const int level = arg == "--quick" ? 1 : (arg == "--tiny" ? 2 : 0);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("test_cuda_kernels: no CUDA device (%s); skipping\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 77;
  }
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("test_cuda_kernels on %s (sm_%d%d), runtime %d%s\n", prop.name, prop.major, prop.minor,
              pc::runtime_version(), level == 1 ? ", quick" : (level == 2 ? ", tiny" : ""));
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  g_stream = stream;  // DevBuf poisoning, uploads and downloads run on the kernels' stream
  std::mt19937_64 rng(20240611);
  test_bank(rng, level, stream);
  test_supcon(rng, level, stream);
  test_topk(rng, level, stream);
  test_topk_inf(level, stream);
  CUDA_OK(cudaStreamSynchronize(stream));
  g_stream = nullptr;
  CUDA_OK(cudaStreamDestroy(stream));
  CUDA_OK(cudaDeviceSynchronize());
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
