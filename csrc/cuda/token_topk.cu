// token_topk launcher: picks the kernel for (dtype, precision), plans the
// split of the candidate axis and merges the per-slice lists.
//
// Plan (patronus/topk_plan.h, host-only and unit-tested on the CPU): row
// blocks of tile_m queries x S slices of the candidate axis.  tile_m is 128 for
// the mma kernels and exact fp32 (64 for float64, 32 for exact fp32 with
// n <= 64), smaller (64 or 32 for mma, 32 for exact fp32) when the grid would
// otherwise leave SMs idle: at k = 256 the scratch budget often allows one
// slice, and N = 4096 in 128-row blocks is 32 CTAs on a 132-SM GPU.  S is the
// smallest count whose grid fills the GPU about as well as any, capped by the
// scratch budget (S partial lists of k entries per query, plus the outputs,
// under 4.5% of the n x w score matrix; 8 MiB always).  Then ceil(log2 S)
// in-place merge rounds (merge path of ordered lists, padding after real
// entries, one CTA per (query, pair)); the last writes values/indices.
#include <algorithm>
#include <cstdint>

#include "patronus/cuda_kernels.h"
#include "patronus/topk_plan.h"
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

struct Plan : topk_plan::Plan {
  Path path;
  size_t acc_size;
};

using topk_plan::align_up;

// The row tiles each kernel family has, largest first.
constexpr int kMmaRowTiles[] = {128, 64, 32};
constexpr int kExactF32RowTiles[] = {topk::SimtF32::BM, topk::SimtF32Small::BM};
constexpr int kExactF32SmallRowTiles[] = {topk::SimtF32Small::BM};
constexpr int kExactF64RowTiles[] = {topk::SimtF64::BM};
static_assert(kMmaRowTiles[0] == topk::kMmaTile, "mma row tiles");
static_assert(topk::SimtF32::BN == topk::SimtF32Small::BN, "one candidate tile for exact fp32");

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
  pl.acc_size = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  const int64_t sms = sm_count();
  topk_plan::Plan p;
  switch (pl.path) {
    case kPathExactF64:
      p = topk_plan::plan(n, w, k, pl.acc_size, kExactF64RowTiles, 1, topk::SimtF64::BN, sms);
      break;
    case kPathExactF32:
      p = topk_plan::plan(n, w, k, pl.acc_size, kExactF32RowTiles, 2, topk::SimtF32::BN, sms);
      if (p.tile_m == topk::SimtF32Small::BM) pl.path = kPathExactF32Small;
      break;
    case kPathExactF32Small:
      p = topk_plan::plan(n, w, k, pl.acc_size, kExactF32SmallRowTiles, 1, topk::SimtF32Small::BN, sms);
      break;
    default:
      p = topk_plan::plan(n, w, k, pl.acc_size, kMmaRowTiles, 3, topk::kMmaTile, sms);
      break;
  }
  static_cast<topk_plan::Plan&>(pl) = p;
  return pl;
}

// One token_topk call: what every path's launch takes, less the types and the vector width.
struct Call {
  const void* queries;
  const void* table;
  const int64_t* rows;
  int64_t n, t, d, w, k;
  bool negate;
  const Plan& pl;
  void* part_key;
  int* part_idx;
  cudaStream_t stream;
};

template <typename In, typename A>
topk::Args<In, A> make_args(const Call& c, int vec_elems) {
  topk::Args<In, A> a{};
  a.q = static_cast<const In*>(c.queries);
  a.table = static_cast<const In*>(c.table);
  a.rows = c.rows;
  a.n = static_cast<int>(c.n);
  a.t = static_cast<int>(c.t);
  a.d = static_cast<int>(c.d);
  a.td = static_cast<int>(c.t * c.d);
  a.w = static_cast<int>(c.w);
  a.k = static_cast<int>(c.k);
  a.num_tiles = c.pl.num_tiles;
  a.tiles_per_split = c.pl.tiles_per_split;
  a.negate = c.negate ? 1 : 0;
  a.vec = (c.d % vec_elems == 0) && dev::aligned16(c.queries) && dev::aligned16(c.table) ? 1 : 0;
  a.part_key = static_cast<A*>(c.part_key);
  a.part_idx = c.part_idx;
  return a;
}

// Runs a path's launcher (In and A follow from it; vec_elems: elements per
// 16-byte load).  The mma launchers take the planner's row tile, the simt ones
// have a fixed one.
template <typename In, typename A>
cudaError_t run(cudaError_t (*launch)(const topk::Args<In, A>&, int, int, int, cudaStream_t), const Call& c,
                int vec_elems) {
  return launch(make_args<In, A>(c, vec_elems), c.pl.tile_m, c.pl.row_blocks, c.pl.splits, c.stream);
}
template <typename In, typename A>
cudaError_t run(cudaError_t (*launch)(const topk::Args<In, A>&, int, int, cudaStream_t), const Call& c,
                int vec_elems) {
  return launch(make_args<In, A>(c, vec_elems), c.pl.row_blocks, c.pl.splits, c.stream);
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

  const Call call{queries, table, rows, n, t, d, w, k, negate, pl, part_key, part_idx, stream};
  cudaError_t err = cudaSuccess;
  switch (pl.path) {
    case kPathTF32: err = run(topk::launch_tf32, call, 4); break;
    case kPathBF16: err = run(topk::launch_bf16, call, 8); break;
    case kPathBF16FromF32: err = run(topk::launch_bf16_from_f32, call, 8); break;
    case kPathExactF32: err = run(topk::launch_exact_f32, call, 4); break;
    case kPathExactF32Small: err = run(topk::launch_exact_f32_small, call, 4); break;
    case kPathExactF64: err = run(topk::launch_exact_f64, call, 2); break;
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
