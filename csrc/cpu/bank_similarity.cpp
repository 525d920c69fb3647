// bank_similarity on the CPU: best cosine (one GEMM per block of inputs against
// the normalised bank) or best sign agreement (bit masks and popcounts).
#include <algorithm>
#include <vector>

#include "patronus/cpu_kernels.h"

namespace patronus {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 64;
constexpr double kCosineEps = 1e-8;  // per-vector norm floor, as the reference

// Lowest index among the largest non-NaN values; NaN and -1 when all are NaN.
template <typename A>
inline void select_best(const A* sims, int64_t kbank, A* best, int64_t* index) {
  A b = std::numeric_limits<A>::quiet_NaN();
  int64_t at = -1;
  for (int64_t j = 0; j < kbank; ++j) {
    const A s = sims[j];
    if (s != s) continue;
    if (at < 0 || s > b) {
      b = s;
      at = j;
    }
  }
  *best = b;
  *index = at;
}

template <typename T, typename A>
void load_normalized(const T* src, int64_t d, A* dst) {
  A ss = 0;
  for (int64_t e = 0; e < d; ++e) {
    dst[e] = load_as<A>(src[e]);
    ss += dst[e] * dst[e];
  }
  const A inv = A(1) / std::max(std::sqrt(ss), A(kCosineEps));
  for (int64_t e = 0; e < d; ++e) dst[e] *= inv;
}

template <typename T, typename A = acc_t<T>>
void cosine(const Runtime& rt, const T* x, const T* bank, int64_t m, int64_t kbank, int64_t d,
            A* best, int64_t* index) {
  std::vector<A> bn(static_cast<size_t>(kbank * d));
  for (int64_t j = 0; j < kbank; ++j) load_normalized(bank + j * d, d, bn.data() + j * d);
  const int64_t blocks = (m + kRowBlock - 1) / kRowBlock;
  parallel_for(rt, 0, blocks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<A> xb(static_cast<size_t>(kRowBlock * d)), sims(static_cast<size_t>(kRowBlock * kbank));
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t r0 = b * kRowBlock, rows = std::min(kRowBlock, m - r0);
      for (int64_t r = 0; r < rows; ++r) load_normalized(x + (r0 + r) * d, d, xb.data() + r * d);
      gemm_of<A>(rt)(false, true, rows, kbank, d, A(1), xb.data(), d, bn.data(), d, A(0), sims.data(), kbank);
      for (int64_t r = 0; r < rows; ++r) select_best(sims.data() + r * kbank, kbank, best + r0 + r, index + r0 + r);
    }
  });
}

// Sign codes as bit masks: bit e of pos/neg set iff x[e] > 0 / < 0 (zero: neither).
template <typename T>
bool sign_masks(const T* src, int64_t d, uint64_t* pos, uint64_t* neg) {
  const int64_t words = (d + 63) / 64;
  std::fill(pos, pos + words, 0);
  std::fill(neg, neg + words, 0);
  bool has_nan = false;
  for (int64_t e = 0; e < d; ++e) {
    const auto v = load_as<acc_t<T>>(src[e]);
    has_nan |= v != v;
    pos[e >> 6] |= uint64_t(v > 0) << (e & 63);
    neg[e >> 6] |= uint64_t(v < 0) << (e & 63);
  }
  return has_nan;
}

template <typename T, typename A = acc_t<T>>
void sign_agreement(const Runtime& rt, const T* x, const T* bank, int64_t m, int64_t kbank, int64_t d,
                    A* best, int64_t* index) {
  const int64_t words = (d + 63) / 64;
  std::vector<uint64_t> bpos(static_cast<size_t>(kbank * words)), bneg(bpos.size());
  std::vector<unsigned char> bnan(static_cast<size_t>(kbank));
  for (int64_t j = 0; j < kbank; ++j)
    bnan[j] = sign_masks(bank + j * d, d, bpos.data() + j * words, bneg.data() + j * words);
  const uint64_t tail = (d & 63) ? ((uint64_t(1) << (d & 63)) - 1) : ~uint64_t(0);
  parallel_for(rt, 0, m, 64, [&](int64_t lo, int64_t hi) {
    std::vector<uint64_t> pos(static_cast<size_t>(words)), neg(static_cast<size_t>(words));
    std::vector<A> sims(static_cast<size_t>(kbank));
    for (int64_t r = lo; r < hi; ++r) {
      const bool xnan = sign_masks(x + r * d, d, pos.data(), neg.data());
      for (int64_t j = 0; j < kbank; ++j) {
        if (xnan || bnan[j]) {
          sims[j] = std::numeric_limits<A>::quiet_NaN();
          continue;
        }
        const uint64_t* bp = bpos.data() + j * words;
        const uint64_t* bq = bneg.data() + j * words;
        int64_t agree = 0;
        for (int64_t w = 0; w < words; ++w) {
          uint64_t same = ~(pos[w] ^ bp[w]) & ~(neg[w] ^ bq[w]);
          if (w == words - 1) same &= tail;
          agree += __builtin_popcountll(same);
        }
        sims[j] = static_cast<A>(agree) / static_cast<A>(d);
      }
      select_best(sims.data(), kbank, best + r, index + r);
    }
  });
}

template <typename T>
void dispatch(const Runtime& rt, const void* x, const void* bank, int64_t m, int64_t kbank, int64_t d,
              BankMode mode, void* best, int64_t* index) {
  auto* out = static_cast<acc_t<T>*>(best);
  if (mode == BankMode::kCosine)
    cosine<T>(rt, static_cast<const T*>(x), static_cast<const T*>(bank), m, kbank, d, out, index);
  else
    sign_agreement<T>(rt, static_cast<const T*>(x), static_cast<const T*>(bank), m, kbank, d, out, index);
}

}  // namespace

void bank_similarity(const Runtime& rt, DType dtype, const void* x, const void* bank, int64_t m,
                     int64_t kbank, int64_t d, BankMode mode, void* best, int64_t* index) {
  require(m >= 1 && kbank >= 1 && d >= 1, "bank_similarity: empty input");
  switch (dtype) {
    case DType::kFloat32: return dispatch<float>(rt, x, bank, m, kbank, d, mode, best, index);
    case DType::kFloat64: return dispatch<double>(rt, x, bank, m, kbank, d, mode, best, index);
    case DType::kBFloat16: return dispatch<BFloat16>(rt, x, bank, m, kbank, d, mode, best, index);
  }
  require(false, "bank_similarity: unsupported dtype");
}

}  // namespace cpu
}  // namespace patronus
