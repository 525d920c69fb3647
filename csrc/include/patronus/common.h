// Shared, framework-free definitions for the patronus kernels (no torch headers).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace patronus {

// Bumped whenever an op schema or the build-info contract changes; the Python
// loader refuses a compiled module built for another value.
constexpr int kAbiVersion = 1;

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

// bfloat16 as its raw bits, so kernels need no framework type.
struct BFloat16 {
  uint16_t bits;
};

inline float to_float(BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round-to-nearest-even, NaN kept quiet.
inline BFloat16 from_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}

// Accumulation type: float64 stays float64, everything else accumulates in float32.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

template <typename A> inline A load_as(float v) { return static_cast<A>(v); }
template <typename A> inline A load_as(double v) { return static_cast<A>(v); }
template <typename A> inline A load_as(BFloat16 v) { return static_cast<A>(to_float(v)); }

template <typename T> inline T store_as(float v);
template <> inline float store_as<float>(float v) { return v; }
template <> inline BFloat16 store_as<BFloat16>(float v) { return from_float(v); }
template <typename T> inline T store_as(double v) { return static_cast<T>(v); }

// Branch-free exp for float that compilers vectorise (libm's expf does not
// vectorise without -ffast-math).  Max relative error ~2e-7 on [-87.3, 88.37];
// 0 below, +inf above (true exp overflows at 88.72), NaN propagates.
inline float fast_exp(float x) {
  const float lo = -87.3f, hi = 88.37f;
  float xc = x < lo ? lo : (x > hi ? hi : x);
  float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693145751953125f;  // ln2 split in two for accuracy
  r = r - n * 1.42860682030941723212e-6f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof scale);
  float y = p * scale;
  y = x < lo ? 0.0f : y;
  y = x > hi ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}
inline double fast_exp(double x) { return std::exp(x); }

// A kernel precondition violated by a direct caller (the torch glue and the
// Python face validate first, so users see their friendlier messages).
inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("patronus: " + what);
}

}  // namespace patronus
