// Host-only planner of the fused CUDA token_topk (no CUDA headers, so the CPU
// test build checks its choices).  csrc/cuda/token_topk.cu calls it with the
// device's multiprocessor count; the kernels' tile sizes are static_assert-ed
// against the options it is given.
//
// A plan is a row tile (tile_m queries per CTA) and a split of the candidate
// axis into `splits` slices of `tiles_per_split` tiles of tile_n candidates;
// the grid is row_blocks x splits CTAs, each writing one partial list of k
// entries per query row to scratch, merged afterwards.
//
// plan_split(): for a fixed row tile, the smallest slice count whose grid fills
// the GPU about as well as any (waves per unit of work within 5% of the best),
// capped so that every slice has >= 4 candidate tiles and the scratch (splits
// partial lists of k entries per query) plus the outputs stay under 4.5% of the
// n x w score matrix the unfused way would write (the scratch may always take
// 8 MiB, and one list always fits).
//
// plan(): row tiles are tried from the largest.  When the largest one's grid
// covers less than 90% of the multiprocessors (at k = 256 the scratch budget
// often holds a single list, so splits = 1 and N = 4096 gave 32 CTAs of 128
// rows on a 132-SM GPU), smaller row tiles are tried and the one with the most
// CTAs kept: the scratch does not grow with the number of row blocks, only with
// the number of slices.  A smaller tile with the same number of row blocks (n
// smaller than the tile) and no fewer CTAs is also taken: it does less work on
// rows that do not exist.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace patronus {
namespace topk_plan {

constexpr size_t kAlign = 256;
inline size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct Plan {
  int tile_m = 0, tile_n = 0;  // query rows per CTA, candidates per tile
  int row_blocks = 0, num_tiles = 0, splits = 0, tiles_per_split = 0;
  size_t bytes = 0;  // scratch: splits lists of k keys, then splits lists of k int32 indices
  int64_t ctas() const { return static_cast<int64_t>(row_blocks) * splits; }
};

// The scratch budget (bytes) for one call: see the file comment.
inline int64_t scratch_budget(int64_t n, int64_t w, int64_t k, size_t acc_size) {
  const int64_t naive = n * w * static_cast<int64_t>(acc_size);
  const int64_t outputs = n * k * static_cast<int64_t>(acc_size + sizeof(int64_t));
  return std::max<int64_t>(int64_t(8) << 20, naive * 45 / 1000 - outputs);
}

inline Plan plan_split(int64_t n, int64_t w, int64_t k, size_t acc_size, int tile_m, int tile_n, int64_t sms) {
  Plan pl;
  sms = std::max<int64_t>(1, sms);
  pl.tile_m = tile_m;
  pl.tile_n = tile_n;
  pl.row_blocks = static_cast<int>((n + tile_m - 1) / tile_m);
  pl.num_tiles = static_cast<int>((w + tile_n - 1) / tile_n);
  const int64_t per_list = n * k * static_cast<int64_t>(acc_size + sizeof(int));
  const int64_t budget = scratch_budget(n, w, k, acc_size);
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
  pl.bytes = align_up(entries * acc_size) + align_up(entries * sizeof(int));
  return pl;
}

// tile_ms: the row tiles the kernel family has, largest first (count >= 1).
inline Plan plan(int64_t n, int64_t w, int64_t k, size_t acc_size, const int* tile_ms, int count, int tile_n,
                 int64_t sms) {
  Plan best = plan_split(n, w, k, acc_size, tile_ms[0], tile_n, sms);
  for (int i = 1; i < count; ++i) {
    const bool underfilled = best.ctas() * 10 < std::max<int64_t>(1, sms) * 9;
    const Plan p = plan_split(n, w, k, acc_size, tile_ms[i], tile_n, sms);
    if ((underfilled && p.ctas() > best.ctas()) || (p.row_blocks == best.row_blocks && p.ctas() >= best.ctas()))
      best = p;
  }
  return best;
}

}  // namespace topk_plan
}  // namespace patronus
