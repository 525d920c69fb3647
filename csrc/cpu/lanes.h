// Reductions written so that compilers vectorise them without -ffast-math.
//
// A loop `acc += x[i]` is a serial dependency chain the compiler may not reorder
// under IEEE rules, so it stays scalar; kLanes independent partial results (summed
// at the end) map onto SIMD registers instead, and NaN/inf keep their exact
// semantics.  Internal to the CPU kernels.
#pragma once

#include <cstdint>

namespace patronus {
namespace cpu {

constexpr int64_t kLanes = 16;

template <typename A>
inline A lane_total(const A (&lanes)[kLanes]) {
  A total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

template <typename A>
inline A dot(const A* x, const A* y, int64_t n) {
  A acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += x[i + l] * y[i + l];
  for (; i < n; ++i) acc[0] += x[i] * y[i];
  return lane_total(acc);
}

// How many of x[0..n) are strictly above t; NaN never is.
template <typename A>
inline int64_t count_above(const A* x, int64_t n, A t) {
  int32_t hits = 0;
  for (int64_t i = 0; i < n; ++i) hits += x[i] > t;
  return hits;
}

}  // namespace cpu
}  // namespace patronus
