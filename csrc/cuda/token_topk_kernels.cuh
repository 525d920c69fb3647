// token_topk kernels: tiled GEMM of queries [n, t*d] against (gathered) table
// rows, fused with the per-row running top-k of topk_select.cuh.  Included by
// the per-precision .cu files, which instantiate one launcher each.
//
// Grid: blockIdx.x = block of query rows (fast), blockIdx.y = slice of the
// candidate axis.  CTAs that read the same table tiles are adjacent in launch
// order, so each table tile comes from DRAM about once and from L2 for the
// other row blocks (the queries, n*t*d, stay in L2).
//
// Two GEMM cores:
//  * mma:  BM in {128, 64, 32} (the planner's choice), BN = 128, 8 warps (2 x 4,
//          warp tile BM/2 x 32), 3-stage cp.async
//          pipeline of 128-byte k-slices (32 fp32 / 64 bf16), ldmatrix fragment
//          loads, mma.sync m16n8k8 tf32 or m16n8k16 bf16, fp32 accumulators.
//          The pipeline runs straight across candidate tiles: the next tile's
//          first slices load while the current tile's epilogue runs.
//  * simt: exact FMA (fp32 or fp64), 16 x 16 threads: BM = BN = 128 (fp32,
//          8 x 8 per thread), BM = 32, BN = 128 (fp32 with n <= 64, 2 x 8) or
//          BM = BN = 64 (fp64, 4 x 4); k-slices of 8 double-buffered through
//          registers, operands stored k-major in shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "device_utils.cuh"
#include "topk_select.cuh"

namespace patronus {
namespace cuda {
namespace topk {

template <typename In, typename A>
struct Args {
  const In* q;             // [n, td]
  const In* table;         // [v, d]
  const int64_t* rows;     // [w, t] or null
  int n, t, d, td, w, k;
  int num_tiles;           // ceil(w / BN)
  int tiles_per_split;
  int negate;
  int vec;                 // 16-byte vector loads are valid (alignment and d checked by the host)
  A* part_key;             // [splits][n][k]
  int* part_idx;
};

// Element kk of query row gm (0 beyond the matrix).
template <typename In, typename A>
__device__ __forceinline__ float load_q(const Args<In, A>& p, int gm, int kk) {
  if (gm >= p.n || kk >= p.td) return 0.0f;
  return dev::to_acc(p.q[static_cast<int64_t>(gm) * p.td + kk]);
}

// Element kk of candidate gw's (gathered) key row (0 beyond the matrix or for padding).
template <typename In, typename A>
__device__ __forceinline__ int64_t key_offset(const Args<In, A>& p, int gw, int kk) {
  if (gw >= p.w || kk >= p.td) return -1;
  if (p.rows == nullptr) return static_cast<int64_t>(gw) * p.d + kk;
  const int tt = kk / p.d;
  const int e = kk - tt * p.d;
  const int64_t id = __ldg(p.rows + static_cast<int64_t>(gw) * p.t + tt);
  return id < 0 ? int64_t(-1) : id * p.d + e;
}

// A CTA's share of the work, the same for both GEMM cores: query rows
// [m0, m0 + rows_valid), candidate tiles from tile0 on (its slice of the
// candidate axis) walked as `total` k-slices of BK, `slices` per tile, and the
// partial top-k lists it writes.
template <typename A>
struct CtaWork {
  int m0, tile0, slices, total, rows_valid;
  A* list_key;
  int* list_idx;
};

template <int BM, int BK, typename In, typename A>
__device__ __forceinline__ CtaWork<A> cta_work(const Args<In, A>& p) {
  CtaWork<A> c;
  const int split = blockIdx.y;
  c.m0 = blockIdx.x * BM;
  c.tile0 = split * p.tiles_per_split;
  const int tile1 = min(p.num_tiles, c.tile0 + p.tiles_per_split);
  c.slices = (p.td + BK - 1) / BK;
  c.total = (tile1 - c.tile0) * c.slices;
  c.rows_valid = min(BM, p.n - c.m0);
  c.list_key = p.part_key + (static_cast<size_t>(split) * p.n + c.m0) * p.k;
  c.list_idx = p.part_idx + (static_cast<size_t>(split) * p.n + c.m0) * p.k;
  return c;
}

// ============================================================ tensor cores
constexpr int kMmaTile = 128;             // BN, and the largest BM
constexpr int kMmaStages = 3;
constexpr int kSliceBytes = 128;          // k-slice per stage, bytes per tile row
constexpr int kPitch = kSliceBytes + 16;  // padded row pitch (conflict-free ldmatrix)
// One stage: BM query rows, then kMmaTile candidate rows.
template <int BM>
constexpr int mma_stage_bytes() {
  return (BM + kMmaTile) * kPitch;
}
enum MmaKind { kTF32 = 0, kBF16 = 1 };

template <int KIND>
struct MmaTraits;
template <>
struct MmaTraits<kTF32> {
  using Smem = float;
  static constexpr int kVec = 4;   // elements per 16-byte chunk
};
template <>
struct MmaTraits<kBF16> {
  using Smem = __nv_bfloat16;
  static constexpr int kVec = 8;
};

template <int KIND, typename In, int BM>
constexpr size_t mma_smem_bytes() {
  return static_cast<size_t>(kMmaStages) * mma_stage_bytes<BM>() + sizeof(Smem<float, BM>);
}

// A 16-byte chunk of VEC smem elements, converted element by element (any d, any alignment).
template <int KIND, typename In>
__device__ __forceinline__ uint4 chunk_generic(const Args<In, float>& p, bool is_key, int g, int k0) {
  float v[8];
  constexpr int VEC = MmaTraits<KIND>::kVec;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    if (is_key) {
      const int64_t off = key_offset(p, g, k0 + e);
      v[e] = off < 0 ? 0.0f : dev::to_acc(p.table[off]);
    } else {
      v[e] = load_q(p, g, k0 + e);
    }
  }
  uint4 out;
  if (KIND == kTF32) {
    out.x = __float_as_uint(v[0]);
    out.y = __float_as_uint(v[1]);
    out.z = __float_as_uint(v[2]);
    out.w = __float_as_uint(v[3]);
  } else {
    out.x = dev::pack_bf16x2(v[0], v[1]);
    out.y = dev::pack_bf16x2(v[2], v[3]);
    out.z = dev::pack_bf16x2(v[4], v[5]);
    out.w = dev::pack_bf16x2(v[6], v[7]);
  }
  return out;
}

template <int KIND, typename In, int BM>
__global__ void __launch_bounds__(kThreads, 1) topk_mma_kernel(const Args<In, float> p) {
  using S = typename MmaTraits<KIND>::Smem;
  constexpr int VEC = MmaTraits<KIND>::kVec;
  constexpr int BK = kSliceBytes / static_cast<int>(sizeof(S));  // elements per k-slice
  constexpr bool kDirect = std::is_same<In, S>::value;           // cp.async straight into smem
  constexpr int kChunks = kMmaTile * (kSliceBytes / 16) / kThreads;  // candidate chunks per thread (4)
  constexpr int kChunksA = BM * (kSliceBytes / 16) / kThreads;       // query chunks per thread (BM / 32)
  constexpr int MT = BM / 32;                                         // m16 tiles per warp
  constexpr int WM = BM / 2;                                          // warp tile rows
  constexpr int kStageBytes = mma_stage_bytes<BM>();
  static_assert(BM == 128 || BM == 64 || BM == 32, "row tile");
  static_assert(kChunksA >= 1 && kChunksA <= kChunks, "query chunks");

  extern __shared__ __align__(16) unsigned char smem[];
  Smem<float, BM>& sm = *reinterpret_cast<Smem<float, BM>*>(smem + kMmaStages * kStageBytes);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows wm*WM, cols wn*32
  const CtaWork<float> cta = cta_work<BM, BK>(p);

  init(sm);

  // Staging registers for float32 operands rounded to bf16 while loading.
  float4 st_a[kDirect ? 1 : kChunksA][2], st_b[kDirect ? 1 : kChunks][2];

  // Issue the loads of k-slice `it` into stage buffer `it % kMmaStages`.
  // kDirect + vec: cp.async; !kDirect + vec: into st_a/st_b (stored by store_staged);
  // otherwise: synchronous element-wise loads and stores.
  auto issue = [&](int it) {
    const int tile = cta.tile0 + it / cta.slices;
    const int kbase = (it % cta.slices) * BK;
    unsigned char* buf = smem + (it % kMmaStages) * kStageBytes;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {  // chunk i: tile row (tid >> 3) + 32 i, so query rows for i < kChunksA
      const int id = tid + i * kThreads;
      const int row = id >> 3, ch = id & 7;
      const int k0 = kbase + ch * VEC;
      const bool has_a = i < kChunksA;
      unsigned char* da = buf + row * kPitch + ch * 16;
      unsigned char* db = buf + (BM + row) * kPitch + ch * 16;
      const int gm = cta.m0 + row, gw = tile * kMmaTile + row;
      if (p.vec) {
        const int64_t offa = (has_a && gm < p.n && k0 < p.td) ? static_cast<int64_t>(gm) * p.td + k0 : int64_t(-1);
        const int64_t offb = key_offset(p, gw, k0);
        if (kDirect) {
          if (has_a) dev::cp_async16(da, offa >= 0 ? p.q + offa : p.q, offa >= 0 ? 16 : 0);
          dev::cp_async16(db, offb >= 0 ? p.table + offb : p.table, offb >= 0 ? 16 : 0);
        } else {
          const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
          if (has_a) {
            const float4* sa = reinterpret_cast<const float4*>(p.q + (offa >= 0 ? offa : 0));
            st_a[kDirect ? 0 : (has_a ? i : 0)][0] = offa >= 0 ? __ldg(sa) : z;
            st_a[kDirect ? 0 : (has_a ? i : 0)][1] = offa >= 0 ? __ldg(sa + 1) : z;
          }
          const float4* sb = reinterpret_cast<const float4*>(p.table + (offb >= 0 ? offb : 0));
          st_b[kDirect ? 0 : i][0] = offb >= 0 ? __ldg(sb) : z;
          st_b[kDirect ? 0 : i][1] = offb >= 0 ? __ldg(sb + 1) : z;
        }
      } else {
        if (has_a) *reinterpret_cast<uint4*>(da) = chunk_generic<KIND>(p, false, gm, k0);
        *reinterpret_cast<uint4*>(db) = chunk_generic<KIND>(p, true, gw, k0);
      }
    }
  };
  auto store_staged = [&](int it) {
    if (kDirect || !p.vec) return;
    unsigned char* buf = smem + (it % kMmaStages) * kStageBytes;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int id = tid + i * kThreads;
      const int row = id >> 3, ch = id & 7;
      if (i < kChunksA) {
        const float4 a0 = st_a[kDirect ? 0 : (i < kChunksA ? i : 0)][0];
        const float4 a1 = st_a[kDirect ? 0 : (i < kChunksA ? i : 0)][1];
        uint4 ua;
        ua.x = dev::pack_bf16x2(a0.x, a0.y);
        ua.y = dev::pack_bf16x2(a0.z, a0.w);
        ua.z = dev::pack_bf16x2(a1.x, a1.y);
        ua.w = dev::pack_bf16x2(a1.z, a1.w);
        *reinterpret_cast<uint4*>(buf + row * kPitch + ch * 16) = ua;
      }
      const float4 b0 = st_b[kDirect ? 0 : i][0], b1 = st_b[kDirect ? 0 : i][1];
      uint4 ub;
      ub.x = dev::pack_bf16x2(b0.x, b0.y);
      ub.y = dev::pack_bf16x2(b0.z, b0.w);
      ub.z = dev::pack_bf16x2(b1.x, b1.y);
      ub.w = dev::pack_bf16x2(b1.z, b1.w);
      *reinterpret_cast<uint4*>(buf + (BM + row) * kPitch + ch * 16) = ub;
    }
  };

  float acc[MT * 16];
#pragma unroll
  for (int i = 0; i < MT * 16; ++i) acc[i] = 0.0f;

  __syncthreads();  // top-k state initialised

#pragma unroll 1
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < cta.total) {
      issue(s);
      store_staged(s);
    }
    dev::cp_async_commit();
  }

#pragma unroll 1
  for (int it = 0; it < cta.total; ++it) {
    dev::cp_async_wait<kMmaStages - 2>();
    __syncthreads();
    const int nxt = it + kMmaStages - 1;
    if (nxt < cta.total) issue(nxt);
    dev::cp_async_commit();

    const unsigned char* as = smem + (it % kMmaStages) * kStageBytes;
    const unsigned char* bs = as + BM * kPitch;
#pragma unroll
    for (int ks = 0; ks < kSliceBytes / 32; ++ks) {  // one mma k-step = two 16-byte chunks
      uint32_t af[MT][4], bf[4][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int r = wm * WM + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        dev::ldmatrix_x4(af[mt], as + r * kPitch + (ks * 2 + (lane >> 4)) * 16);
      }
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t t4[4];
        const int r = wn * 32 + np * 16 + (lane & 7) + ((lane >> 4) & 1) * 8;
        dev::ldmatrix_x4(t4, bs + r * kPitch + (ks * 2 + ((lane >> 3) & 1)) * 16);
        bf[2 * np][0] = t4[0];
        bf[2 * np][1] = t4[1];
        bf[2 * np + 1][0] = t4[2];
        bf[2 * np + 1][1] = t4[3];
      }
      if (KIND == kTF32) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) af[mt][e] = dev::to_tf32(af[mt][e]);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          bf[nt][0] = dev::to_tf32(bf[nt][0]);
          bf[nt][1] = dev::to_tf32(bf[nt][1]);
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          if (KIND == kTF32) dev::mma_tf32(acc + (mt * 4 + nt) * 4, af[mt], bf[nt]);
          else dev::mma_bf16(acc + (mt * 4 + nt) * 4, af[mt], bf[nt]);
        }
    }

    if (nxt < cta.total) store_staged(nxt);

    if (it % cta.slices == cta.slices - 1) {  // a candidate tile is complete
      const int tile = cta.tile0 + it / cta.slices;
      const int col_base = tile * kMmaTile;
      auto pos = [&](int i, int& r, int& c) {
        const int mt = i >> 4, nt = (i >> 2) & 3, e = i & 3;
        r = wm * WM + mt * 16 + (lane >> 2) + (e >> 1) * 8;
        c = wn * 32 + nt * 8 + (lane & 3) * 2 + (e & 1);
      };
      offer<float, BM, MT * 16>(sm, acc, pos, cta.rows_valid, min(kMmaTile, p.w - col_base), col_base,
                                p.negate != 0, cta.list_key, cta.list_idx, p.k);
#pragma unroll
      for (int i = 0; i < MT * 16; ++i) acc[i] = 0.0f;
    }
  }
  dev::cp_async_wait<0>();
  flush(sm, cta.rows_valid, cta.list_key, cta.list_idx, p.k);
}

// ============================================================ exact (FMA)
// Tile configurations: BM query rows x BN candidates, 16 x 16 threads of TM x TN.
template <typename T, int BM_, int BN_, int TM_, int TN_>
struct SimtCfg {
  using type = T;
  static constexpr int BM = BM_, BN = BN_, TM = TM_, TN = TN_;
};
using SimtF32 = SimtCfg<float, 128, 128, 8, 8>;       // n > 64
using SimtF32Small = SimtCfg<float, 32, 128, 2, 8>;   // n <= 64 (a few trigger queries)
using SimtF64 = SimtCfg<double, 64, 64, 4, 4>;

constexpr int kSimtBK = 8;
constexpr int kSimtPad = 4;

template <typename Cfg>
constexpr size_t simt_smem_bytes() {
  using T = typename Cfg::type;
  return 2 * kSimtBK * ((Cfg::BM + kSimtPad) + (Cfg::BN + kSimtPad)) * sizeof(T) + sizeof(Smem<T, Cfg::BM>);
}

template <typename T, int N>
struct alignas(N * sizeof(T) < 16 ? N * sizeof(T) : 16) VecN {
  T v[N];
};

template <typename Cfg>
__global__ void __launch_bounds__(kThreads, 1) topk_simt_kernel(const Args<typename Cfg::type, typename Cfg::type> p) {
  using T = typename Cfg::type;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, TM = Cfg::TM, TN = Cfg::TN, BK = kSimtBK;
  constexpr int LDA = BM + kSimtPad, LDB = BN + kSimtPad;
  constexpr int LA = BM * BK / kThreads, LB = BN * BK / kThreads;  // loaded elements per thread per slice
  constexpr int TPA = BK / LA, TPB = BK / LB;                        // loader threads per tile row
  constexpr int RG = TM < 4 ? TM : 4, CG = TN < 4 ? TN : 4;          // consecutive rows / cols per group
  constexpr int GSM = BM / (TM / RG), GSN = BN / (TN / CG);          // group strides
  static_assert(16 * TM == BM && 16 * TN == BN, "16 x 16 threads of TM x TN");
  static_assert(LA >= 1 && LB >= 1 && BK % LA == 0 && BK % LB == 0, "loader shape");

  extern __shared__ __align__(16) unsigned char smem[];
  T* as = reinterpret_cast<T*>(smem);  // [2][BK][LDA], k-major
  T* bs = as + 2 * BK * LDA;           // [2][BK][LDB]
  Smem<T, BM>& sm = *reinterpret_cast<Smem<T, BM>*>(smem + 2 * BK * (LDA + LDB) * sizeof(T));

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const CtaWork<T> cta = cta_work<BM, BK>(p);

  init(sm);

  const int arow = tid / TPA, ak = (tid % TPA) * LA;
  const int brow = tid / TPB, bk = (tid % TPB) * LB;
  T ra[LA], rb[LB];
  auto load = [&](int it) {
    const int tile = cta.tile0 + it / cta.slices;
    const int kbase = (it % cta.slices) * BK;
    const int gm = cta.m0 + arow, gw = tile * BN + brow;
    const int ka = kbase + ak, kb = kbase + bk;
    if (p.vec) {  // d % LB == 0 (and LA divides LB) and 16-byte aligned bases
      const int64_t offa = (gm < p.n && ka < p.td) ? static_cast<int64_t>(gm) * p.td + ka : int64_t(-1);
      const int64_t offb = key_offset(p, gw, kb);
      VecN<T, LA> va;
      VecN<T, LB> vb;
      if (offa >= 0) va = *reinterpret_cast<const VecN<T, LA>*>(p.q + offa);
      if (offb >= 0) vb = *reinterpret_cast<const VecN<T, LB>*>(p.table + offb);
#pragma unroll
      for (int e = 0; e < LA; ++e) ra[e] = offa >= 0 ? va.v[e] : T(0);
#pragma unroll
      for (int e = 0; e < LB; ++e) rb[e] = offb >= 0 ? vb.v[e] : T(0);
    } else {
#pragma unroll
      for (int e = 0; e < LA; ++e)
        ra[e] = (gm < p.n && ka + e < p.td) ? p.q[static_cast<int64_t>(gm) * p.td + ka + e] : T(0);
#pragma unroll
      for (int e = 0; e < LB; ++e) {
        const int64_t ob = key_offset(p, gw, kb + e);
        rb[e] = ob >= 0 ? p.table[ob] : T(0);
      }
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int e = 0; e < LA; ++e) as[(buf * BK + ak + e) * LDA + arow] = ra[e];
#pragma unroll
    for (int e = 0; e < LB; ++e) bs[(buf * BK + bk + e) * LDB + brow] = rb[e];
  };

  T acc[TM * TN];
#pragma unroll
  for (int i = 0; i < TM * TN; ++i) acc[i] = T(0);

  if (cta.total > 0) {
    load(0);
    store(0);
  }
  __syncthreads();

#pragma unroll 1
  for (int it = 0; it < cta.total; ++it) {
    const int buf = it & 1;
    if (it + 1 < cta.total) load(it + 1);
    const T* a = as + buf * BK * LDA;
    const T* b = bs + buf * BK * LDB;
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T av[TM], bv[TN];
#pragma unroll
      for (int g = 0; g < TM / RG; ++g) {
        const VecN<T, RG> x = *reinterpret_cast<const VecN<T, RG>*>(a + kk * LDA + g * GSM + ty * RG);
#pragma unroll
        for (int e = 0; e < RG; ++e) av[g * RG + e] = x.v[e];
      }
#pragma unroll
      for (int g = 0; g < TN / CG; ++g) {
        const VecN<T, CG> y = *reinterpret_cast<const VecN<T, CG>*>(b + kk * LDB + g * GSN + tx * CG);
#pragma unroll
        for (int e = 0; e < CG; ++e) bv[g * CG + e] = y.v[e];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i * TN + j] = fma(av[i], bv[j], acc[i * TN + j]);
    }
    if (it + 1 < cta.total) store(buf ^ 1);
    __syncthreads();

    if (it % cta.slices == cta.slices - 1) {
      const int tile = cta.tile0 + it / cta.slices;
      const int col_base = tile * BN;
      auto pos = [&](int i, int& r, int& c) {
        const int ii = i / TN, jj = i % TN;
        r = (ii / RG) * GSM + ty * RG + (ii % RG);
        c = (jj / CG) * GSN + tx * CG + (jj % CG);
      };
      offer<T, BM, TM * TN>(sm, acc, pos, cta.rows_valid, min(BN, p.w - col_base), col_base, p.negate != 0,
                            cta.list_key, cta.list_idx, p.k);
#pragma unroll
      for (int i = 0; i < TM * TN; ++i) acc[i] = T(0);
    }
  }
  flush(sm, cta.rows_valid, cta.list_key, cta.list_idx, p.k);
}

// ------------------------------------------------------------ launchers
template <int KIND, typename In, int BM>
cudaError_t launch_mma_bm(const Args<In, float>& p, int row_blocks, int splits, cudaStream_t stream) {
  const size_t bytes = mma_smem_bytes<KIND, In, BM>();
  cudaError_t err = cudaFuncSetAttribute(topk_mma_kernel<KIND, In, BM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  topk_mma_kernel<KIND, In, BM><<<dim3(row_blocks, splits), kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

// tile_m: the planner's row tile (128, 64 or 32).
template <int KIND, typename In>
cudaError_t launch_mma(const Args<In, float>& p, int tile_m, int row_blocks, int splits, cudaStream_t stream) {
  switch (tile_m) {
    case 128: return launch_mma_bm<KIND, In, 128>(p, row_blocks, splits, stream);
    case 64: return launch_mma_bm<KIND, In, 64>(p, row_blocks, splits, stream);
    case 32: return launch_mma_bm<KIND, In, 32>(p, row_blocks, splits, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename Cfg>
cudaError_t launch_simt(const Args<typename Cfg::type, typename Cfg::type>& p, int row_blocks, int splits,
                        cudaStream_t stream) {
  const size_t bytes = simt_smem_bytes<Cfg>();
  cudaError_t err = cudaFuncSetAttribute(topk_simt_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  topk_simt_kernel<Cfg><<<dim3(row_blocks, splits), kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

// Declared here, defined (explicitly instantiated) in the per-precision .cu files.
// The mma launchers take the row tile (128, 64 or 32).
cudaError_t launch_tf32(const Args<float, float>& p, int tile_m, int row_blocks, int splits, cudaStream_t stream);
cudaError_t launch_bf16(const Args<__nv_bfloat16, float>& p, int tile_m, int row_blocks, int splits,
                        cudaStream_t stream);
cudaError_t launch_bf16_from_f32(const Args<float, float>& p, int tile_m, int row_blocks, int splits,
                                 cudaStream_t stream);
cudaError_t launch_exact_f32(const Args<float, float>& p, int row_blocks, int splits, cudaStream_t stream);
cudaError_t launch_exact_f32_small(const Args<float, float>& p, int row_blocks, int splits, cudaStream_t stream);
cudaError_t launch_exact_f64(const Args<double, double>& p, int row_blocks, int splits, cudaStream_t stream);

}  // namespace topk
}  // namespace cuda
}  // namespace patronus
