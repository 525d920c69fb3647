// token_topk launcher: picks the kernel for (dtype, precision), plans the
// split of the candidate axis and merges the per-slice lists.
//
// Plan: row blocks of 128 queries (64 for float64) x S slices of the candidate
// axis.  S is the smallest count whose grid fills the GPU about as well as any
// (waves per unit of work within 5% of the best), capped so that every slice
// has >= 4 candidate tiles and the scratch (S partial lists of k entries per
// query) plus the outputs stay under 4.5% of the n x w score matrix the unfused
// way would write (the scratch may always take 8 MiB).  Then ceil(log2 S)
// in-place merge rounds (merge path of sorted lists, one CTA per (query, pair));
// the last writes values/indices.
#include <algorithm>
#include <cstdint>

#include "patronus/cuda_kernels.h"
#include "token_topk_kernels.cuh"

namespace patronus {
namespace cuda {
namespace {

enum Path {
  kPathTF32 = 0,
  kPathBF16 = 1,
  kPathBF16FromF32 = 2,
  kPathExactF32 = 3,
  kPathExactF32Small = 4,
  kPathExactF64 = 5
};

constexpr int64_t kSmallN = 64;  // exact fp32 with at most this many queries: 32-row tiles

struct Plan {
  Path path;
  int tile_m, tile_n;  // query rows per CTA, candidates per tile
  int row_blocks, num_tiles, splits, tiles_per_split;
  size_t acc_size;
  size_t bytes;  // scratch: splits lists of k keys, then splits lists of k indices
};

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
  return sms > 0 ? sms : 1;
}

Path path_of(DType dtype, TopkPrecision precision, int64_t n) {
  if (dtype == DType::kFloat64) return kPathExactF64;
  if (dtype == DType::kBFloat16) return kPathBF16;
  if (precision == TopkPrecision::kTF32) return kPathTF32;
  if (precision == TopkPrecision::kBF16) return kPathBF16FromF32;
  return n <= kSmallN ? kPathExactF32Small : kPathExactF32;
}

Plan make_plan(DType dtype, TopkPrecision precision, int64_t n, int64_t w, int64_t k) {
  Plan pl{};
  pl.path = path_of(dtype, precision, n);
  switch (pl.path) {
    case kPathExactF64: pl.tile_m = topk::SimtF64::BM; pl.tile_n = topk::SimtF64::BN; break;
    case kPathExactF32: pl.tile_m = topk::SimtF32::BM; pl.tile_n = topk::SimtF32::BN; break;
    case kPathExactF32Small: pl.tile_m = topk::SimtF32Small::BM; pl.tile_n = topk::SimtF32Small::BN; break;
    default: pl.tile_m = pl.tile_n = topk::kMmaTile; break;
  }
  pl.acc_size = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  pl.row_blocks = static_cast<int>((n + pl.tile_m - 1) / pl.tile_m);
  pl.num_tiles = static_cast<int>((w + pl.tile_n - 1) / pl.tile_n);

  const int64_t sms = sm_count();
  const int64_t per_list = n * k * static_cast<int64_t>(pl.acc_size + sizeof(int));
  const int64_t naive = n * w * static_cast<int64_t>(pl.acc_size);
  const int64_t outputs = n * k * static_cast<int64_t>(pl.acc_size + sizeof(int64_t));
  const int64_t budget = std::max<int64_t>(int64_t(8) << 20, naive * 45 / 1000 - outputs);
  int64_t smax = std::min<int64_t>(std::max<int64_t>(1, pl.num_tiles / 4), std::max<int64_t>(1, budget / per_list));
  smax = std::min<int64_t>(smax, std::max<int64_t>(1, 8 * sms / pl.row_blocks));
  smax = std::min<int64_t>(smax, 65535);
  auto cost = [&](int64_t s) {  // waves per unit of work
    return static_cast<double>((pl.row_blocks * s + sms - 1) / sms) / static_cast<double>(s);
  };
  double best = 1e30;
  for (int64_t s = 1; s <= smax; ++s) best = std::min(best, cost(s));
  int64_t splits = 1;
  for (int64_t s = 1; s <= smax; ++s) {
    if (cost(s) <= best * 1.05) {
      splits = s;
      break;
    }
  }
  pl.tiles_per_split = static_cast<int>((pl.num_tiles + splits - 1) / splits);
  pl.splits = (pl.num_tiles + pl.tiles_per_split - 1) / pl.tiles_per_split;
  const size_t entries = static_cast<size_t>(pl.splits) * static_cast<size_t>(n) * static_cast<size_t>(k);
  pl.bytes = align_up(entries * pl.acc_size) + align_up(entries * sizeof(int));
  return pl;
}

template <typename In, typename A>
topk::Args<In, A> make_args(const void* queries, const void* table, const int64_t* rows, int64_t n, int64_t t,
                            int64_t d, int64_t w, int64_t k, bool negate, const Plan& pl, int vec_elems,
                            void* part_key, int* part_idx) {
  topk::Args<In, A> a{};
  a.q = static_cast<const In*>(queries);
  a.table = static_cast<const In*>(table);
  a.rows = rows;
  a.n = static_cast<int>(n);
  a.t = static_cast<int>(t);
  a.d = static_cast<int>(d);
  a.td = static_cast<int>(t * d);
  a.w = static_cast<int>(w);
  a.k = static_cast<int>(k);
  a.num_tiles = pl.num_tiles;
  a.tiles_per_split = pl.tiles_per_split;
  a.negate = negate ? 1 : 0;
  a.vec = (d % vec_elems == 0) && dev::aligned16(queries) && dev::aligned16(table) ? 1 : 0;
  a.part_key = static_cast<A*>(part_key);
  a.part_idx = part_idx;
  return a;
}

template <typename A>
cudaError_t merge_lists(const Plan& pl, int64_t n, int64_t k, unsigned char* ws, void* values, int64_t* indices,
                        cudaStream_t stream) {
  const size_t entries = static_cast<size_t>(pl.splits) * static_cast<size_t>(n) * static_cast<size_t>(k);
  A* key = reinterpret_cast<A*>(ws);
  int* idx = reinterpret_cast<int*>(ws + align_up(entries * sizeof(A)));
  const size_t smem = 2 * static_cast<size_t>(k) * (sizeof(A) + sizeof(int));
  for (int stride = 1;; stride *= 2) {
    const bool last = 2 * static_cast<int64_t>(stride) >= pl.splits;
    const unsigned pairs = static_cast<unsigned>((pl.splits + 2 * stride - 1) / (2 * stride));
    topk::merge_round<A><<<dim3(static_cast<unsigned>(n), pairs), 128, smem, stream>>>(
        key, idx, pl.splits, stride, static_cast<int>(n), static_cast<int>(k), last ? static_cast<A*>(values) : nullptr,
        last ? indices : nullptr);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || last) return err;
  }
}

}  // namespace

size_t token_topk_workspace_size(DType dtype, TopkPrecision precision, int64_t n, int64_t t, int64_t d, int64_t v,
                                 int64_t w, int64_t k) {
  (void)t;
  (void)d;
  (void)v;
  if (n < 1 || w < 1 || k < 1 || k > kTopkMaxK || k > w) return 0;
  return make_plan(dtype, precision, n, w, k).bytes;
}

cudaError_t token_topk(DType dtype, TopkPrecision precision, const void* queries, const void* table,
                       const int64_t* rows, int64_t n, int64_t t, int64_t d, int64_t v, int64_t w, int64_t k,
                       bool negate, void* values, int64_t* indices, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream) {
  if (n < 1 || t < 1 || d < 1 || v < 1 || w < 1 || k < 1 || k > w || k > kTopkMaxK) return cudaErrorInvalidValue;
  if (rows == nullptr && (t != 1 || w != v)) return cudaErrorInvalidValue;
  if (n > INT32_MAX || w > INT32_MAX || t * d > INT32_MAX) return cudaErrorInvalidValue;
  const Plan pl = make_plan(dtype, precision, n, w, k);
  if (workspace == nullptr || workspace_bytes < pl.bytes) return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  const size_t entries = static_cast<size_t>(pl.splits) * static_cast<size_t>(n) * static_cast<size_t>(k);
  void* part_key = ws;
  int* part_idx = reinterpret_cast<int*>(ws + align_up(entries * pl.acc_size));

  cudaError_t err = cudaSuccess;
  switch (pl.path) {
    case kPathTF32:
      err = topk::launch_tf32(make_args<float, float>(queries, table, rows, n, t, d, w, k, negate, pl, 4, part_key,
                                                      part_idx),
                              pl.row_blocks, pl.splits, stream);
      break;
    case kPathBF16:
      err = topk::launch_bf16(make_args<__nv_bfloat16, float>(queries, table, rows, n, t, d, w, k, negate, pl, 8,
                                                              part_key, part_idx),
                              pl.row_blocks, pl.splits, stream);
      break;
    case kPathBF16FromF32:
      err = topk::launch_bf16_from_f32(make_args<float, float>(queries, table, rows, n, t, d, w, k, negate, pl, 8,
                                                               part_key, part_idx),
                                       pl.row_blocks, pl.splits, stream);
      break;
    case kPathExactF32:
      err = topk::launch_exact_f32(make_args<float, float>(queries, table, rows, n, t, d, w, k, negate, pl, 4,
                                                           part_key, part_idx),
                                   pl.row_blocks, pl.splits, stream);
      break;
    case kPathExactF32Small:
      err = topk::launch_exact_f32_small(make_args<float, float>(queries, table, rows, n, t, d, w, k, negate, pl, 4,
                                                                 part_key, part_idx),
                                         pl.row_blocks, pl.splits, stream);
      break;
    case kPathExactF64:
      err = topk::launch_exact_f64(make_args<double, double>(queries, table, rows, n, t, d, w, k, negate, pl, 2,
                                                             part_key, part_idx),
                                   pl.row_blocks, pl.splits, stream);
      break;
  }
  if (err != cudaSuccess) return err;
  if (dtype == DType::kFloat64) return merge_lists<double>(pl, n, k, ws, values, indices, stream);
  return merge_lists<float>(pl, n, k, ws, values, indices, stream);
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return CUDART_VERSION;
  return v;
}

}  // namespace cuda
}  // namespace patronus
