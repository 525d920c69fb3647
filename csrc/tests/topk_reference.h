// The token_topk reference score, shared by the CPU and the CUDA kernel tests
// so both hold the kernels to the same oracle.  Plain C++ (no CUDA, no torch).
#pragma once

#include <cmath>
#include <cstdint>

namespace patronus {
namespace test {

struct TopkScore {
  double score;      // sum over the candidate's tokens of <query slice, key row>
  double abs_terms;  // sum of |products|: the scale of the rounding error
  double key_sq;     // squared norm of the candidate's (gathered) key
};

// Candidate w against the query row q (t * d values), in double.  The key of w
// is table rows rows[w * t + s], s < t (-1: padding, skipped), or row w itself
// when rows is null.
inline TopkScore topk_score(const double* q, const double* table, const int64_t* rows, int64_t t, int64_t d,
                            int64_t w) {
  TopkScore r{0, 0, 0};
  for (int64_t s = 0; s < t; ++s) {
    const int64_t row = rows != nullptr ? rows[w * t + s] : w;
    if (row < 0) continue;
    for (int64_t e = 0; e < d; ++e) {
      const double key = table[row * d + e];
      const double p = q[s * d + e] * key;
      r.score += p;
      r.abs_terms += std::fabs(p);
      r.key_sq += key * key;
    }
  }
  return r;
}

}  // namespace test
}  // namespace patronus
